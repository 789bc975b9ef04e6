"""Calibrating a site without labels (issue 30): pairs from the footage's own tracks follow the
rules (impostors only from tracks in view together, genuine only from one track at least the
gap apart), counted against brute force; and ``attreid calibrate --footage`` writes a
calibration that search and verify can use."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
from conftest import require

require("cv2", "footage needs OpenCV (the footage extra)")

from attreid.data.footage_synth import make_footage  # noqa: E402
from attreid.footage.mot import read_mot  # noqa: E402
from attreid.footage.selfcal import label_free_pairs, track_crops  # noqa: E402
from attreid.footage.sources import read_manifest  # noqa: E402
from attreid.inference.calibration import Calibration  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> object:
    return make_footage(tmp_path_factory.mktemp("selfcal") / "scene", cameras=2, people=4,
                        seconds=8, fps=5, seed=3)


def _colour(crops: list[np.ndarray]) -> np.ndarray:
    """A stand-in embedding: each crop's mean colour and size (deterministic, model-free)."""
    return np.array([[*c.reshape(-1, 3).mean(0), c.shape[0] / 10] for c in crops], np.float32)


def test_pairs_follow_the_rules_of_tracks(scene):
    specs = read_manifest(scene.manifest)
    sources = [(s, read_mot(scene.out / f"cam{s.camera}_gt.txt")) for s in specs]
    crops = track_crops(sources, _colour, every=2, min_height=30)
    pairs = label_free_pairs(crops, "euclidean", min_gap_s=1.0)
    genuine = impostor = 0
    for i, j in combinations(range(len(crops.tracks)), 2):
        ti, tj = int(crops.tracks[i]), int(crops.tracks[j])
        if ti == tj:
            genuine += abs(crops.times[i] - crops.times[j]) >= 1.0
        elif crops.sources[i] == crops.sources[j]:
            (a, b), (c, d) = crops.spans[ti], crops.spans[tj]
            impostor += max(a, c) <= min(b, d)
    assert len(pairs.genuine) == genuine > 0
    assert pairs.num_impostor == impostor > 0
    # tracks of different cameras never pair, even when they are one person
    assert len({int(t) // 1_000_000 for t in crops.tracks}) == 2
    labelled = label_free_pairs(crops, "euclidean", labelled=True)
    assert labelled.num_impostor >= pairs.num_impostor


def test_calibrate_footage_writes_a_calibration_verify_can_use(scene, tiny_checkpoint,
                                                              tmp_path, capsys):
    from attreid import cli

    specs = read_manifest(scene.manifest)
    out = tmp_path / "site.calibration.json"
    args = ["calibrate", str(tiny_checkpoint), "--out", str(out), "--backend", "torch-fp32"]
    for s in specs:
        args += ["--footage", str(s.path), "--tracks", str(scene.out / f"cam{s.camera}_gt.txt")]
    with pytest.raises(SystemExit) as exit_:
        cli.run(args)
    assert exit_.value.code in (0, None)
    assert "label-free" in capsys.readouterr().out
    calibration = Calibration.load(out)
    assert calibration.data["split"] == "label-free (tracks)"
    assert calibration.person is None and calibration.far_curve
    assert calibration.attributes is None  # no calibration beside the checkpoint to carry over
    with pytest.raises(SystemExit) as exit_:
        cli.run(["calibrate", str(tiny_checkpoint), "--out", str(out), "--footage",
                 str(specs[0].path)])
    assert exit_.value.code == 1
    shown = capsys.readouterr()
    assert "pair up" in shown.out + shown.err
    with pytest.raises(SystemExit) as exit_:
        cli.run(["calibrate", str(tiny_checkpoint), "--out", str(out)])
    shown = capsys.readouterr()
    assert exit_.value.code == 1 and "--data" in shown.out + shown.err
    assert json.loads(out.read_text())["format"] == "attreid-calibration-v1"


def test_a_site_calibration_carries_the_models_attribute_confidence(scene, calibrated_index):
    """No attribute labels on a site: which attribute values are sure comes from the
    calibration beside the checkpoint (the model's heads), and the file says so."""
    from attreid.footage.selfcal import calibrate_footage
    from attreid.inference.calibration import calibration_path
    from attreid.inference.predictor import Predictor

    _, checkpoint = calibrated_index
    base = Calibration.load(calibration_path(checkpoint))
    specs = read_manifest(scene.manifest)
    site, _ = calibrate_footage(Predictor(checkpoint, device="cpu"),
                                [(s, scene.out / f"cam{s.camera}_gt.txt") for s in specs])
    assert base.attributes and site.attributes == base.attributes
    assert "carried over from" in site.data["attributes"]


def test_tracks_of_another_frame_size_are_named(scene):
    """From the replay: ground truth of full-size frames against a smaller video failed with a
    message about an empty pixel array; it now names the frame size."""
    from attreid.footage.detections import FootageError

    spec = read_manifest(scene.manifest)[0]
    big = read_mot(scene.out / f"cam{spec.camera}_gt.txt", scale=4.0)
    with pytest.raises(FootageError, match=r"outside its \d+x\d+ frames"):
        track_crops([(spec, big)], _colour, every=1, min_height=30)
