"""Search by description at 10^6 crops (issue 32): which engine ranks crops by a product of
attribute probabilities fastest, over the same metadata a folder gallery holds.

    sqlite           today's ``FeatureIndex.products``: one SQL query over ``meta.sqlite``
                     (a full scan: no index orders by a product of columns)
    duckdb-memory    DuckDB over an in-memory copy of the columns (the same SQL text)
    duckdb-parquet   DuckDB over the gallery's Parquet export (``attreid index export
                     --parquet``), a new connection per query (what a one-shot command pays)
    numpy            the columns held as numpy arrays: mask, product, partial sort
                     (:class:`attreid.search.columns.ColumnStore`, what ``attreid serve``
                     and Milvus galleries use)

Each: the time to get ready (copy, export or load; once per process or per generation) and
the p50 / p95 of one query (top ``k`` = 20, and "all": every passing crop's score, what a
calibrated search with a person check asks for). Every engine's top-20 ids are checked equal
to SQLite's. Data: ``--rows`` synthetic crops (cameras 1-4, frame = row, Dirichlet
probabilities per task, as ``gallery_engines.py``); queries: 2-3 attribute values, with and
without a camera filter and a minimum probability. Writes the section "Description search
engines" of benchmarks/RESULTS.md with ``--write``.

    pip install duckdb          # the benchmark's comparison only; attreid does not use it
    python benchmarks/description_engines.py --rows 1000000 --write     # about 10 minutes
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import _common
from attreid.schema import TASKS
from attreid.search.columns import ColumnStore
from attreid.search.engines import create_gallery, open_gallery
from attreid.search.filters import RowFilter, visible

SECTION = "## Description search engines (issue 32)"
K, REPEATS = 20, 5
QUERIES = (  # (columns multiplied, filter)
    (("p_gender_female", "p_upcolor_red"), RowFilter()),
    (("p_backpack_yes", "p_down_short", "p_hat_no"), RowFilter()),
    (("p_gender_male", "p_downcolor_black"), RowFilter(cameras=(2, 3))),
    (("p_gender_female", "p_hair_long", "p_bag_yes"),
     RowFilter(minimums=(("p_gender_female", 0.5),))),
)


def rows(n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` crops with 8-d vectors (description search never reads them)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    probs = {t.name: rng.dirichlet(np.ones(t.num_classes), n).astype(np.float32) for t in TASKS}
    paths = [f"/site/c{i % 4 + 1}/{i % 9000:04d}_c{i % 4 + 1}s1_{i:07d}_00.jpg"
             for i in range(n)]
    return {"paths": paths, "embeddings": x, "probabilities": probs}


def sql_of(flt: RowFilter, count: int, columns: tuple[str, ...], k: int | None
           ) -> tuple[str, list[Any]]:
    where, params = visible(flt, count).sql()
    query = f"SELECT id, {' * '.join(columns)} AS score FROM images WHERE {where} ORDER BY "
    return query + ("id" if k is None else f"score DESC, id LIMIT {k}"), params


def timed(run: Callable[[], Any]) -> tuple[list[float], Any]:
    out, times = None, []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    try:
        import duckdb
        import pyarrow
    except ImportError:
        raise SystemExit("this benchmark compares against DuckDB: pip install duckdb pyarrow")

    from attreid.search.parquet import export_parquet

    used = sorted({c for cols, f in QUERIES for c in cols} |
                  {c for _, f in QUERIES for c, _ in f.minimums}) + ["camera"]
    table: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="attreid-describe-") as scratch:
        root = Path(scratch) / "index"
        t0 = time.perf_counter()
        create_gallery("faiss", root, **rows(args.rows), info={
            "checkpoint": "synthetic.pt", "checkpoint_sha256": "0" * 64, "metric": "euclidean"})
        print(f"gallery of {args.rows:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        index = open_gallery("faiss", root)
        n = len(index)
        ready: dict[str, float] = {"sqlite": 0.0}
        t0 = time.perf_counter()
        store = ColumnStore(index)
        cols = {name: store[name] for name in used}
        ready["numpy"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        memory = duckdb.connect()
        memory.register("held", pyarrow.table({"id": np.arange(n), **cols}))
        memory.execute("CREATE TABLE images AS SELECT * FROM held")
        ready["duckdb-memory"] = ready["numpy"] + time.perf_counter() - t0
        t0 = time.perf_counter()
        export_parquet(index, Path(scratch) / "parquet")
        ready["duckdb-parquet"] = time.perf_counter() - t0
        glob = str(Path(scratch) / "parquet" / "*.parquet")

        def parquet(sql: str, params: list[Any]) -> np.ndarray:
            con = duckdb.connect()
            con.execute(f"CREATE VIEW images AS SELECT * FROM read_parquet('{glob}')")
            return con.execute(sql, params).fetchnumpy()["id"]

        engines: dict[str, Callable[..., np.ndarray]] = {  # ids as products() returns them
            "sqlite": lambda s, p, q: np.array([r[0] for r in index._query(s, p)], np.int64),
            "duckdb-memory": lambda s, p, q: memory.execute(s, p).fetchnumpy()["id"],
            "duckdb-parquet": lambda s, p, q: parquet(s, p),
            "numpy": lambda s, p, q: store.products(q[0], q[1], q[2])[0],
        }
        for name, run in engines.items():
            top, every = [], []
            for columns, flt in QUERIES:
                for k, into in ((K, top), (None, every)):
                    sql, params = sql_of(flt, n, columns, k)
                    times, ids = timed(lambda: run(sql, params, (visible(flt, n), columns, k)))
                    into.extend(times)
                    if k == K:
                        truth = [r[0] for r in index._query(sql, params)]
                        assert list(ids) == truth, f"{name}: top-{K} differs from SQLite's"
            table[name] = {"ready": ready[name], "top": top, "all": every}
            print(name, {k: v if k == "ready" else statistics.median(v)
                         for k, v in table[name].items()}, flush=True)
        index.close()
    header = ("| engine | ready (s) | top-20 p50 ms | top-20 p95 ms | all p50 ms |\n"
              "|---|---:|---:|---:|---:|")
    lines = [f"| {name} | {r['ready']:.1f} | {1000 * statistics.median(r['top']):.1f} | "
             f"{1000 * float(np.percentile(r['top'], 95)):.1f} | "
             f"{1000 * statistics.median(r['all']):.1f} |" for name, r in table.items()]
    body = header + "\n" + "\n".join(lines)
    print(body)
    if args.write:
        intro = (f"Machine: {_common.machine()}. {args.rows:,} synthetic crops, {len(QUERIES)} "
                 f"descriptions x {REPEATS} repeats; top-20 ids equal to SQLite's on every "
                 "engine (`python benchmarks/description_engines.py`).")
        _common.replace_section(SECTION, intro, body)


if __name__ == "__main__":
    main()
