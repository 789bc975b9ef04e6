"""What the synthetic pedestrians and cameras look like, as numbers (no pixels here).

Every identity gets 12 task labels (see :mod:`attreid.schema`) sampled with rough Market-1501
priors (:func:`sample_labels`), and a look that goes with them: the named colours shaded, and
details no attribute names (top pattern, build, height, skin tone, hair, shoe, hat and bag
colours). The six cameras have fixed settings (background, light, colour cast, blur, scale,
viewpoint, occlusion), and each image samples a pose from its camera's. :mod:`drawing` and
:mod:`camera` paint them; :mod:`synth` plans and writes the dataset.

Randomness is explicit: every generator comes from :func:`_rng` seeded with ``(seed, purpose,
...)``, the purposes listed here so that they stay distinct; identity ``pid`` draws its labels and
look from ``(seed, purpose, kind, pid)``, so an identity looks the same whatever the image counts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from attreid.schema import DOWN_COLORS, TASK_NAMES, UP_COLORS

RGB = tuple[int, int, int]

NUM_CAMERAS = 6

COLOURS: dict[str, RGB] = {
    "black": (28, 28, 32), "white": (232, 232, 226), "red": (196, 32, 36),
    "purple": (118, 52, 150), "yellow": (228, 198, 44), "gray": (128, 128, 128),
    "blue": (38, 68, 168), "green": (40, 138, 62), "pink": (238, 148, 180),
    "brown": (118, 74, 40),
}
"""RGB of the named colours of the schema."""

# Priors in task-label order (eight / nine colours, then multicolour).
_UP_PRIOR = np.array([0.22, 0.22, 0.08, 0.05, 0.06, 0.12, 0.10, 0.05, 0.10])
_DOWN_PRIOR = np.array([0.34, 0.06, 0.03, 0.03, 0.02, 0.13, 0.25, 0.05, 0.04, 0.05])
_AGE_PRIOR = np.array([0.04, 0.26, 0.62, 0.08])
_SKINS: tuple[RGB, ...] = ((238, 204, 178), (222, 180, 148), (196, 150, 112), (150, 104, 72),
                           (110, 74, 50))
_HAIRS: tuple[RGB, ...] = ((22, 18, 16), (48, 32, 22), (92, 60, 34), (170, 130, 70))
_GREY_HAIRS: tuple[RGB, ...] = ((178, 178, 176), (210, 208, 204), (140, 138, 136))
_SHOES: tuple[RGB, ...] = ((20, 20, 22), (226, 226, 226), (96, 60, 34), (90, 90, 96))
_PACKS: tuple[RGB, ...] = ((30, 30, 34), (36, 42, 70), (58, 40, 30), (70, 24, 28), (46, 56, 46))
_BAGS: tuple[RGB, ...] = ((70, 44, 26), (24, 24, 26), (190, 168, 128), (150, 30, 40))
_HATS: tuple[RGB, ...] = ((24, 24, 28), (230, 230, 226), (180, 36, 36), (40, 60, 150),
                          (200, 170, 110))

# Purposes of the derived generators: (seed, purpose, ...).
_P_CAMERA, _P_LABELS, _P_LOOK, _P_PLAN, _P_SHOT, _P_ORDER = range(6)


@dataclass(frozen=True)
class _Camera:
    """Fixed look of one camera."""

    wall: RGB
    ground: RGB
    texture: str
    horizon: float  # fraction of the height where the ground starts
    gain: float
    cast: tuple[float, float, float]
    blur: float
    scale: float
    shift: float  # fraction of the width
    mirror_p: float
    front_p: float
    occlude_p: float


_CAMERAS: tuple[_Camera, ...] = (
    _Camera((150, 150, 146), (112, 110, 106), "tiles", 0.62, 1.00, (1.0, 1.0, 1.0), 0.0,
            1.00, 0.00, 0.30, 0.60, 0.10),
    _Camera((86, 120, 70), (120, 116, 100), "foliage", 0.66, 1.12, (1.06, 1.0, 0.92), 0.3,
            0.96, 0.03, 0.70, 0.45, 0.15),
    _Camera((128, 70, 56), (92, 86, 82), "bricks", 0.70, 0.80, (0.94, 1.0, 1.08), 0.6,
            0.92, -0.02, 0.50, 0.55, 0.10),
    _Camera((206, 196, 172), (160, 150, 130), "panels", 0.64, 1.04, (1.0, 1.0, 1.0), 0.0,
            0.90, 0.05, 0.20, 0.40, 0.20),
    _Camera((104, 124, 146), (84, 88, 96), "glass", 0.60, 0.90, (0.92, 0.98, 1.10), 0.8,
            0.86, -0.04, 0.80, 0.65, 0.15),
    _Camera((176, 166, 120), (130, 128, 120), "road", 0.68, 1.15, (1.10, 1.04, 0.90), 0.4,
            0.95, -0.05, 0.45, 0.50, 0.25),
)


@dataclass(frozen=True)
class _Look:
    """Identity appearance that no attribute names, with the attribute colours shaded."""

    skin: RGB
    hair: RGB
    top: tuple[RGB, ...]  # one colour, or 2-3 for multicolour
    bottom: tuple[RGB, ...]
    pattern: str  # plain, stripes, dots, logo
    pattern_colour: RGB
    multi_style: int
    shoes: RGB
    hat: RGB
    hat_style: int
    pack: RGB
    bag: RGB
    build: float
    height: float
    bag_side: int


@dataclass(frozen=True)
class _Person:
    """One identity to draw: its 12 task labels and its look."""

    labels: tuple[int, ...]
    look: _Look

    def __getitem__(self, task: str) -> int:
        return self.labels[TASK_NAMES.index(task)]


@dataclass(frozen=True)
class _Pose:
    """Per-image variation of a person drawing."""

    dx: float
    dy: float
    scale: float
    stride: float
    swing: float
    front: bool
    mirror: bool


def _rng(seed: int, *key: int) -> np.random.Generator:
    """A generator derived from the seed and a key; independent across keys."""
    return np.random.default_rng([seed, len(key), *key])  # len: keeps (a,) and (a, 0) apart


def _pick(rng: np.random.Generator, options: Sequence[RGB]) -> RGB:
    return options[int(rng.integers(len(options)))]


def _shade(rng: np.random.Generator, colour: RGB, spread: float = 0.12) -> RGB:
    """Jitter a colour's brightness and hue a little."""
    factor = rng.uniform(1.0 - spread, 1.0 + spread * 0.7)
    r, g, b = np.clip(np.asarray(colour) * factor + rng.integers(-12, 13, size=3), 0, 255)
    return (int(r), int(g), int(b))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    """Blend colour ``a`` towards ``b`` by ``t`` (0..1)."""
    r, g, b_ = (int(round(x + (y - x) * t)) for x, y in zip(a, b))
    return (r, g, b_)


# ---------------------------------------------------------------- identities


def sample_labels(rng: np.random.Generator) -> tuple[int, ...]:
    """Draw 12 task labels with rough Market-1501 priors.

    Returns:
        labels in the order of :data:`attreid.schema.TASK_NAMES`.
    """
    female = int(rng.random() < 0.5)
    dress = rng.random() < (0.22 if female else 0.01)
    values = {
        "age": int(rng.choice(4, p=_AGE_PRIOR)),
        "backpack": int(rng.random() < 0.25),
        "bag": int(rng.random() < (0.30 if female else 0.18)),
        "handbag": int(rng.random() < (0.15 if female else 0.06)),
        "clothes": 0 if dress else 1,
        "down": int(rng.random() < (0.45 if dress else 0.28)),
        "up": int(rng.random() < 0.68),
        "hair": int(rng.random() < (0.75 if female else 0.07)),
        "hat": int(rng.random() < 0.10),
        "gender": female,
        "upcolor": int(rng.choice(len(_UP_PRIOR), p=_UP_PRIOR / _UP_PRIOR.sum())),
        "downcolor": int(rng.choice(len(_DOWN_PRIOR), p=_DOWN_PRIOR / _DOWN_PRIOR.sum())),
    }
    return tuple(values[name] for name in TASK_NAMES)


def _garment_colours(rng: np.random.Generator, label: int,
                     names: Sequence[str]) -> tuple[RGB, ...]:
    """Shaded colour(s) of a garment: the named colour, or 2-3 distinct ones for multicolour."""
    if label < len(names):
        return (_shade(rng, COLOURS[names[label]]),)
    count = int(rng.integers(2, 4))
    chosen = rng.choice(len(names), size=count, replace=False)
    return tuple(_shade(rng, COLOURS[names[int(i)]]) for i in chosen)


def _sample_look(rng: np.random.Generator, labels: Sequence[int]) -> _Look:
    """Draw the identity details that go with the given labels."""
    age = labels[TASK_NAMES.index("age")]
    top = _garment_colours(rng, labels[TASK_NAMES.index("upcolor")], UP_COLORS)
    pattern = str(rng.choice(["plain", "plain", "stripes", "dots", "logo"]))
    contrast = _mix(top[0], (255, 255, 255) if sum(top[0]) < 330 else (0, 0, 0), 0.22)
    logo = _shade(rng, COLOURS[str(rng.choice(list(COLOURS)))])
    return _Look(
        skin=_shade(rng, _pick(rng, _SKINS), 0.06),
        hair=_shade(rng, _pick(rng, _GREY_HAIRS if age == 3 else _HAIRS), 0.08),
        top=top,
        bottom=_garment_colours(rng, labels[TASK_NAMES.index("downcolor")], DOWN_COLORS),
        pattern=pattern,
        pattern_colour=logo if pattern == "logo" else contrast,
        multi_style=int(rng.integers(3)),
        shoes=_shade(rng, _pick(rng, _SHOES), 0.08),
        hat=_shade(rng, _pick(rng, _HATS)),
        hat_style=int(rng.integers(3)),
        pack=_shade(rng, _pick(rng, _PACKS), 0.1),
        bag=_shade(rng, _pick(rng, _BAGS)),
        build=float(rng.uniform(0.88, 1.14)),
        height=float(rng.uniform(0.92, 1.05)),
        bag_side=int(rng.choice([-1, 1])),
    )


@functools.lru_cache(maxsize=4096)
def _person(seed: int, kind: int, number: int) -> _Person:
    """The identity ``number`` of a kind (persons by pid; distractors and junk by index)."""
    labels = sample_labels(_rng(seed, _P_LABELS, kind, number))
    return _Person(labels, _sample_look(_rng(seed, _P_LOOK, kind, number), labels))



def _sample_pose(rng: np.random.Generator, camera: _Camera) -> _Pose:
    return _Pose(
        dx=float(rng.uniform(-0.06, 0.06)), dy=float(rng.uniform(-0.03, 0.02)),
        scale=float(rng.uniform(0.94, 1.05)), stride=float(rng.uniform(-1.2, 2.4)),
        swing=float(rng.uniform(-0.6, 1.6)), front=bool(rng.random() < camera.front_p),
        mirror=bool(rng.random() < camera.mirror_p),
    )
