"""Verification: pair distances, thresholds at a FAR, TAR, EER and ECE against brute-force counts
(float64 embeddings: the same on every CPU), the fitted mappings on pairs whose true P(same) is
known, the calibration file, the Verifier and the calibrate / verify commands."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from attreid import cli
from attreid.data.records import ImageRecord
from attreid.evaluation.verification import labelled_crops, split_identities
from attreid.inference.calibration import (
    Calibration,
    CalibrationError,
    calibration_path,
    find_calibration,
    fit_calibration,
)
from attreid.inference.verdicts import Verifier
from attreid.metrics.verification import (
    TAIL_FAR,
    PairDistances,
    accept_rates,
    equal_error_rate,
    pair_distances,
    reliability,
    threshold_at_far,
)


def _labelled(seed: int = 0, n: int = 70, ids: int = 9, rounded: bool = False):
    rng = np.random.default_rng(seed)
    identities = rng.integers(0, ids, n)
    cameras = rng.integers(-1, 3, n)  # -1: unknown
    centres = rng.normal(size=(ids, 4)) * 2
    x = centres[identities] + rng.normal(size=(n, 4))
    if rounded:  # coarse values: many tied distances
        x = np.round(x)
    return x, identities, cameras


def _brute(x, identities, cameras):
    genuine, impostor = [], []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            d = math.dist(x[i], x[j])
            if identities[i] != identities[j]:
                impostor.append(d)
            elif cameras[i] != cameras[j] or cameras[i] < 0 or cameras[j] < 0:
                genuine.append(d)
    return np.sort(genuine), np.sort(impostor)


@pytest.mark.parametrize("block", [7, 1024])
def test_pairs_are_every_pair_split_as_brute_force(block):
    x, ids, cams = _labelled()
    pairs = pair_distances(x, ids, cams, block=block, sample=10**9)
    genuine, impostor = _brute(x, ids, cams)
    np.testing.assert_allclose(pairs.genuine, genuine, rtol=1e-12)
    assert pairs.num_impostor == len(impostor)
    tail = math.ceil(TAIL_FAR * len(impostor))
    np.testing.assert_allclose(pairs.impostor_tail, impostor[:tail], rtol=1e-12)
    np.testing.assert_allclose(np.sort(pairs.impostor_sample), impostor, rtol=1e-12)


def test_a_sample_is_a_uniform_share_of_the_impostors():
    x, ids, cams = _labelled(n=120)
    pairs = pair_distances(x, ids, cams, sample=1000, seed=3)
    assert 800 < len(pairs.impostor_sample) < 1200  # binomial around 1000, +-6 sd


@pytest.mark.parametrize("rounded", [False, True])
@pytest.mark.parametrize("far", [0.05, 0.01, 0.003, 1e-3])
def test_threshold_at_far_is_the_largest_with_at_most_that_many_impostors(rounded, far):
    x, ids, cams = _labelled(seed=1, n=160, ids=12, rounded=rounded)
    pairs = pair_distances(x, ids, cams, sample=10**9)
    _, impostor = _brute(x, ids, cams)
    t = threshold_at_far(pairs, far)
    allowed = math.floor(far * len(impostor) + 1e-9)
    accepted = int(np.sum(impostor <= t))
    assert accepted <= allowed
    bigger = impostor[impostor > t]
    assert not len(bigger) or np.sum(impostor <= bigger[0]) > allowed  # the next one is too many
    tar, rate = accept_rates(pairs, t)
    genuine, _ = _brute(x, ids, cams)
    assert tar == np.mean(genuine <= t) and rate == accepted / len(impostor)


def test_equal_error_rate_matches_a_scan_of_every_threshold():
    """Scanned on the pairs' own distances (equal to brute force's to 1e-12, see above; a
    recomputed distance could fall on the other side of a threshold it equals)."""
    x, ids, cams = _labelled(seed=2, n=140, ids=6)
    pairs = pair_distances(x, ids, cams, sample=10**9)  # the sample holds every impostor
    genuine, impostor = pairs.genuine, pairs.impostor_sample
    best = min(abs(np.mean(impostor <= t) - (1 - np.mean(genuine <= t)))
               for t in np.concatenate([genuine, impostor]))
    rate, at = equal_error_rate(pairs)
    far, frr = np.mean(impostor <= at), 1 - np.mean(genuine <= at)
    assert rate > TAIL_FAR  # beyond the exact tail: the sample's count is used there
    assert abs(far - frr) == pytest.approx(best, abs=1e-12)
    assert rate == pytest.approx((far + frr) / 2, abs=1e-12)


def test_pairs_need_both_kinds():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="0 impostor pairs"):
        pair_distances(x, [1, 1, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="0 genuine"):
        pair_distances(x, [1, 2, 3], [0, 1, 2])


def test_reliability_is_the_weighted_gap_per_bin():
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    y = np.array([0, 1, 1, 1, 0], bool)
    ece, predicted, observed, mass = reliability(p, y, bins=10)
    # bins: 0 -> (0.05 vs 0.5, 2/5), 9 -> (0.95 vs 1, 2/5), 5 -> (0.55 vs 0, 1/5)
    assert ece == pytest.approx(0.4 * 0.45 + 0.4 * 0.05 + 0.2 * 0.55)
    assert mass[[0, 5, 9]] == pytest.approx([0.4, 0.2, 0.4]) and mass.sum() == pytest.approx(1)
    assert np.isnan(predicted[1]) and observed[9] == 1.0


def _gaussian_pairs(n: int = 20000, seed: int = 0) -> PairDistances:
    """Genuine d ~ N(10, 2), impostor d ~ N(20, 2): at prior 0.5 the true P(same | d) is
    sigmoid(-2.5 (d - 15)), linear log-odds (what Platt scaling assumes)."""
    rng = np.random.default_rng(seed)
    genuine, impostor = np.sort(rng.normal(10, 2, n)), np.sort(rng.normal(20, 2, n * 10))
    return PairDistances(genuine, impostor[: math.ceil(TAIL_FAR * len(impostor))], impostor,
                         len(impostor), 0, 0)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_fitted_mapping_recovers_the_true_probability(method):
    pairs = _gaussian_pairs()
    c = fit_calibration(pairs, method, "euclidean", False, "abc")
    d = np.array([11.0, 14.0, 15.0, 16.0, 19.0])
    truth = 1 / (1 + np.exp(2.5 * (d - 15)))
    # largest error over seeds 0-7 (measured): Platt 0.023, isotonic 0.090 (its steps are
    # widest where the classes overlap, around d = 15); seed 0 gives 0.017 and 0.060
    assert np.abs(c.probability(d) - truth).max() < (0.04 if method == "platt" else 0.12)
    assert np.all(np.diff(c.probability(np.linspace(0, 30, 200))) <= 1e-12)  # monotone
    assert c.thresholds["1e-03"] == threshold_at_far(pairs, 1e-3)
    if method == "platt":
        assert c.params["a"] == pytest.approx(-2.5, rel=0.05)
    # another prior shifts the odds: 10 % prior -> odds / 9
    p, q = c.probability(15.2), c.probability(15.2, prior=0.1)
    assert q / (1 - q) == pytest.approx(p / (1 - p) / 9, rel=1e-9)


def test_calibration_file_round_trip_and_refusals(tmp_path):
    c = fit_calibration(_gaussian_pairs(2000), "isotonic", "euclidean", True, "sha-1",
                        {"data": "synthetic"})
    path = c.save(tmp_path / "best.calibration.json")
    loaded = Calibration.load(path)
    assert loaded == c
    assert loaded.check("sha-1", True, "euclidean") is None
    assert "another checkpoint" in loaded.check("sha-2", True, "euclidean")
    assert "flip" in loaded.check("sha-1", False, "euclidean")
    with pytest.raises(CalibrationError, match="FAR 0.5 is not an operating point"):
        loaded.threshold(0.5)
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="not a calibration file"):
        Calibration.load(path)
    with pytest.raises(CalibrationError, match="no such calibration file"):
        Calibration.load(tmp_path / "missing.json")


def test_find_calibration_says_why_it_is_uncalibrated(tmp_path):
    checkpoint = tmp_path / "best.pt"
    found, why = find_calibration(checkpoint, "sha-1", False, "euclidean")
    assert found is None and "no best.calibration.json beside the checkpoint" in why
    fit_calibration(_gaussian_pairs(2000), "platt", "euclidean", False, "sha-1").save(
        calibration_path(checkpoint))
    assert find_calibration(checkpoint, "sha-1", False, "euclidean")[0] is not None
    found, why = find_calibration(checkpoint, "sha-2", False, "euclidean")
    assert found is None and "another checkpoint" in why
    with pytest.raises(CalibrationError, match="does not apply"):
        find_calibration(checkpoint, "sha-2", False, "euclidean", calibration_path(checkpoint))


def _record(pid, cam, i):
    return ImageRecord(path=f"/x/{i}.jpg", pid=pid, camid=cam)


def test_labelled_crops_drop_junk_and_give_distractors_identities_of_their_own():
    records = [_record(p, c, i) for i, (p, c) in enumerate(
        [(5, 1), (5, 2), (-1, 1), (0, 1), (0, 2), (7, 1), (None, 1), (9, 3)])]
    crops = labelled_crops(records)
    assert [str(p) for p in crops.paths] == [f"/x/{i}.jpg" for i in (0, 1, 3, 4, 5, 7)]
    assert crops.identities.tolist()[:2] == [5, 5] and len(set(crops.identities[2:4])) == 2
    assert all(i < -1 for i in crops.identities[2:4])
    two = labelled_crops(records, max_ids=2, seed=0)
    assert len(set(two.identities.tolist())) == 2 and (two.identities >= 0).all()
    first, second = split_identities(crops, seed=1)
    assert not (first & second).any() and (first | second).all()
    assert first[2:4].sum() == 1  # one distractor in each half
    people = crops.identities >= 0
    assert len(set(crops.identities[first & people])) == 1  # 3 people: 1 and 2


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):
    """A private copy (a calibration written beside it must not reach other tests)."""
    return shutil.copy(tiny_checkpoint, tmp_path / "best.pt")


def test_calibrate_then_verify_from_the_command_line(checkpoint, synth_market, tmp_path,
                                                     capsys):
    crops = sorted((synth_market / "query").glob("*.jpg"))
    a, b = str(crops[0]), str(crops[1])
    with pytest.raises(SystemExit) as exit_:
        cli.run(["verify", str(checkpoint), a, b, "--json"])
    assert exit_.value.code in (0, None)
    before = json.loads(capsys.readouterr().out)
    assert before["calibrated"] is False and "uncalibrated" in before["note"]
    with pytest.raises(SystemExit) as exit_:
        cli.run(["calibrate", str(checkpoint), "--data", str(synth_market), "--json"])
    assert exit_.value.code in (0, None)
    made = json.loads(capsys.readouterr().out)
    assert made["calibration"] == str(calibration_path(checkpoint))
    assert all(tmp_path.joinpath(p).exists() for p in made["figures"])
    with pytest.raises(SystemExit):
        cli.run(["verify", str(checkpoint), a, b, "--json", "--far", "1e-2"])
    after = json.loads(capsys.readouterr().out)
    calibration = Calibration.load(calibration_path(checkpoint))
    assert after["distance"] == pytest.approx(before["distance"], rel=1e-5)
    assert after["probability"] == pytest.approx(
        float(calibration.probability(after["distance"])))
    assert after["same"] == (after["distance"] <= calibration.thresholds["1e-02"])
    verifier = Verifier.open(checkpoint)
    assert verifier.verify(a, b).probability == pytest.approx(after["probability"], rel=1e-5)


def test_verify_names_a_calibration_that_does_not_apply(checkpoint, synth_market, tmp_path,
                                                        capsys):
    other = tmp_path / "other.json"
    fit_calibration(_gaussian_pairs(500), "platt", "euclidean", False, "sha-x").save(other)
    crop = str(next((synth_market / "query").glob("*.jpg")))
    with pytest.raises(SystemExit) as exit_:
        cli.run(["verify", str(checkpoint), crop, crop, "--calibration", str(other)])
    assert exit_.value.code == 1
    shown = capsys.readouterr()
    assert "does not apply: it was fitted on another checkpoint" in shown.out + shown.err


def test_person_check_separates_people_from_distractors_and_vetoes_a_match(tmp_path):
    from attreid.inference.fits import fit_person
    from attreid.inference.verdicts import verdict

    rng = np.random.default_rng(0)
    people, junk = rng.normal(1.0, 1.0, (300, 8)), rng.normal(-1.0, 1.0, (60, 8))
    x = np.concatenate([people, junk])
    is_person = np.r_[np.ones(300, bool), np.zeros(60, bool)]
    check = fit_person(x, is_person, "euclidean")
    assert check["people"] == 300 and check["distractors"] == 60
    c = fit_calibration(_gaussian_pairs(2000), "platt", "euclidean", False, "s", person=check)
    p = c.person_probability(x)
    # balanced weights: about as many of each kind on the right side (separable to ~2.8 sd)
    assert np.mean(p[:300] > 0.5) > 0.9 and np.mean(p[300:] < 0.5) > 0.9
    assert fit_person(x[:309], is_person[:309], "euclidean") is None  # 9 distractors: too few
    cut = c.person_threshold  # refuses 1 % of the people it was fitted on
    assert np.mean(p[:300] < cut) == pytest.approx(0.01, abs=0.004)
    assert 0 < cut < 1 and check["refuses"] == 0.01
    near, high, low = c.threshold(1e-3) - 1, min(1.0, cut + 0.01), cut / 2
    assert verdict(near, c, person=(high, high)).same is True
    vetoed = verdict(near, c, person=(high, low))
    assert vetoed.same is False and "second crop does not look like a person" in vetoed.note
    assert vetoed.probability == pytest.approx(float(c.probability(near)))
    assert "neither crop" in verdict(near, c, person=(low, low)).note
    reloaded = Calibration.load(c.save(tmp_path / "c.json"))
    assert reloaded.person_probability(x[:3]) == pytest.approx(p[:3])
