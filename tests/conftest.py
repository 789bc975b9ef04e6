import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data beside the repository; tests using it skip when absent."""
    if not (SHARED / "market1501").is_dir():
        pytest.skip(f"real data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def synth_market(tmp_path_factory) -> Path:
    """A small synthetic dataset in the standard Market-1501 layout (16 identities)."""
    from attreid.data.synth import generate

    root = tmp_path_factory.mktemp("synth_market") / "data"
    generate(root, ids=16, seed=5, layout="market")
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_market, tmp_path_factory) -> Path:
    """A checkpoint of a tiny model trained for one short epoch on ``synth_market``."""
    from attreid.config import load_config
    from attreid.engine import train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("demo", [
        f"data.root={synth_market}", "data.p=4", "data.k=2", "data.workers=0",
        "data.batches_per_epoch=2", f"train.out={out}", "train.amp=none",
        "train.channels_last=false", "optim.epochs=1", "optim.warmup_epochs=0",
        "train.tensorboard=false",
    ])
    train(cfg, log=lambda _: None)
    return out / "best.pt"


@pytest.fixture(scope="session")
def search_index(tiny_checkpoint, synth_market, tmp_path_factory) -> Path:
    """A gallery index of ``synth_market``'s bounding_box_test made with ``tiny_checkpoint``
    (its query/ folder holds held-out crops of the same identities)."""
    from attreid.predictor import Predictor
    from attreid.search import build_index

    out = tmp_path_factory.mktemp("search") / "index"
    build_index(Predictor(tiny_checkpoint, device="cpu"), synth_market / "bounding_box_test", out)
    return out


@contextmanager
def served(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the uvicorn server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def search_server(search_index) -> Iterator[str]:
    """The search app over ``search_index``, served on loopback (module-scoped)."""
    pytest.importorskip("uvicorn")
    from attreid.search.query import GallerySearch
    from attreid.search.service import create_app

    with served(create_app(GallerySearch.open(search_index))) as url:
        yield url
