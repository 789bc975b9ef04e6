"""The gallery search commands: ``attreid index build`` / ``add`` / ``export`` (write, extend
and export a FAISS + SQLite index folder or a Milvus gallery), ``attreid search`` (by image,
indexed crop or attributes) and ``attreid serve`` (the HTTP API and web page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from attreid.cli.base import (
    BACKEND_OPTION,
    CHECKPOINT_HELP,
    DEFAULT_MODEL,
    _count_progress,
    _fail,
    _reported_warnings,
    _show_backend,
    _show_backend_text,
    console,
)
from attreid.data.records import DataError
from attreid.utils.files import atomic_write_text

CALIBRATION_HELP = ("A calibration file (default: the one beside the index's checkpoint, made "
                    "by attreid calibrate).")
FAR_HELP = "One-to-one operating point of POST /verify (two crops): FAR 1e-2, 1e-3 or 1e-4."
FPIR_HELP = ("Operating point that marks results as the same person: strangers marked per "
             "query (false-positive identification rate) in this gallery, whatever its size.")


def _clock(seconds: float | None) -> str:
    """``2026-12-01 09:30:04.2`` (UTC) of a footage crop's time, blank without one."""
    if seconds is None:
        return ""
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + str(moment.microsecond // 100_000)


def _search_errors() -> tuple[type[Exception], ...]:
    from attreid.inference.features import FeatureStoreError
    from attreid.inference.onnx import ExportError
    from attreid.search import GalleryIndexError, QueryError
    from attreid.utils.checkpoint import CheckpointError

    from attreid.cluster.ray_embed import ClusterError

    return (DataError, CheckpointError, ExportError, GalleryIndexError, QueryError, ImportError,
            ValueError, FeatureStoreError, ClusterError)


def index_build(
    checkpoint: Path = typer.Argument(DEFAULT_MODEL, help=CHECKPOINT_HELP),
    images: Path = typer.Option(..., "--images", help="Folder of crops (searched recursively)."),
    out: str = typer.Option("index", "--out", help="Index folder to create; or a Milvus "
                            "gallery: http://HOST:19530#NAME (a server or cluster; https for "
                            "TLS; credentials from ATTREID_MILVUS_TOKEN, README) or FILE.db#NAME "
                            "(Milvus Lite); without #NAME the gallery is named attreid."),
    ivf: int = typer.Option(0, "--ivf", help="Approximate IVF index with this many lists "
                            "(-1: about 4 sqrt(N)); 0: exact search. On Milvus: IVF_FLAT."),
    hnsw: bool = typer.Option(False, "--hnsw", help="Milvus only: an HNSW index (approximate, "
                              "fast) instead of exact FLAT search."),
    nprobe: int = typer.Option(16, help="IVF lists visited per query (folder and Milvus)."),
    flip: bool = typer.Option(False, "--flip", help="Flip test-time augmentation."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = BACKEND_OPTION,
    features: Path | None = typer.Option(None, "--features", help="Keep the extracted "
                                         "embeddings and probabilities (a sharded feature "
                                         "store) in this new folder."),
    shard_size: int = typer.Option(8192, "--shard-size", min=1, help="Rows per feature shard."),
    ray: str | None = typer.Option(None, "--ray", help="Embed on a Ray cluster: auto (the "
                                   "cluster this machine belongs to), local (a Ray started "
                                   "for this command) or HOST:6379 / ray://HOST:10001; the "
                                   "crops must be at the same path on every node."),
    ray_workers: int | None = typer.Option(None, "--ray-workers", min=1, help="Ray workers "
                                           "(one CPU each; default: every CPU of the cluster)."),
) -> None:
    """Embed every crop, predict its attributes and write a gallery: a FAISS + SQLite index
    folder, or a Milvus gallery (--out URI#NAME).

    Embeddings stream to a sharded feature store on disk, then into the gallery chunk by
    chunk, so memory stays bounded apart from the FAISS vectors."""
    try:
        from attreid.data.io import list_images
        from attreid.inference.backends import load_predictor
        from attreid.search.engines import build_gallery, check_new_location, parse_location

        check_new_location(out, overwrite)  # before the model is loaded and measured
        milvus = parse_location(out)[0] == "milvus"
        kind = "hnsw" if hnsw else "ivf" if ivf else "flat"
        if hnsw and not milvus:
            raise DataError("--hnsw: an HNSW index is for a Milvus gallery (--out http://...#NAME"
                            " or FILE.db#NAME); an index folder has --ivf")
        options = dict(nlist=max(ivf, 0), nprobe=nprobe)
        if not milvus:
            options.update(features=features, shard_size=shard_size)
        crops = list_images(images)[0] if images.is_dir() else []  # the probe: real crops
        predictor, choice = load_predictor(checkpoint, backend, device=device,
                                           batch_size=batch_size, flip=flip, probe_images=crops)
        _show_backend(choice)
        _warn_flip_mismatch(checkpoint, predictor.checkpoint_sha256, flip)
        embed = None
        if ray is not None:
            from attreid.cluster import ray_embedder

            embed = ray_embedder(ray, predictor.checkpoint, choice.backend, flip, batch_size,
                                 ray_workers)
        with _reported_warnings(), _count_progress("embedding crops") as progress:
            index = build_gallery(predictor, images, out, kind, overwrite, batch_size,
                                  progress, _show_backend_text, embed=embed, **options)
    except _search_errors() as exc:
        _fail(str(exc))
    console.print(f"indexed {len(index)} crops ({index.info['kind']}, {index.info['metric']} "
                  f"distance, {index.info['dim']}-d) in {out}", soft_wrap=True, markup=False)


def _warn_flip_mismatch(checkpoint: Path, sha256: str, flip: bool) -> None:
    """Say before embedding when the calibration beside the checkpoint was fitted with the
    other flip setting: the index's searches would be uncalibrated (a rebuild lost)."""
    from attreid.inference.calibration import Calibration, CalibrationError, calibration_path
    from attreid.zoo import resolve_checkpoint

    try:
        found = Calibration.load(calibration_path(resolve_checkpoint(checkpoint)))
    except (CalibrationError, OSError, ValueError):
        return
    if found.checkpoint_sha256 == sha256 and found.flip != flip:
        was, now = ("on" if found.flip else "off"), ("on" if flip else "off")
        _show_backend_text(
            f"warning: the checkpoint's calibration was fitted with flip {was} and this index "
            f"is built with it {now}: its searches will carry no P(same). Build "
            f"with{'' if found.flip else 'out'} --flip, or calibrate again "
            f"with{'' if flip else 'out'} --flip.")


def index_add(
    index: str = typer.Argument(..., help="Index folder made by `attreid index build`, or a "
                                "Milvus gallery (http://HOST:19530#NAME or FILE.db#NAME)."),
    images: Path = typer.Option(..., "--images", help="Folder of crops; known files are "
                                "skipped."),
    checkpoint: Path | None = typer.Option(None, help="The index's checkpoint (or shipped "
                                           "model's name), if it moved."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = BACKEND_OPTION,
) -> None:
    """Append new crops to an index without rebuilding it (same checkpoint only)."""
    try:
        from attreid.search import GallerySearch
        from attreid.search.engines import add_crops

        search = GallerySearch.open(index, checkpoint, device, backend)
        _show_backend(search.choice)
        with _reported_warnings(), _count_progress("embedding new crops") as progress:
            added, known, skipped = add_crops(search.index, search.predictor, images,
                                              batch_size, progress, on_wait=_show_backend_text)
    except _search_errors() as exc:
        _fail(str(exc))
    console.print(f"added {added} crops ({known} already indexed, {len(skipped)} undecodable); "
                  f"{len(search.index)} in {index}", soft_wrap=True, markup=False)


def index_export(
    index: str = typer.Argument(..., help="Index folder, or a Milvus gallery "
                                "(http://HOST:19530#NAME or FILE.db#NAME)."),
    parquet: Path = typer.Option(..., "--parquet", help="New folder for the Parquet files."),
    rows_per_file: int = typer.Option(1_000_000, "--rows-per-file", min=1,
                                      help="Rows per Parquet file."),
) -> None:
    """Write every crop of a gallery (path, camera, frame, time, track, box, the 41 attribute
    probabilities, the vector) as Parquet files that Spark, DuckDB and Milvus bulk import
    read (columns: attreid.search.parquet)."""
    try:
        from attreid.search.engines import open_location
        from attreid.search.parquet import export_parquet

        gallery = open_location(index)
        with _count_progress("exporting crops") as progress:
            files = export_parquet(gallery, parquet, rows_per_file, progress)
    except _search_errors() as exc:
        _fail(str(exc))
    console.print(f"wrote {len(gallery)} crops to {len(files)} Parquet file(s) in {parquet}",
                  soft_wrap=True, markup=False)


def search(
    index: str = typer.Argument(..., help="Index folder, or a Milvus gallery "
                                "(http://HOST:19530#NAME or FILE.db#NAME)."),
    image: list[Path] = typer.Option([], "--image", help="Query crop; repeat it for several "
                                     "crops of one person (their embeddings are averaged)."),
    query_id: int | None = typer.Option(None, "--id", help="Query by an indexed crop's id."),
    attributes: str = typer.Option("", "--attributes", "-a",
                                   help="Constraints, e.g. gender=female,backpack=yes."),
    description: str = typer.Option("", "--describe", "-d", help="The person in words, e.g. "
                                    "'woman with a backpack and a red top' (docs/"
                                    "DESCRIPTIONS.md); joined with --attributes."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    camera: str = typer.Option("", help="Cameras to search in, e.g. 1,3."),
    min_prob: float | None = typer.Option(
        None, help="Hide crops whose probability of a constraint is below this (default: 0 "
        "for a description, which ranks every crop by the product; 0.5 with an image and "
        "--hard)."),
    rerank: bool = typer.Option(False, "--rerank", help="k-reciprocal re-ranking."),
    hard: bool = typer.Option(False, "--hard", help="With a query crop, hide the crops whose "
                              "probability of an attribute is below --min-prob (default: the "
                              "attributes re-weight, nothing hidden)."),
    frames: str = typer.Option("", "--frames", help="Only crops of this frame range, e.g. "
                               "1000-5000."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many results (paging)."),
    order: str = typer.Option("rank", "--order", help="rank, or time: by camera, then frame."),
    group: bool = typer.Option(False, "--group", help="One row per track (same camera, near "
                               "frames and embeddings)."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Also write the results to this "
                                        "CSV file (paths, cameras, frames, scores)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    checkpoint: Path | None = typer.Option(None, help="The index's checkpoint (or shipped "
                                           "model's name), if it moved."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = BACKEND_OPTION,
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    fpir: float = typer.Option(0.01, "--fpir", min=1e-6, help=FPIR_HELP),
) -> None:
    """Search an index by image, by indexed crop and/or by attributes. Image queries show
    P(same person) when the checkpoint has a calibration (attreid calibrate), and mark the
    results that pass the operating point (--fpir: about that many strangers marked per
    query)."""
    try:
        from attreid.search import QueryError
        from attreid.search.describe import with_description
        from attreid.inference.attribute_confidence import attribute_summary
        from attreid.search.hits import confidence_of
        from attreid.search.http import parse_frames
        from attreid.search.query import DESCRIPTION_MIN_PROB, IMAGE_MIN_PROB, pool_vectors
        from attreid.search.results import by_time, group_tracks, hits_csv, tracks_json
        from attreid.search.service import (
            describe_calibration,
            open_search,
            parse_cameras,
            track_distance,
        )

        if image and query_id is not None:
            raise QueryError("give --image or --id, not both")
        if order not in ("rank", "time"):
            raise QueryError(f"--order {order!r}: expected rank or time")
        attributes, read = with_description(attributes, description)
        if read is not None:  # on stderr: with --json too
            _show_backend_text(f"read the description as: {read.explain()}")
        opened = open_search(index, checkpoint, device, backend, calibration,
                             model=bool(image), fpir=fpir)  # only a query image needs the model
        if image:
            _show_backend(opened.choice)
        if image or query_id is not None:  # on stderr: with --json too
            _show_backend_text(describe_calibration(opened, rerank))
        described = not image and query_id is None
        cut = opened.calibration.person_threshold if opened.calibration else 0.5
        if min_prob is None:
            min_prob = DESCRIPTION_MIN_PROB if described else IMAGE_MIN_PROB
        cameras, frame_range = parse_cameras(camera), parse_frames(frames)
        options = dict(attributes=attributes, cameras=cameras, min_prob=min_prob,
                       frames=frame_range, offset=offset)
        total, hidden = opened.count(attributes, cameras, min_prob, frame_range) \
            if hard or described else (0, 0)
        if image:
            vector = pool_vectors(opened.embed_many(list(image)))
            hits = opened.by_vector(vector, k, rerank=rerank, hard=hard, **options)
            _warn_not_a_person(opened.query_person(vector), cut)
        elif query_id is not None:
            hits = opened.by_id(query_id, k, rerank=rerank, hard=hard, **options)
            _warn_not_a_person(opened.query_person(opened.index.vector(query_id)), cut)
        else:
            hits = opened.by_attributes(**options, k=k)
        short = getattr(hits, "unreached", 0)  # an image query the index fell short of
        allowed = getattr(hits, "allowed", None)  # crops its filters let through
        hits = by_time(hits) if order == "time" else hits
    except _search_errors() as exc:
        _fail(str(exc))
    confidence = confidence_of(opened.calibration)  # when attribute values are sure
    if csv_out is not None:
        try:
            atomic_write_text(csv_out, hits_csv(hits, offset + 1, confidence))
        except OSError as exc:
            _fail(f"{csv_out}: cannot write ({exc.strerror or exc})")
    tracks = group_tracks(hits, opened.index.vector, track_distance(opened, hits)) \
        if group else None
    if as_json:
        as_dicts = lambda found: [h.as_dict(confidence) for h in found]  # noqa: E731
        rows = tracks_json(tracks, as_dicts) if tracks else as_dicts(hits)
        print(json.dumps(rows, indent=1))
        return
    shown = [g.best for g in tracks] if tracks else hits
    table = results_table(shown, opened.index.trained_tasks, rerank, opened.index.metric,
                          [g.size for g in tracks] if tracks else None, offset + 1, confidence)
    # a log or a pipe gets the table at full width (80 columns would fold every name)
    console.print(table, width=None if console.is_terminal else max(console.width, 150),
                  crop=console.is_terminal)
    summary = attribute_summary(confidence)
    if summary and shown:
        console.print(attribute_legend(summary), markup=False, highlight=False, soft_wrap=True)
    if short:
        console.print(f"{short} more result(s) pass the filters but the index could not "
                      "reach them", markup=False, highlight=False)
    if allowed is not None:
        console.print(f"the filters allow {allowed:,} crop(s)", markup=False, highlight=False)
    if tracks:
        console.print(f"{len(hits)} results in {len(tracks)} track(s): a row per track, "
                      "'crops' counts the results it stands for", markup=False, highlight=False)
    if attributes and not described and not hard:
        console.print("attributes re-weight the results: ranked by the distance's evidence plus "
                      "log(match), nothing hidden (--hard filters)", markup=False,
                      highlight=False)
    if hidden:
        console.print(f"{hidden} crop(s) hidden by --min-prob {min_prob:g}", markup=False,
                      highlight=False)
    if described:
        person = opened.person_scores() is not None
        console.print("ranked by match, the product of the probabilities of the values asked "
                      "for" + (", times P(person) (junk sinks)" if person else "") +
                      f"; {total:,} crop(s) in all", markup=False, highlight=False)
    if csv_out is not None:
        console.print(f"wrote {csv_out}", markup=False, highlight=False, soft_wrap=True)
    if any(h.probability is not None for h in hits):
        point = opened.point
        if point is not None:
            console.print(point.rule(), markup=False, highlight=False, soft_wrap=True)


def results_table(hits: list, trained: tuple[str, ...], rerank: bool, metric: str,
                  tracks: list[int] | None = None, first_rank: int = 1,
                  confidence: dict | None = None) -> Table:
    """The hits as a table with only the columns that say something: distance (image queries),
    P(same) (calibrated), person (with a person check), match (with constraints), track (the
    results a grouped row stands for); an uncertain attribute value by ``confidence`` (a
    calibration's ``attributes``) ends in "?"."""
    from attreid.inference.attribute_confidence import judge_attributes, shown_value

    headline = [t for t in ("gender", "age", "upcolor", "downcolor") if t in trained]
    heading = "attributes (up/down)" if len(headline) == 4 else (
        "attributes" if trained else "attributes (none: re-ID only model)")

    def summary(attrs: dict) -> str:
        attrs = judge_attributes(attrs, confidence)
        v = {t: shown_value(a["value"], a) for t, a in attrs.items()}
        if len(headline) == 4:
            return f"{v['gender']} {v['age']}, {v['upcolor']}/{v['downcolor']}"
        shown = headline or list(trained)  # only tasks the model was trained on
        return ", ".join(f"{t}={v[t]}" for t in shown if t in v)

    def value(x: float | None, form: str) -> str:
        return "" if x is None else format(x, form)

    columns: list[tuple[str, Callable[[Any], str]]] = [
        ("rank", lambda h: ""), ("id", lambda h: str(h.entry.id)),
        ("identity", lambda h: value(h.entry.identity, "d")),
        ("cam", lambda h: h.entry.camera_name or value(h.entry.camera, "d")),
        ("frame", lambda h: value(h.entry.frame, "d"))]
    optional: list[tuple[str, Callable[[Any], Any], Callable[[Any], str]]] = [
        ("distance", lambda h: h.distance,
         lambda h: value(h.distance, ".4f")),
        ("P(same)", lambda h: h.probability,
         lambda h: "not a person" if h.note else value(h.probability, ".1%") +
         (" ✓" if h.same else "")),
        ("person", lambda h: h.person, lambda h: value(h.person, ".0%")),
        ("match", lambda h: h.match, lambda h: value(h.match, ".3f")),
        ("time (UTC)", lambda h: h.entry.time, lambda h: _clock(h.entry.time)),
        ("track", lambda h: h.entry.track, lambda h: value(h.entry.track, "d"))]
    columns += [(name, show) for name, present, show in optional
                if any(present(h) is not None for h in hits)]
    if tracks is not None:
        size = {id(h): n for h, n in zip(hits, tracks)}
        columns.append(("crops", lambda h: str(size[id(h)])))
    rows = [[str(rank)] + [show(hit) for _, show in columns[1:]]
            for rank, hit in enumerate(hits, start=first_rank)]
    title = f"{len(hits)} result(s)" + (f", {'re-ranked' if rerank else metric} distance"
                                          if any(h.distance is not None for h in hits) else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for j, (name, _) in enumerate(columns):  # numbers are never cut: as wide as they need
        width = max([len(name)] + [len(r[j]) for r in rows])
        table.add_column(name, no_wrap=True, min_width=width, justify="right")
    table.add_column("name", overflow="fold", min_width=24)
    table.add_column(heading, overflow="fold", min_width=20)
    for cells, hit in zip(rows, hits):
        table.add_row(*cells, escape(hit.entry.display_name), summary(hit.entry.attributes()))
    return table


def attribute_legend(summary: dict) -> str:
    """One line: what "?" after an attribute value means, and the heads that are never sure
    (``summary``: :func:`~attreid.inference.attribute_confidence.attribute_summary`)."""
    weak = summary["unreliable"]
    return ("attributes: a value ending in ? is uncertain (less probable than the values that "
            f"were right {summary['precision']:.0%} of the time on the calibration's crops)" +
            (f"; no better than their majority class, so always uncertain: {', '.join(weak)}"
             if weak else ""))


def _warn_not_a_person(person: float | None, cut: float) -> None:
    """On stderr: the query crop fails the calibration's person check (threshold ``cut``)."""
    if person is not None and person < cut:
        _show_backend_text(f"warning: the query does not look like a person (P(person) "
                           f"{person:.1%}, the check passes {cut:.1%} and above); no result is "
                           "marked the same person")


def serve(
    index: str = typer.Argument(..., help="Index folder, or a Milvus gallery "
                                "(http://HOST:19530#NAME or FILE.db#NAME)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    checkpoint: Path | None = typer.Option(None, help="The index's checkpoint (or shipped "
                                           "model's name), if it moved."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Crops of concurrent "
                                  "requests embedded together, at most this many per pass."),
    backend: str = BACKEND_OPTION,
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    fpir: float = typer.Option(0.01, "--fpir", min=1e-6, help=FPIR_HELP),
    far: float = typer.Option(1e-3, "--far", help=FAR_HELP),
) -> None:
    """Serve the search API (OpenAPI docs at /docs) and its web page (/)."""
    try:
        from attreid.search.service import serve as run_server

        run_server(index, host=host, port=port, checkpoint=checkpoint, device=device,
                   max_batch=max_batch, backend=backend,
                   log=_show_backend_text, calibration=calibration, far=far,
                   fpir=fpir)
    except _search_errors() as exc:
        _fail(str(exc))
