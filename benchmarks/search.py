"""Image queries on a 20,000-crop index: FAISS against brute-force torch, same run.

The gallery: the first ``--size`` crops of Market-1501's bounding_box_test + query folders
(``--images``, default ../shared/data/market1501), embedded once by ``--checkpoint``; without
the real data, a synthetic gallery (``attreid.data.synth``) whose embeddings are repeated with
small noise up to ``--size``. The queries: ``--queries`` crops of the query folder, one at a
time, as a user of ``attreid search`` or POST /search sends them.

Measured per query (best-effort wall time; the machine may be shared):

    end-to-end, FAISS flat   decode + resize + embed (the checkpoint's model) + exact search
    end-to-end, torch        the same with brute-force torch search (addmm + topk), then the
                             same SQLite look-up of the 10 results' metadata
    search only              FAISS flat (exact), FAISS IVF (nlist = 4 sqrt(N), nprobe 16;
                             recall@10 against exact), torch brute force

Queries/s = 1 / mean latency (one client); p95 = 95th percentile latency. Last, the same
queries through the service (``attreid serve``'s app under uvicorn on loopback), 8 clients at
once from a separate process: queries/s = queries / wall time, latency per request as the
client sees it. ``--write`` replaces the "## Gallery search" section of RESULTS.md.

    python benchmarks/search.py --write
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine, replace_section

from attreid.inference.predictor import Predictor
from attreid.search import GallerySearch, write_index
from attreid.search.build import embed_files, list_gallery

SECTION = "## Gallery search"
INTRO = """Image queries on a 20,000-crop index, FAISS against brute-force torch,
`python benchmarks/search.py --write`.

Reading: embedding the query crop (~10 ms) dominates an image query. Exact FAISS (`IndexFlatL2`)
and torch's addmm + topk are both bound by reading the 20,000 x 512 float32 gallery and run
equally fast (within 5 % of each other across three runs); FAISS IVF searches about 17x faster at
recall@10 0.97, which pays for much larger galleries. The HTTP row: 8 client threads in a
separate process, sharing the 2 cores with the server; it serves half the in-process rate
(multipart parsing, JSON, the client's own CPU), not yet profiled."""
ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs/market_cpu60/best.pt")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/market1501")
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    return parser.parse_args()


def gallery_files(images: Path, size: int) -> tuple[list[Path], list[Path]]:
    """(gallery crops, query crops) of a Market-style folder, or of a synthetic one."""
    if not (images / "bounding_box_test").is_dir():
        from attreid.data.synth import generate

        images = Path(tempfile.mkdtemp()) / "synth"
        generate(images, ids=100, seed=0, layout="market")
    crops = list_gallery(images / "bounding_box_test") + list_gallery(images / "query")
    return crops[:size], list_gallery(images / "query")


def build(predictor: Predictor, crops: list[Path], size: int, out: Path) -> tuple[GallerySearch,
                                                                                 np.ndarray]:
    embedded = embed_files(predictor, crops, batch_size=128)
    emb, probs, paths = embedded.embeddings, embedded.probabilities, list(embedded.paths)
    rng = np.random.default_rng(0)
    while len(emb) < size:  # a small synthetic gallery: repeat with noise
        extra = min(size - len(emb), len(embedded.embeddings))
        emb = np.concatenate([emb, embedded.embeddings[:extra]
                              + rng.normal(0, 0.05, (extra, emb.shape[1])).astype(np.float32)])
        probs = {k: np.concatenate([v, embedded.probabilities[k][:extra]])
                 for k, v in probs.items()}
        paths += [p.with_name(f"copy{len(paths) + i}_{p.name}")
                  for i, p in enumerate(embedded.paths[:extra])]
    index = write_index(out, paths, emb, probs, predictor.checkpoint, metric=predictor.distance)
    return GallerySearch(index, predictor), emb


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1000, q))


def row(name: str, times: list[float], note: str = "") -> str:
    mean = float(np.mean(times))
    return (f"| {name} | {1 / mean:,.0f} | {mean * 1000:.2f} | {percentile(times, 50):.2f} | "
            f"{percentile(times, 95):.2f} | {note} |")


def brute_force(gallery: torch.Tensor, norms: torch.Tensor, q: np.ndarray, k: int) -> np.ndarray:
    x = torch.from_numpy(q)[None]
    d = torch.addmm(norms[None] + (x * x).sum(1, keepdim=True), x, gallery.T, alpha=-2.0)
    return torch.topk(d, k, largest=False).indices[0].numpy()


def main() -> None:
    args = parse_args()
    predictor = Predictor(args.checkpoint, device="cpu", batch_size=128)
    crops, query_files = gallery_files(args.images, args.size)
    out = Path(tempfile.mkdtemp()) / "index"
    t0 = time.perf_counter()
    search, emb = build(predictor, crops, args.size, out)
    build_s = time.perf_counter() - t0
    ivf_dir = out.with_name("ivf")
    ivf = write_index(ivf_dir, [Path(e.path) for e in search.index.entries(range(len(emb)))],
                      emb, _probs(search, emb), predictor.checkpoint,
                      metric=search.index.metric, kind="ivf")
    gallery = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    norms = (gallery * gallery).sum(1)
    queries = [query_files[i % len(query_files)] for i in range(args.queries)]
    k = 10
    ivf_search = GallerySearch(ivf, predictor)
    timings: dict[str, list[float]] = {n: [] for n in
                                       ("e2e_faiss", "e2e_ivf", "e2e_torch", "faiss", "ivf",
                                        "torch")}
    recall, agree = [], []
    for path in queries:
        t = time.perf_counter()
        hits = search.by_image(path, k)
        timings["e2e_faiss"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ivf_search.by_image(path, k)
        timings["e2e_ivf"].append(time.perf_counter() - t)
        t = time.perf_counter()
        vector = search.embed(path)
        ids = brute_force(gallery, norms, vector, k)
        search.index.entries(ids)  # the same metadata look-up as by_image
        timings["e2e_torch"].append(time.perf_counter() - t)
        agree.append([h.entry.id for h in hits] == ids.tolist())
        for name, fn in (("faiss", lambda: search.index.search(vector[None], k)),
                         ("ivf", lambda: ivf.search(vector[None], k)),
                         ("torch", lambda: brute_force(gallery, norms, vector, k))):
            t = time.perf_counter()
            result = fn()
            timings[name].append(time.perf_counter() - t)
            if name == "ivf":
                recall.append(len(set(result[1][0]) & set(ids)) / k)
    http_times, http_wall = http_queries(search, queries, k, clients=8)
    header = ("| method | queries/s | mean ms | p50 ms | p95 ms | note |\n"
              "|---|---:|---:|---:|---:|---|")
    lines = [
        row("end-to-end, FAISS flat", timings["e2e_faiss"], "decode + embed + exact search"),
        row("end-to-end, FAISS IVF", timings["e2e_ivf"], "decode + embed + IVF search"),
        row("end-to-end, torch brute force", timings["e2e_torch"],
            f"same top-10 as FAISS for {np.mean(agree):.0%} of queries"),
        row("search only, FAISS flat (exact)", timings["faiss"]),
        row("search only, FAISS IVF", timings["ivf"],
            f"nlist {ivf.info['nlist']}, nprobe {ivf.info['nprobe']}, "
            f"recall@10 {np.mean(recall):.3f}"),
        row("search only, torch brute force", timings["torch"], "addmm + topk"),
        f"| HTTP POST /search, 8 clients, FAISS flat | {len(queries) / http_wall:,.0f} | "
        f"{np.mean(http_times) * 1000:.2f} | {percentile(http_times, 50):.2f} | "
        f"{percentile(http_times, 95):.2f} | uvicorn on loopback; queries/s = "
        "queries / wall time |",
    ]
    date = datetime.date.today().isoformat()
    ckpt = args.checkpoint.resolve()
    ckpt = ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt
    body = (f"### {len(emb):,} crops, D={emb.shape[1]}, {args.queries} queries, k={k} ({date})"
            f"\n\nCheckpoint `{ckpt}`, {search.index.metric} distance; gallery from "
            f"`{args.images}`. Index build (embedding {len(crops):,} crops + writing) "
            f"{build_s:.0f} s. Machine: {machine()}.\n\n"
            + header + "\n" + "\n".join(lines))
    print(body)
    if args.write:
        replace_section(SECTION, INTRO, body)


def client_load(url: str, k: int, clients: int, queries: list[str]) -> tuple[list[float], float]:
    """POST each query crop to ``url``, ``clients`` at a time: (latencies, wall time)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    payloads = {q: Path(q).read_bytes() for q in queries}

    def one(query: str) -> float:
        with httpx.Client(timeout=300) as http:
            t = time.perf_counter()
            r = http.post(url, files={"image": (Path(query).name, payloads[query],
                                                "image/jpeg")}, data={"k": str(k)})
            r.raise_for_status()
            return time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = list(pool.map(one, queries))
    return times, time.perf_counter() - start


def http_queries(search: GallerySearch, queries: list[Path], k: int,
                 clients: int, max_batch: int = 16) -> tuple[list[float], float]:
    """Serve ``search`` with uvicorn on loopback (a thread of this process) and load it from
    a separate client process (so clients and server do not share a GIL)."""
    import multiprocessing
    import socket
    import threading

    import uvicorn

    from attreid.search.service import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(search, max_batch=max_batch),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/search"
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(client_load, (url, k, clients, [str(q) for q in queries]))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _probs(search: GallerySearch, emb: np.ndarray) -> dict[str, np.ndarray]:
    entries = search.index.entries(range(len(emb)))
    return {task: np.array([e.probabilities[task] for e in entries])
            for task in entries[0].probabilities}


if __name__ == "__main__":
    main()
