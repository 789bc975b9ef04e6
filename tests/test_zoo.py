"""Shipped models (attreid.zoo, issue 28): loaded by name wherever a checkpoint is taken,
SHA-256 checked, carried by the package; a registry of this test's own (a tiny model packed in
float16 the way dev/ship_model.py packs the real one) checks the mechanics, and the models
really shipped are checked as a user meets them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from attreid import zoo
from attreid.zoo import registry

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(zoo.shipped_models())


def _pack_half(source: Path, out: Path) -> Path:
    state = torch.load(source, map_location="cpu", weights_only=False)
    state["model"] = {k: v.half() if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save({k: state[k] for k in ("model", "config", "model_config", "trained_tasks")
                if k in state}, out)
    return out


@pytest.fixture()
def tiny_zoo(tiny_checkpoint, tmp_path, monkeypatch) -> Path:
    """A registry holding one model, ``tiny``: ``tiny_checkpoint`` in float16."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    packed = _pack_half(tiny_checkpoint, folder / "tiny.pt")
    digest = registry.hashlib.sha256(packed.read_bytes()).hexdigest()
    (folder / "models.json").write_text(json.dumps({"tiny": {
        "file": "tiny.pt", "sha256": digest, "summary": "a test model",
        "card": {"scores": {"mAP": 12.5}, "licence": "test only"}}}))
    monkeypatch.setattr(registry, "HERE", folder)
    monkeypatch.setattr(registry, "REGISTRY", folder / "models.json")
    registry.shipped_models.cache_clear()
    registry._check_file.cache_clear()
    yield folder
    registry.shipped_models.cache_clear()
    registry._check_file.cache_clear()


def test_a_path_is_returned_unchanged():
    assert zoo.resolve_checkpoint("runs/x/best.pt") == Path("runs/x/best.pt")


def test_a_name_loads_the_packed_model_with_float32_parity(tiny_zoo, tiny_checkpoint,
                                                            synth_market):
    from attreid.inference.predictor import Predictor

    assert zoo.resolve_checkpoint("tiny") == tiny_zoo / "tiny.pt"
    crops = sorted((synth_market / "query").glob("*.jpg"))[:12]
    full = Predictor(tiny_checkpoint, device="cpu").predict(crops)
    half = Predictor("tiny", device="cpu").predict(crops)
    assert half.embeddings.dtype == np.float32
    # float16 weights round each to 11 significant bits (relative error <= 2**-11 ~ 4.9e-4);
    # through a few layers the embedding moves by a few times that, far below 1e-2
    rel = np.linalg.norm(full.embeddings - half.embeddings, axis=1) / \
        np.linalg.norm(full.embeddings, axis=1)
    assert rel.max() < 1e-2
    assert not np.allclose(full.embeddings, half.embeddings, rtol=0, atol=0)  # really halved


def test_an_altered_file_is_refused_by_name(tiny_zoo):
    path = tiny_zoo / "tiny.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match="tiny: .*sha256.*reinstall.*git checkout"):
        zoo.resolve_checkpoint("tiny")
    digest = zoo.shipped_model("tiny").sha256  # an index recorded this file: named the same way
    with pytest.raises(zoo.ZooError, match="damaged or was replaced"):
        zoo.recorded_checkpoint(path, digest)


def test_a_missing_file_and_an_unknown_name_are_named(tiny_zoo):
    from attreid.utils.checkpoint import CheckpointError, require_checkpoint

    with pytest.raises(CheckpointError, match="nosuch: checkpoint not found \\(nor a shipped "
                                              "model's name: tiny\\)"):
        require_checkpoint("nosuch")
    (tiny_zoo / "tiny.pt").unlink()
    with pytest.raises(zoo.ZooError, match="tiny: the shipped model's file .* is missing"):
        zoo.resolve_checkpoint("tiny")


def test_a_file_of_that_name_in_the_folder_wins(tiny_zoo, tiny_checkpoint, tmp_path,
                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(tiny_checkpoint, tmp_path / "tiny")
    assert zoo.resolve_checkpoint("tiny") == Path("tiny")


def test_models_command_lists_and_prints_the_card(tiny_zoo, capsys):
    from attreid import cli

    with pytest.raises(SystemExit) as done:
        cli.run(["models"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "tiny" in out and "12.5" in out
    with pytest.raises(SystemExit) as done:
        cli.run(["models", "--info", "tiny"])
    out = capsys.readouterr().out
    assert "licence: test only" in out and registry.shipped_model("tiny").sha256 in out
    with pytest.raises(SystemExit) as done:
        cli.run(["models", "--info", "nope"])
    assert done.value.code == 1
    said = capsys.readouterr()
    assert "nope: no shipped model of that name (shipped: tiny" in said.out + said.err


def test_calibrating_a_shipped_model_needs_out(tiny_zoo, synth_market):
    from attreid.evaluation.verification import calibrate_checkpoint

    with pytest.raises(ValueError, match="part of the package; pass --out"):
        calibrate_checkpoint("tiny", synth_market)
    assert not (tiny_zoo / "tiny.calibration.json").exists()


def test_an_index_finds_its_shipped_model_after_the_package_moved(tiny_zoo, synth_market,
                                                                  tmp_path):
    from attreid.inference.predictor import Predictor
    from attreid.search import build_index
    from attreid.search.query import GallerySearch

    index = build_index(Predictor("tiny", device="cpu"), synth_market / "bounding_box_test",
                        tmp_path / "index")
    assert index.info["checkpoint"] == str((tiny_zoo / "tiny.pt").resolve())
    moved = tmp_path / "moved"
    shutil.copytree(tiny_zoo, moved)
    shutil.rmtree(tiny_zoo)
    registry.HERE, registry.REGISTRY = moved, moved / "models.json"  # monkeypatch restores
    registry.shipped_models.cache_clear()
    search = GallerySearch.open(tmp_path / "index", device="cpu")
    query = sorted((synth_market / "query").glob("*.jpg"))[0]
    assert len(search.by_image(query, k=3)) == 3


def test_package_data_carries_every_registry_file():
    """The wheel and an installed package carry what models.json names (pyproject's
    package-data globs), and git does not ignore it (a clone carries it)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["attreid"]
    folder = ROOT / "src" / "attreid" / "zoo"
    names = ["models.json"] + [n for m in zoo.shipped_models().values()
                               for n in (m.file, m.calibration) if n]
    for name in names:
        assert any((folder / name).relative_to(ROOT / "src" / "attreid").match(g)
                   for g in globs), name
    ignored = subprocess.run(["git", "check-ignore", *[str(folder / n) for n in names]],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout == "", ignored.stdout


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_is_intact_and_small(name):
    model = zoo.shipped_model(name)
    assert zoo.resolve_checkpoint(name) == model.path
    assert model.path.stat().st_size < 16 * 2**20  # the repository stays light
    assert model.calibration_path is not None and model.calibration_path.is_file()
    for key in ("mAP", "rank-1", "mINP", "12-task accuracy", "mA", "TAR@FAR=1e-3"):
        assert isinstance(model.card["scores"][key], (int, float)), key
    for key in ("data", "licence", "command", "wall-clock", "machine"):
        assert model.card[key], key


@pytest.mark.parametrize("name", SHIPPED)
def test_commands_default_to_the_shipped_model(name, synth_market, tmp_path):
    """``attreid predict --data`` and ``attreid index build --images`` with no checkpoint,
    then a search that gives a verdict from the shipped calibration, in a fresh process."""
    if name != zoo.DEFAULT_MODEL:
        pytest.skip("the default is another model")
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "attreid.cli", *args], cwd=tmp_path, capture_output=True,
        text=True)
    done = run("predict", "--data", str(synth_market), "--backend", "torch-fp32")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "predictions" / "features.npz").is_file()
    done = run("index", "build", "--images", str(synth_market / "bounding_box_test"),
               "--backend", "torch-fp32")
    assert done.returncode == 0, done.stderr
    from attreid.search.index import GalleryIndex

    info = GalleryIndex.open(tmp_path / "index").info
    assert info["checkpoint_sha256"] == zoo.shipped_model(name).sha256
    query = sorted((synth_market / "query").glob("*.jpg"))[0]
    done = run("search", "index", "--image", str(query), "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout[done.stdout.index("["):])
    assert len(hits) == 3 and all(h["probability"] is not None for h in hits)
    other = sorted((synth_market / "query").glob("*.jpg"))[-1]
    done = run("verify", str(query), str(other), "--json", "--backend", "torch-fp32")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["probability"] is not None and verdict["same"] in (True, False)
