"""The gallery engines side by side (issue 32): FAISS + SQLite (flat, IVF), Milvus Lite (FLAT,
HNSW) and a Milvus server (HNSW, its PyPI package started on 127.0.0.1), each driven through
attreid's gallery interface (:mod:`attreid.search.engines`), so the numbers include attreid's
own handling (the exact search of a few allowed rows, the committed-row filter).

Data: ``--rows`` 512-d unit vectors drawn around 20,000 centres (people seen many times), 4
cameras, frames in order, random attribute probabilities. 100 single queries (gallery rows plus
noise; ``--queries`` fewer), k = 10. Truth: exact brute force (float64) with the same
filter. Filters: none; "broad" (camera 2, a frame range holding half the rows, P(female) >=
0.3); "narrow" (12 rows of ``--rows``: one camera and a frame range just wide enough).

Per engine: insert rate (rows/s, the whole create: collections, inserts, index), p50 / p95
latency of one query, recall@10 without a filter and under "broad", hits of 10 returned under
"narrow" (never short: all 10 of the 12) and their recall. Writes the section "Gallery engines"
of benchmarks/RESULTS.md with ``--write``. Each engine's result is kept as one JSON line in
``--log`` (default ``runs/gallery_engines_<rows>.jsonl``) as soon as it is measured; a rerun
skips the engines found there, so a long run resumes where it stopped (``--fresh`` starts over).

    python benchmarks/gallery_engines.py --rows 1000000 --write     # about an hour on 2 cores
    python benchmarks/gallery_engines.py --rows 20000 --engines faiss-flat milvus-lite-flat
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common
from attreid.schema import TASKS
from attreid.search.engines import create_gallery
from attreid.search.filters import RowFilter
from attreid.search.vectors import exact_distances, nearest

SECTION = "## Gallery engines (issue 32), {rows:,} crops"
DIM, CENTRES, QUERIES, K = 512, 20_000, 100, 10
ENGINES = ("faiss-flat", "faiss-ivf", "milvus-lite-flat", "milvus-lite-hnsw",
           "milvus-server-hnsw")
INFO = {"checkpoint": "synthetic.pt", "checkpoint_sha256": "0" * 64, "metric": "euclidean"}


def gallery_rows(n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` synthetic crops: unit vectors around 20k centres, cameras 1-4, frame = row."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    x = centres[rng.integers(0, CENTRES, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(
        np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probs = {t.name: rng.dirichlet(np.ones(t.num_classes), n).astype(np.float32) for t in TASKS}
    paths = [f"/site/c{i % 4 + 1}/{i % 9000:04d}_c{i % 4 + 1}s1_{i:07d}_00.jpg"
             for i in range(n)]
    return {"paths": paths, "embeddings": x, "probabilities": probs}


def mask_of(rows: dict[str, Any], flt: RowFilter) -> np.ndarray:
    n = len(rows["paths"])
    idx = np.arange(n)
    mask = np.ones(n, bool)
    if flt.cameras:
        mask &= np.isin(idx % 4 + 1, flt.cameras)
    if flt.frames:
        mask &= (idx >= flt.frames[0]) & (idx <= flt.frames[1])
    for column, p in flt.minimums:
        task, cls = column[2:].split("_", 1)
        spec = next(t for t in TASKS if t.name == task)
        mask &= rows["probabilities"][task][:, spec.classes.index(cls)] >= p
    return mask


def truth(rows: dict[str, Any], q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ids = np.flatnonzero(mask)
    out = []
    for start in range(0, len(ids), 100_000):  # bounded memory at 1M rows
        part = ids[start:start + 100_000]
        d = exact_distances(q, rows["embeddings"][part], "euclidean")
        out.append(nearest(d, part, K))
    d = np.concatenate([o[0] for o in out], axis=1)
    i = np.concatenate([o[1] for o in out], axis=1)
    return nearest(d, i, K)[1]


def filters(n: int) -> dict[str, RowFilter]:
    narrow_span = 12 * 4 - 1  # 12 rows of camera 3 in 47 consecutive frames
    first = n // 2 - (n // 2) % 4
    return {"none": RowFilter(),
            "broad": RowFilter(cameras=(2,), frames=(n // 4, 3 * n // 4),
                               minimums=(("p_gender_female", 0.3),)),
            "narrow": RowFilter(cameras=(3,), frames=(first, first + narrow_span))}


def measure(name: str, rows: dict[str, Any], q: np.ndarray, want: dict[str, np.ndarray],
            flts: dict[str, RowFilter], where: Path, server: str | None) -> dict[str, Any]:
    backend = "faiss" if name.startswith("faiss") else "milvus"
    kind = name.rsplit("-", 1)[1]
    location = {"faiss": str(where / "index"), "milvus": str(where / "gallery.db")}[backend]
    if "server" in name:
        location = server or ""
    start = time.perf_counter()
    gallery = create_gallery(backend, location, **rows, info=INFO, kind=kind,
                             name="bench", overwrite=True)
    insert_s = time.perf_counter() - start
    out: dict[str, Any] = {"engine": name, "rows/s": len(rows["paths"]) / insert_s}
    times = []
    for label, flt in flts.items():
        got = []
        for row in q:
            t0 = time.perf_counter()
            found = gallery.find(row[None], K, flt)
            times.append(time.perf_counter() - t0) if label == "none" else None
            got.append(found.ids[0])
        hits = [np.intersect1d(g, w).size for g, w in zip(got, want[label])]
        if label != "narrow":
            out[f"recall {label}"] = float(np.mean(hits)) / K
        else:
            out["narrow hits"] = float(np.mean([len(g) for g in got]))
            out["narrow recall"] = float(np.mean(hits)) / K
    out["p50 ms"] = 1000 * statistics.median(times)
    out["p95 ms"] = 1000 * float(np.percentile(times, 95))
    gallery.close()
    return out


def measured(log: Path) -> dict[str, dict[str, Any]]:
    """Engine -> its result line in ``log`` (the last one wins); empty when there is no log."""
    if not log.exists():
        return {}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {r["engine"]: r for r in lines}


def start_server(where: Path) -> tuple[Any, str]:
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(where / "milvus-server"))
    server.start()
    return server, f"http://127.0.0.1:{server.listen_port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--queries", type=int, default=QUERIES,
                        help="single queries per filter (fewer for a slow engine: the table "
                             "says how many each engine ran)")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--log", type=Path, default=None,
                        help="JSON lines of measured engines (default runs/gallery_engines_"
                             "<rows>.jsonl); engines found there are not measured again")
    parser.add_argument("--fresh", action="store_true", help="ignore the log's results")
    args = parser.parse_args()
    log = args.log or Path("runs") / f"gallery_engines_{args.rows}.jsonl"
    done = {} if args.fresh else measured(log)
    todo = [e for e in args.engines if e not in done]
    if done:
        print(f"kept from {log}: {', '.join(e for e in args.engines if e in done) or 'none'}")
    rows = gallery_rows(args.rows)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, args.rows, QUERIES)
    q = rows["embeddings"][picks] + 0.05 * rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    q = q[: args.queries]  # the first of the same 100 queries
    flts = filters(args.rows)
    want = {label: truth(rows, q, mask_of(rows, flt)) for label, flt in flts.items()}
    print(f"narrow filter allows {int(mask_of(rows, flts['narrow']).sum())} rows", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        log.write_text("")
    with tempfile.TemporaryDirectory(prefix="attreid-engines-") as scratch:
        server = url = None
        if any("server" in e for e in todo):
            server, url = start_server(Path(scratch))
        try:
            for name in todo:
                where = Path(scratch) / name
                where.mkdir()
                done[name] = measure(name, rows, q, want, flts, where, url)
                done[name]["machine"] = _common.machine()
                done[name]["queries"] = len(q)
                with log.open("a") as out:
                    out.write(json.dumps(done[name]) + "\n")
                print(done[name], flush=True)
        finally:
            if server is not None:
                server.stop()
    results = [done[e] for e in args.engines]
    header = ("| engine | queries | insert rows/s | p50 ms | p95 ms | recall@10 "
              "| recall@10 broad | narrow: hits of 10 | narrow recall |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['engine']} | {r.get('queries', QUERIES)} | {r['rows/s']:,.0f} | "
             f"{r['p50 ms']:.1f} | {r['p95 ms']:.1f} | "
             f"{r['recall none']:.3f} | {r['recall broad']:.3f} | {r['narrow hits']:.0f} | "
             f"{r['narrow recall']:.2f} |" for r in results]
    body = header + "\n" + "\n".join(lines)
    print(body)
    if args.write:
        machines = sorted({r["machine"] for r in results})
        intro = (f"Machine: {'; '.join(machines)}. {args.rows:,} synthetic 512-d crops around "
                 f"{CENTRES:,} centres, up to {QUERIES} queries per filter, k = {K}; "
                 "truth: exact float64 brute "
                 "force under the same filter; through attreid's gallery interface "
                 "(`python benchmarks/gallery_engines.py`).")
        broad = int(mask_of(rows, flts["broad"]).sum())
        intro += (f" The broad filter allows {broad:,} crops" + (
            " (at most 20,000: searched exactly on every engine)." if broad <= 20_000 else
            ", the narrow one 12."))
        if args.rows < 10 * CENTRES:
            intro += (f" With fewer than 10 crops per centre ({args.rows / CENTRES:.0f} here) "
                      "the true 10 nearest are mostly crops of other centres at near-equal "
                      "distances: an approximate index's recall@10 says little here.")
        _common.replace_section(SECTION.format(rows=args.rows), intro, body)


if __name__ == "__main__":
    main()
