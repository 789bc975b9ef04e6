from pathlib import Path

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
