"""Tests for attreid.training.losses: every loss against a brute-force loop over explicit terms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from attreid.models.output import ModelOutput
from attreid.schema import MISSING, NUM_TASKS, TASK_NAMES, TASKS
from attreid.training.losses import (
    FixedWeighting,
    MultiTaskLoss,
    UncertaintyWeighting,
    attribute_loss,
    id_loss,
    pairwise_distance,
    positive_ratio_weights,
    triplet_loss,
    triplet_loss_with_stats,
)

DISTANCES = ("euclidean", "squared", "cosine")
# Images per identity; 1 = an identity with a single image (anchor of no triplet, yet a negative).
GROUPS = [(4, 4, 4), (2, 2, 2, 2, 1, 1), (3, 1, 5, 1, 2), (1, 6)]


# --------------------------------------------------------------------------------------------
# brute force
# --------------------------------------------------------------------------------------------


def _batch(counts: tuple[int, ...], seed: int, dim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.concatenate([np.full(n, 10 * i + 3) for i, n in enumerate(counts)]))
    return rng.normal(size=(len(labels), dim)), labels


def _dist(x: np.ndarray, y: np.ndarray, distance: str) -> float:
    if distance == "euclidean":
        return float(math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y))))
    if distance == "squared":
        return float(sum((a - b) ** 2 for a, b in zip(x, y)))
    dot = sum(a * b for a, b in zip(x, y))
    return 1.0 - dot / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y)))


def _triplets(labels: np.ndarray) -> list[tuple[int, int, int]]:
    n = len(labels)
    return [(a, p, q) for a, p, q in itertools.product(range(n), repeat=3)
            if a != p and labels[a] == labels[p] and labels[q] != labels[a]]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _brute_triplet(feats: np.ndarray, labels: np.ndarray, margin: float, mining: str,
                   soft: bool, distance: str) -> tuple[float, int, int]:
    """(loss, num_valid, num_positive) by explicit loops."""
    d = lambda i, j: _dist(feats[i], feats[j], distance)  # noqa: E731
    if mining == "batch_all":
        gaps = [d(a, p) - d(a, q) for a, p, q in _triplets(labels)]
    else:
        gaps = []
        for a in range(len(labels)):
            pos = [d(a, p) for p in range(len(labels)) if p != a and labels[p] == labels[a]]
            neg = [d(a, q) for q in range(len(labels)) if labels[q] != labels[a]]
            if pos and neg:
                gaps.append(max(pos) - min(neg))
    if soft:
        losses = [_softplus(g) for g in gaps]
        return (sum(losses) / len(losses) if losses else 0.0), len(gaps), sum(g > 0 for g in gaps)
    losses = [max(g + margin, 0.0) for g in gaps]
    positive = [v for v in losses if v > 1e-16]
    denom = len(positive) if mining == "batch_all" else len(losses)
    return (sum(losses) / denom if denom else 0.0), len(gaps), len(positive)


def _torch_brute_triplet(feats: torch.Tensor, labels: list[int], margin: float, mining: str,
                         soft: bool, distance: str) -> torch.Tensor:
    """Same loss from per-pair torch ops, for gradient comparison."""
    n = len(labels)

    def d(i: int, j: int) -> torch.Tensor:
        diff = feats[i] - feats[j]
        if distance == "euclidean":
            return diff.pow(2).sum().sqrt()
        if distance == "squared":
            return diff.pow(2).sum()
        return 1 - (feats[i] @ feats[j]) / (feats[i].norm() * feats[j].norm())

    dm = [[d(i, j) if i != j else None for j in range(n)] for i in range(n)]
    if mining == "batch_all":
        gaps = [dm[a][p] - dm[a][q] for a, p, q in _triplets(np.asarray(labels))]
    else:
        gaps = []
        for a in range(n):
            pos = [dm[a][p] for p in range(n) if p != a and labels[p] == labels[a]]
            neg = [dm[a][q] for q in range(n) if labels[q] != labels[a]]
            if pos and neg:
                gaps.append(torch.stack(pos).max() - torch.stack(neg).min())
    if soft:
        return torch.stack([torch.nn.functional.softplus(g) for g in gaps]).mean()
    losses = [torch.relu(g + margin) for g in gaps]
    denom = sum(float(v.detach()) > 1e-16 for v in losses) if mining == "batch_all" else len(losses)
    return torch.stack(losses).sum() / denom


# --------------------------------------------------------------------------------------------
# triplet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_distance_matches_loop(distance: str) -> None:
    feats, _ = _batch((3, 3), seed=0)
    got = pairwise_distance(torch.from_numpy(feats), distance).numpy()
    want = np.array([[_dist(x, y, distance) for y in feats] for x in feats])
    off = ~np.eye(len(feats), dtype=bool)
    np.testing.assert_allclose(got[off], want[off], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.diag(got), 0.0, atol=1e-5)  # euclidean: sqrt(1e-12)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining,soft", [("batch_all", False), ("batch_all", True),
                                         ("batch_hard", False), ("batch_hard", True)])
@pytest.mark.parametrize("margin", [0.3, 1.0])
def test_triplet_matches_brute_force(distance: str, mining: str, soft: bool,
                                     margin: float) -> None:
    for seed, counts in enumerate(GROUPS):
        feats, labels = _batch(counts, seed)
        loss, stats = triplet_loss_with_stats(torch.from_numpy(feats), torch.from_numpy(labels),
                                              margin, mining, soft, distance)
        want, num_valid, num_pos = _brute_triplet(feats, labels, margin, mining, soft, distance)
        assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-12), (seed, counts)
        assert stats["num_valid"].item() == num_valid
        assert stats["num_positive"].item() == num_pos
        assert stats["frac_positive"].item() == pytest.approx(num_pos / num_valid)


def test_batch_all_has_both_positive_and_zero_triplets() -> None:
    """The brute-force comparison above covers the 'mean over positive triplets only' rule."""
    feats, labels = _batch(GROUPS[0], 0)
    _, stats = triplet_loss_with_stats(torch.from_numpy(feats), torch.from_numpy(labels), 0.3)
    assert 0 < stats["num_positive"] < stats["num_valid"]


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining,soft", [("batch_all", False), ("batch_all", True),
                                         ("batch_hard", False), ("batch_hard", True)])
def test_triplet_gradient_matches_brute_force(distance: str, mining: str, soft: bool) -> None:
    feats, labels = _batch((3, 2, 1, 2), seed=5, dim=4)
    x1 = torch.from_numpy(feats).requires_grad_()
    x2 = torch.from_numpy(feats).requires_grad_()
    triplet_loss(x1, torch.from_numpy(labels), 0.5, mining, soft, distance).backward()
    _torch_brute_triplet(x2, labels.tolist(), 0.5, mining, soft, distance).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("labels", [[4, 4, 4, 4], [1, 2, 3, 4], [7]])
def test_no_valid_triplet_gives_connected_zero(mining: str, soft: bool,
                                               labels: list[int]) -> None:
    x = torch.randn(len(labels), 6, requires_grad=True)
    loss, stats = triplet_loss_with_stats(x, torch.tensor(labels), mining=mining,
                                          soft_margin=soft)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert stats["num_valid"].item() == 0 and stats["frac_positive"].item() == 0.0


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
@pytest.mark.parametrize("soft", [False, True])
def test_identical_features_have_finite_gradients(distance: str, mining: str,
                                                  soft: bool) -> None:
    base = torch.randint(-3, 4, (1, 8)).float()  # integers: squared distances exactly 0
    # all identical, and duplicates within/between identities among distinct features
    for feats in (base.repeat(6, 1), torch.cat([base, base, base + 1, base + 1, base, base * 2])):
        x = feats.clone().requires_grad_()
        loss = triplet_loss(x, torch.tensor([0, 0, 1, 1, 2, 2]), mining=mining,
                            soft_margin=soft, distance=distance)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_triplet_float32_close_to_float64() -> None:
    feats, labels = _batch((4, 4, 4, 4), seed=3, dim=64)
    for mining in ("batch_all", "batch_hard"):
        l64 = triplet_loss(torch.from_numpy(feats), torch.from_numpy(labels), mining=mining)
        l32 = triplet_loss(torch.from_numpy(feats).float(), torch.from_numpy(labels),
                           mining=mining)
        assert l32.item() == pytest.approx(l64.item(), rel=1e-5)


def test_triplet_rejects_bad_input() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(x, y, mining="semi_hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distance"):
        triplet_loss(x, y, distance="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        triplet_loss(x, y[:3])
    with pytest.raises(ValueError, match="features"):
        triplet_loss(x[0], y)


# --------------------------------------------------------------------------------------------
# ID loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_id_loss_matches_smoothed_ce_formula(eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (7,), generator=g)
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        nll = [log_z - v for v in row]
        total += (1 - eps) * nll[y] + eps * sum(nll) / len(row)
    assert id_loss(logits, labels, eps).item() == pytest.approx(total / 7, rel=1e-12)


# --------------------------------------------------------------------------------------------
# attributes
# --------------------------------------------------------------------------------------------


def _attr_batch(b: int, seed: int, missing_frac: float = 0.0
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = {t.name: torch.randn(b, t.num_outputs, generator=g, dtype=torch.float64) * 2
              for t in TASKS}
    targets = torch.stack([torch.randint(0, t.num_classes, (b,), generator=g) for t in TASKS], 1)
    drop = torch.rand(b, NUM_TASKS, generator=g) < missing_frac
    return logits, targets.masked_fill(drop, MISSING)


def _brute_attr(logits: dict[str, torch.Tensor], targets: torch.Tensor,
                weights: list[float] | None = None,
                pos_weights: dict[str, float] | None = None) -> dict[str, float]:
    weights = weights or [1.0] * NUM_TASKS
    pos_weights = pos_weights or {}
    out: dict[str, float] = {}
    num, den = 0.0, 0.0
    for i, task in enumerate(TASKS):
        terms = []
        for row, y in zip(logits[task.name].tolist(), targets[:, i].tolist()):
            if y == MISSING:
                continue
            if task.is_binary:
                p = 1 / (1 + math.exp(-row[0]))
                pw = pos_weights.get(task.name, 1.0)
                terms.append(-(pw * y * math.log(p) + (1 - y) * math.log(1 - p)))
            else:
                terms.append(math.log(sum(math.exp(v) for v in row)) - row[y])
        out[f"attr/{task.name}"] = sum(terms) / len(terms) if terms else 0.0
        if terms:
            num += weights[i] * out[f"attr/{task.name}"]
            den += weights[i]
    out["attr"] = num / den if den else 0.0
    return out


def _assert_terms(got: dict[str, torch.Tensor], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dim() == 0
        assert got[key].item() == pytest.approx(value, rel=1e-10, abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("missing_frac", [0.0, 0.4])
def test_attribute_loss_matches_brute_force(seed: int, missing_frac: float) -> None:
    logits, targets = _attr_batch(9, seed, missing_frac)
    _assert_terms(attribute_loss(logits, targets), _brute_attr(logits, targets))


def test_attribute_loss_task_absent_from_batch_is_zero_and_excluded() -> None:
    logits, targets = _attr_batch(6, 3, 0.2)
    targets[:, TASK_NAMES.index("hat")] = MISSING
    targets[:, TASK_NAMES.index("upcolor")] = MISSING
    got = attribute_loss(logits, targets)
    assert got["attr/hat"].item() == 0.0 and got["attr/upcolor"].item() == 0.0
    present = [got[f"attr/{n}"] for n in TASK_NAMES if n not in ("hat", "upcolor")]
    assert got["attr"].item() == pytest.approx(sum(present).item() / 10, rel=1e-12)
    _assert_terms(got, _brute_attr(logits, targets))


def test_attribute_loss_all_missing_is_connected_zero() -> None:
    logits, targets = _attr_batch(4, 0)
    for v in logits.values():
        v.requires_grad_()
    got = attribute_loss(logits, torch.full_like(targets, MISSING))
    assert got["attr"].item() == 0.0
    got["attr"].backward()
    assert all(torch.equal(v.grad, torch.zeros_like(v)) for v in logits.values())


def test_attribute_loss_missing_samples_get_no_gradient() -> None:
    logits, targets = _attr_batch(5, 1)
    targets[2] = MISSING
    for v in logits.values():
        v.requires_grad_()
    attribute_loss(logits, targets)["attr"].backward()
    assert all(torch.equal(v.grad[2], torch.zeros_like(v.grad[2])) for v in logits.values())
    assert all(v.grad[0].abs().sum() > 0 for v in logits.values())


def test_attribute_loss_task_and_pos_weights() -> None:
    logits, targets = _attr_batch(10, 4, 0.3)
    weights = [float(w) for w in np.linspace(0.0, 2.0, NUM_TASKS)]
    pos = {"hat": 12.0, "bag": 0.5, "gender": 2.0}
    got = attribute_loss(logits, targets, task_weights=weights, pos_weights=pos)
    _assert_terms(got, _brute_attr(logits, targets, weights, pos))
    plain = attribute_loss(logits, targets)
    assert got["attr/hat"].item() != pytest.approx(plain["attr/hat"].item())
    assert got["attr/age"].item() == pytest.approx(plain["attr/age"].item())


def test_attribute_loss_rejects_bad_input() -> None:
    logits, targets = _attr_batch(3, 0)
    with pytest.raises(ValueError, match="hat"):
        attribute_loss({k: v for k, v in logits.items() if k != "hat"}, targets)
    with pytest.raises(ValueError, match="age"):
        attribute_loss({**logits, "age": logits["age"][:, :3]}, targets)
    bad = targets.clone()
    bad[1, TASK_NAMES.index("gender")] = 2
    with pytest.raises(ValueError, match="gender"):
        attribute_loss(logits, bad)
    with pytest.raises(ValueError, match="task_weights"):
        attribute_loss(logits, targets, task_weights=[1.0] * 11)
    with pytest.raises(ValueError, match="binary"):
        attribute_loss(logits, targets, pos_weights={"age": 2.0})


def test_positive_ratio_weights_on_toy_matrix() -> None:
    n = 20
    matrix = np.zeros((n, NUM_TASKS), dtype=np.int64)
    col = {name: TASK_NAMES.index(name) for name in TASK_NAMES}
    matrix[:5, col["backpack"]] = 1  # 5 pos / 15 neg -> 3
    matrix[:1, col["hat"]] = 1  # 1 / 19 -> clipped to 10
    matrix[:, col["clothes"]] = 1  # all positive -> 0 -> clipped to 1/10
    matrix[:10, col["gender"]] = 1
    matrix[10:16, col["gender"]] = MISSING  # 10 pos / 4 neg -> 0.4
    matrix[:, col["hair"]] = MISSING  # unknown everywhere -> no positive -> max
    matrix[:, col["age"]] = 3  # non-binary tasks are ignored
    got = positive_ratio_weights(torch.from_numpy(matrix), max_weight=10.0)
    assert set(got) == {t.name for t in TASKS if t.is_binary}
    assert got["backpack"] == pytest.approx(3.0)
    assert got["hat"] == 10.0
    assert got["clothes"] == pytest.approx(0.1)
    assert got["gender"] == pytest.approx(0.4)
    assert got["hair"] == 10.0
    assert got["bag"] == 10.0  # no positive at all
    assert positive_ratio_weights(matrix, max_weight=5.0, min_weight=1.0)["gender"] == 1.0


# --------------------------------------------------------------------------------------------
# multi-task weighting
# --------------------------------------------------------------------------------------------


def test_uncertainty_weighting_formula_and_gradients() -> None:
    w = UncertaintyWeighting()
    assert w.s0.item() == 0.0 and w.s1.item() == 0.0
    s0, s1, l_reid, l_attr = 0.3, -0.45, 2.7, 0.8
    with torch.no_grad():
        w.s0.fill_(s0)
        w.s1.fill_(s1)
    out = w(torch.tensor(l_reid), torch.tensor(l_attr))
    want = l_reid / (2 * math.exp(2 * s0)) + s0 + l_attr / math.exp(2 * s1) + s1
    assert out["total"].item() == pytest.approx(want, rel=1e-6)
    assert out["reid_weight"].item() == pytest.approx(1 / (2 * math.exp(2 * s0)), rel=1e-6)
    assert out["attr_weight"].item() == pytest.approx(math.exp(-2 * s1), rel=1e-6)
    assert out["s0"].item() == pytest.approx(s0) and out["s1"].item() == pytest.approx(s1)
    assert not out["reid_weight"].requires_grad and not out["s0"].requires_grad
    out["total"].backward()
    assert w.s0.grad.item() == pytest.approx(-l_reid * math.exp(-2 * s0) + 1, rel=1e-6)
    assert w.s1.grad.item() == pytest.approx(-2 * l_attr * math.exp(-2 * s1) + 1, rel=1e-6)


def test_fixed_weighting() -> None:
    w = FixedWeighting(0.7, 2.5)
    assert list(w.parameters()) == []
    out = w(torch.tensor(2.0), torch.tensor(3.0))
    assert out["total"].item() == pytest.approx(0.7 * 2 + 2.5 * 3)
    assert out["reid_weight"].item() == pytest.approx(0.7)
    assert out["attr_weight"].item() == pytest.approx(2.5)


def _output(b: int = 8, with_id: bool = True, seed: int = 0) -> tuple[ModelOutput, torch.Tensor,
                                                                        torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits, attrs = _attr_batch(b, seed, 0.2)
    feats = torch.randn(b, 16, generator=g, dtype=torch.float64)
    out = ModelOutput(
        embedding=feats.clone(),
        triplet_features=feats.requires_grad_(),
        attribute_logits={k: v.requires_grad_() for k, v in logits.items()},
        id_logits=torch.randn(b, 5, generator=g, dtype=torch.float64).requires_grad_()
        if with_id else None,
    )
    return out, torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])[:b], attrs


ATTR_KEYS = {"attr"} | {f"attr/{n}" for n in TASK_NAMES}


def test_multitask_uncertainty_total_matches_hand_combination() -> None:
    out, labels, attrs = _output()
    loss_fn = MultiTaskLoss(id_weight=0.5, label_smoothing=0.2, triplet_weight=2.0)
    with torch.no_grad():
        loss_fn.weighting.s0.fill_(0.2)
        loss_fn.weighting.s1.fill_(-0.1)
    got = loss_fn(out, labels, attrs)
    assert set(got) == {"loss", "reid", "triplet", "triplet/frac_positive", "id", "reid_weight",
                        "attr_weight", "s0", "s1"} | ATTR_KEYS
    assert all(v.dim() == 0 for v in got.values())
    trip = triplet_loss(out.triplet_features, labels)
    ident = id_loss(out.id_logits, labels, 0.2)
    attr = attribute_loss(out.attribute_logits, attrs)["attr"]
    reid = 2.0 * trip + 0.5 * ident
    want = reid / (2 * math.exp(0.4)) + 0.2 + attr / math.exp(-0.2) - 0.1
    assert got["triplet"].item() == pytest.approx(trip.item())
    assert got["id"].item() == pytest.approx(ident.item())
    assert got["reid"].item() == pytest.approx(reid.item())
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    got["loss"].backward()
    assert out.triplet_features.grad is not None and out.id_logits.grad is not None
    assert all(p.grad is not None for p in loss_fn.parameters())


def test_multitask_fixed_without_id_head() -> None:
    out, labels, attrs = _output(with_id=False)
    loss_fn = MultiTaskLoss(weighting="fixed", reid_weight=0.3, attr_weight=1.7,
                            triplet_mining="batch_hard", soft_margin=True,
                            pos_weights={"hat": 5.0})
    assert list(loss_fn.parameters()) == []
    got = loss_fn(out, labels, attrs)
    assert "id" not in got and "s0" not in got
    trip = triplet_loss(out.triplet_features, labels, mining="batch_hard", soft_margin=True)
    attr = attribute_loss(out.attribute_logits, attrs, pos_weights={"hat": 5.0})["attr"]
    assert got["reid"].item() == pytest.approx(trip.item())
    assert got["loss"].item() == pytest.approx(0.3 * trip.item() + 1.7 * attr.item())


def test_multitask_id_weight_zero_skips_id_loss() -> None:
    out, labels, attrs = _output()
    got = MultiTaskLoss(id_weight=0.0)(out, labels, attrs)
    assert "id" not in got
    assert got["reid"].item() == pytest.approx(got["triplet"].item())


def test_multitask_does_not_hide_nan() -> None:
    out, labels, attrs = _output()
    with torch.no_grad():
        out.attribute_logits["age"][0, 0] = float("nan")
    attrs[0, TASK_NAMES.index("age")] = 1
    assert torch.isnan(MultiTaskLoss()(out, labels, attrs)["loss"])
    out, labels, attrs = _output()
    with torch.no_grad():
        out.triplet_features[1, 3] = float("inf")
    assert not torch.isfinite(MultiTaskLoss()(out, labels, attrs)["loss"])


def test_multitask_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="weighting"):
        MultiTaskLoss(weighting="gradnorm")
    with pytest.raises(ValueError, match="triplet_mining"):
        MultiTaskLoss(triplet_mining="semi_hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distance"):
        MultiTaskLoss(distance="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="binary"):
        MultiTaskLoss(pos_weights={"upcolor": 2.0})
