"""Milvus bookkeeping for :mod:`attreid.search.milvus`: the client (:func:`connect`), the
collections of a gallery (rows, info, generations behind an alias) and the writer turn
(:func:`writer_turn`: Lamport's bakery over rows read back consistently, leases renewed while
writing). The layout is described in :mod:`attreid.search.milvus`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from attreid.search.index import FORMAT_VERSION, GalleryIndexError
from attreid.search.metadata import probability_columns
from attreid.utils.extras import require_extra

INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,180}")


def _pymilvus() -> Any:
    return require_extra("pymilvus", "the Milvus backend", "milvus",
                         "pymilvus, and milvus-lite for file galleries")


def connect(uri: str, create: bool = False) -> Any:
    """A ``MilvusClient`` for ``uri`` (a ``.db`` path: Milvus Lite; ``http://...``: a server).
    A Lite path must exist unless ``create`` (a build), so that a mistyped path makes nothing.

    Raises:
        GalleryIndexError: the server cannot be reached, the Lite path or its folder is
            missing, or another process holds the Lite file.
    """
    pymilvus = _pymilvus()
    if "://" not in uri and not is_lite(uri):
        raise GalleryIndexError(f"{uri}: a Milvus URI is a Milvus Lite file ending in .db, or "
                                "http://host:19530 for a server")
    if is_lite(uri):
        _check_lite_path(uri, create)
        if not _served_here(uri) and _lite_held(uri):  # Lite would try for seconds first
            raise _held(uri)
    lite_log = logging.getLogger("milvus_lite.server_manager")
    level = lite_log.level
    lite_log.setLevel(logging.CRITICAL)  # its traceback of a failed start; we say why below
    try:
        client = pymilvus.MilvusClient(uri, **server_options(uri))
    except Exception as exc:  # pymilvus raises its own MilvusException kinds
        if is_lite(uri) and _lite_held(uri):
            raise _held(uri) from None
        raise GalleryIndexError(f"{uri}: cannot open Milvus ({exc})") from exc
    finally:
        lite_log.setLevel(level)
    client.attreid_uri = uri  # for messages (client_uri)
    return client


SERVER_ENV = {"ATTREID_MILVUS_TOKEN": "token", "ATTREID_MILVUS_CA": "server_pem_path"}
"""Environment variables read for a server URI, and the ``MilvusClient`` option each sets:
the credentials (``user:password``, or an API key of a managed cluster) and the server's TLS
certificate for an ``https://`` URI. Secrets stay out of the command line (shell history, the
process list). No database option: the Milvus 2.3 server the tests run keeps aliases in the
``default`` database whatever the client's database (measured), so a gallery lives there."""


def server_options(uri: str) -> dict[str, str]:
    """The ``MilvusClient`` options of :data:`SERVER_ENV` set in the environment ({} for Lite).

    Raises:
        GalleryIndexError: ``ATTREID_MILVUS_CA`` names no file."""
    if is_lite(uri):
        return {}
    options = {option: os.environ[env] for env, option in SERVER_ENV.items()
               if os.environ.get(env)}
    ca = options.get("server_pem_path")
    if ca and not os.path.isfile(ca):
        raise GalleryIndexError(f"ATTREID_MILVUS_CA={ca}: no such certificate file")
    return options


def _held(uri: str) -> GalleryIndexError:
    return GalleryIndexError(f"{uri}: another process has this Milvus Lite gallery open (Lite "
                             "serves one process per file; stop it, or run a Milvus server for "
                             "several)")


def _check_lite_path(uri: str, create: bool) -> None:
    """Refuse a Lite path in a missing folder, or (not ``create``) a path with no gallery."""
    path = os.path.abspath(uri)
    if not os.path.isdir(os.path.dirname(path)):
        raise GalleryIndexError(f"{uri}: the folder {os.path.dirname(path)} does not exist")
    if not create and not os.path.exists(path):
        raise GalleryIndexError(f"{uri}: no Milvus Lite gallery here; make one with "
                                f"attreid index build --out {uri}#NAME")


def _served_here(uri: str) -> bool:
    """Whether this process already serves the Lite file (its own lock: a new client shares
    that server)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return False
    return os.path.abspath(uri) in getattr(server_manager_instance, "_servers", {})


def _lite_held(uri: str) -> bool:
    """Whether another process holds the Lite folder's advisory lock (``LOCK``, flock)."""
    import fcntl

    lock = os.path.join(os.path.abspath(uri), "LOCK")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def is_lite(uri: str) -> bool:
    return "://" not in uri and uri.endswith(".db")


def release_lite(uri: str) -> None:
    """Stop this process's Milvus Lite server of ``uri`` (nothing for a server URI), so that
    another process may open the file."""
    if not is_lite(uri):
        return
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(uri)


def check_name(name: str) -> str:
    """``name`` if it can name a Milvus collection (letters, digits, ``_``, not a digit first)."""
    if not _NAME.fullmatch(name):
        raise GalleryIndexError(f"{name!r}: a Milvus gallery name has letters, digits and _ "
                                "only, and does not start with a digit")
    return name


def path_key(path: str) -> int:
    """A signed 64-bit key of a crop path (first 8 bytes of its SHA-1), for finding paths."""
    digest = hashlib.sha1(path.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def make_collections(client: Any, data: str, dim: int, metric: str, kind: str,
                     nlist: int = 1024) -> None:
    pymilvus = _pymilvus()
    types = pymilvus.DataType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", types.INT64, is_primary=True)
    schema.add_field("vec", types.FLOAT_VECTOR, dim=dim)
    schema.add_field("path", types.VARCHAR, max_length=65535)
    for field in ("path_key", "camera", "frame", "identity"):
        schema.add_field(field, types.INT64)
    for _, _, column in probability_columns():
        schema.add_field(column, types.FLOAT)
    params = client.prepare_index_params()
    extra = {"hnsw": {"M": 16, "efConstruction": 200}, "ivf": {"nlist": nlist}}.get(kind, {})
    params.add_index("vec", index_type=INDEX_TYPES[kind], params=extra,
                     metric_type="IP" if metric == "cosine" else "L2")
    with _quiet_lite():
        client.create_collection(data, schema=schema, index_params=params,
                                 consistency_level="Strong")
    _small_collection(client, f"{data}_info", "key", {"value": 65535})


def _small_collection(client: Any, name: str, key: str | None,
                      strings: dict[str, int], doubles: Sequence[str] = ()) -> None:
    """A bookkeeping collection (Milvus wants a vector field: a 2-d dummy): primary key ``key``
    (VARCHAR) or auto ids when ``None``."""
    types = _pymilvus().DataType
    schema = client.create_schema(auto_id=key is None, enable_dynamic_field=False)
    if key is None:
        schema.add_field("id", types.INT64, is_primary=True)
    else:
        schema.add_field(key, types.VARCHAR, max_length=200, is_primary=True)
    schema.add_field("vec", types.FLOAT_VECTOR, dim=2)
    for field, length in strings.items():
        schema.add_field(field, types.VARCHAR, max_length=length)
    for field in doubles:
        schema.add_field(field, types.DOUBLE)
    params = client.prepare_index_params()
    params.add_index("vec", index_type="FLAT", metric_type="L2")
    if client.has_collection(name):
        load(client, name)  # a reopened Milvus holds it released
        return
    try:
        with _quiet_lite():
            client.create_collection(name, schema=schema, index_params=params,
                                     consistency_level="Strong")
    except Exception:  # made meanwhile by another writer
        if not client.has_collection(name):
            raise


@contextmanager
def _quiet_lite() -> Iterator[None]:
    """Silence Milvus Lite's in-process gRPC server while a collection is made: pymilvus asks it
    for a timestamp it does not implement (and carries on), and the server logs a traceback."""
    logger = logging.getLogger("grpc._server")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def info_row(info: dict[str, Any]) -> dict[str, Any]:
    return {"key": "info", "vec": [0.0, 0.0], "value": json.dumps(info, ensure_ascii=True)}


def read_info(client: Any, data: str) -> dict[str, Any]:
    rows = client.query(f"{data}_info", ids=["info"], output_fields=["value"])
    if not rows:
        raise GalleryIndexError(f"{data}: the gallery's info row is missing (a build killed "
                                "before it finished?); rebuild it")
    info = json.loads(rows[0]["value"])
    if info.get("format") != FORMAT_VERSION:
        raise GalleryIndexError(f"{data}: gallery format {info.get('format')!r}, this attreid "
                                f"reads {FORMAT_VERSION}; rebuild it")
    return info


def alias_target(client: Any, name: str) -> str | None:
    if name not in client.list_aliases().get("aliases", []):
        return None
    return str(client.describe_alias(name)["collection_name"])


def load(client: Any, collection: str) -> None:
    """Load a collection into memory for reads (Milvus reopens them released)."""
    state = client.get_load_state(collection)["state"]
    if str(getattr(state, "name", state)) != "Loaded":
        client.load_collection(collection)


def current(client: Any, uri: str, name: str) -> tuple[str, dict[str, Any]]:
    """``(collection, info)`` of the generation ``name`` points at; again when a rebuild
    switched it between the two reads."""
    for _ in range(5):
        data = alias_target(client, name)
        if data is None:
            there = sorted(a for a in client.list_aliases().get("aliases", []))
            known = f" (galleries here: {', '.join(there)})" if there else ""
            raise GalleryIndexError(f"{uri}#{name}: no such gallery{known}; make one with "
                                    f"`attreid index build --out {uri}#{name}`")
        try:
            load(client, f"{data}_info")
            info = read_info(client, data)
            load(client, data)
            return data, info
        except GalleryIndexError:
            if alias_target(client, name) == data:
                raise
    raise GalleryIndexError(f"{uri}#{name}: the gallery changed at every read; try again")


def prune(client: Any, name: str, keep: set[str | None]) -> None:
    """Drop the generations of gallery ``name`` (data and info collections) not in ``keep``."""
    generation = re.compile(rf"{re.escape(name)}__g\d+")
    for collection in client.list_collections():
        data = collection.removesuffix("_info")
        if generation.fullmatch(data) and data not in keep:
            client.drop_collection(collection)


# ---- one writer at a time ------------------------------------------------------------------

TURNS = "attreid__turns"
"""The writer turns of every gallery at one Milvus address: a row per writer (its owner name,
gallery, bakery number, whether it is choosing one, lease expiry)."""


@contextmanager
def writer_turn(client: Any, name: str, lease_s: float,
                on_wait: Callable[[str], None] | None) -> Iterator[Callable[[], None]]:
    """Hold the writer turn of gallery ``name`` for the block; yields ``renew()``, which
    extends the lease when a third of it has passed.

    Lamport's bakery algorithm (CACM 1974) over rows that Milvus reads back consistently
    (the collections are made with Strong consistency): a writer takes a number one above every
    number it sees, then waits until no writer of the gallery is choosing one and none holds a
    smaller ``(number, owner)``. It needs no server-side counter (Milvus Lite's auto ids are
    not safe against concurrent inserts). A writer whose lease has lapsed (killed) is ignored
    and its row removed."""
    _small_collection(client, TURNS, "owner", {"gallery": 200},
                      ("expires", "number", "choosing"))
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    state = {"number": 0.0, "choosing": 1.0, "renewed": 0.0}

    def write() -> None:
        now = time.time()
        client.upsert(TURNS, [{"owner": owner, "gallery": name, "vec": [0.0, 0.0],
                               "expires": now + lease_s, "number": state["number"],
                               "choosing": state["choosing"]}])
        state["renewed"] = now

    def renew() -> None:
        if time.time() - state["renewed"] > lease_s / 3:
            write()

    write()  # choosing
    state["number"] = 1.0 + max((r["number"] for r in _live(client, name)), default=0.0)
    state["choosing"] = 0.0
    write()
    told = False
    try:
        while not _first(client, name, owner, state["number"]):
            if not told and on_wait is not None:
                on_wait(f"{client_uri(client)}#{name}: another process is writing this gallery;"
                        " waiting for it to finish")
            told = True
            time.sleep(0.2)
            renew()
        yield renew
    finally:
        client.delete(TURNS, ids=[owner])


def _live(client: Any, name: str) -> list[dict[str, Any]]:
    """The rows of gallery ``name``'s writers whose lease holds; lapsed ones are removed."""
    rows = client.query(TURNS, filter=f'gallery == "{name}"',
                        output_fields=["expires", "number", "choosing"])
    now = time.time()
    dead = [r["owner"] for r in rows if float(r["expires"]) <= now]
    if dead:
        client.delete(TURNS, ids=dead)
    return [r for r in rows if float(r["expires"]) > now]


def _first(client: Any, name: str, owner: str, number: float) -> bool:
    """Whether ``owner`` (holding ``number``) may write: in one consistent read, no other
    writer is choosing a number and none holds a smaller ``(number, owner)``."""
    for row in _live(client, name):
        if row["owner"] == owner:
            continue
        if row["choosing"] or (0 < row["number"] and (row["number"], row["owner"])
                                < (number, owner)):
            return False
    return True


def client_uri(client: Any) -> str:
    """The address a client was opened with, for messages (best effort)."""
    return str(getattr(client, "attreid_uri", "") or "milvus")


HNSW_EF = 128
"""HNSW's candidate list per search (Milvus's ``ef``; more: higher recall, slower)."""
READ = {"consistency_level": "Session"}
"""Reads of a gallery's rows: this process sees its own adds at once, and another process's
add once its ``count`` is committed (flushed first), without waiting for Milvus's time tick as
the collections' Strong level does (about 200 ms per request on a 2.3.5 server: measured)."""
HNSW_EF_MAX = 2_048
"""The longest candidate list a filtered search widens ``ef`` to."""
IVF_NPROBE = 32
"""IVF lists probed per search on Milvus (of 1,024)."""


def search_params(info: dict[str, Any], k: int, fraction: float = 1.0) -> dict[str, Any]:
    """Milvus search parameters of a gallery's index: HNSW's candidate list ``ef`` (at least
    :data:`HNSW_EF`, and k), IVF's lists probed (its ``nprobe``, else :data:`IVF_NPROBE`);
    both divided by the ``fraction`` of rows a filter allows (up to :data:`HNSW_EF_MAX`, or
    every list), so that as many allowed rows are ranked as without a filter."""
    scale = 1.0 / max(fraction, 1e-9)
    if info["kind"] == "hnsw":
        return {"params": {"ef": int(min(HNSW_EF_MAX, max(HNSW_EF, k) * scale))}}
    if info["kind"] == "ivf":
        nprobe = int(info.get("nprobe", IVF_NPROBE)) * scale
        return {"params": {"nprobe": int(min(int(info.get("nlist", 65_536)), nprobe))}}
    return {}


def ivf_lists(count: int) -> int:
    """IVF lists for ``count`` rows: about 4 sqrt(N) (FAISS's rule of thumb), 1 .. 65,536
    (Milvus's range)."""
    return int(min(65_536, max(1, round(4 * count ** 0.5))))
