"""A deterministic synthetic pedestrian dataset in the Market-1501 or course layout.

Every identity gets 12 task labels (see :mod:`attreid.schema`) sampled with rough Market-1501
priors, and the labels are drawn so that they can be seen: hair length, hat, sleeve length,
lower-body length, dress or pants, backpack, shoulder bag, handbag, upper and lower colour,
gender (shoulders and hips) and age (size, grey hair, stoop). Identities also differ in details no
attribute names (colour shades, top pattern, build, height, skin tone, hair and shoe colour), and
the six cameras differ in background, light, colour cast, blur, scale, viewpoint and occlusion.

The split follows Market-1501: half of the identities (rounded down) train, the others test; a
test identity has one query image per camera it is seen in (two or more cameras) and several
gallery images on each of them; the gallery also holds distractors (id 0) and junk (id -1).

Randomness is explicit: identity ``pid`` draws its labels and look from generators seeded with
``(seed, purpose, pid)``, every image from ``(seed, purpose, pid, index)``, so the same seed gives
byte-identical files and an identity looks the same whatever the image counts.
"""

from __future__ import annotations

import csv
import functools
import io
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import scipy.io
from PIL import Image, ImageDraw, ImageFilter

from attreid.data.records import DISTRACTOR_ID, JUNK_ID
from attreid.schema import (
    CSV_COLUMNS,
    DOWN_COLORS,
    RAW_ATTRIBUTES,
    TASK_NAMES,
    UP_COLORS,
    tasks_to_raw,
)

RGB = tuple[int, int, int]

LAYOUTS: tuple[str, ...] = ("market", "course")
MIN_IDS = 4
MAX_PID = 9999
NUM_CAMERAS = 6
JPEG_QUALITY = 90

MAT_TRAIN_ORDER: tuple[str, ...] = (
    "age", "backpack", "bag", "handbag",
    "downblack", "downblue", "downbrown", "downgray", "downgreen", "downpink", "downpurple",
    "downwhite", "downyellow",
    "upblack", "upblue", "upgreen", "upgray", "uppurple", "upred", "upwhite", "upyellow",
    "clothes", "down", "up", "hair", "hat", "gender", "image_index",
)
"""Field order of ``market_attribute.train`` in the real Market-1501_Attribute file."""

MAT_TEST_ORDER: tuple[str, ...] = (
    "age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender",
    "upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen",
    "downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray", "downblue",
    "downgreen", "downbrown", "image_index",
)
"""Field order of ``market_attribute.test`` in the real Market-1501_Attribute file."""

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
_KIND_PERSON, _KIND_DISTRACTOR, _KIND_JUNK = 0, 1, 2


@dataclass(frozen=True)
class SynthInfo:
    """What :func:`generate` wrote.

    Attributes:
        out: the output folder.
        layout: ``"market"`` or ``"course"``.
        seed: the seed used.
        train_ids: number of training identities.
        test_ids: number of test identities.
        images: folder name -> number of images written there (course duplicates included).
    """

    out: Path
    layout: str
    seed: int
    train_ids: int
    test_ids: int
    images: dict[str, int]


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
class _Shot:
    """One image to write: who, where and under which name parts."""

    split: str  # train, query, gallery
    pid: int
    camid: int
    seq: int
    frame: int
    box: int
    kind: int
    key: int  # index of the image among its identity's (or kind's) images


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


@dataclass(frozen=True)
class _Frame:
    """Body geometry of one drawing, in canvas pixels; ``u`` is 1/100 of the person height."""

    cx: float
    y0: float
    u: float
    sw: float  # shoulder half-width in u
    ww: float  # waist half-width in u
    hw: float  # hip half-width in u
    head: float  # head scale
    stoop: float  # lean of the head and shoulders in u (old age)
    drop: float  # how much lower the head sits in u (old age stoop)

    def p(self, x: float, y: float) -> tuple[float, float]:
        """Canvas point of body coordinates (x, y) in units ``u``."""
        lean = self.stoop * max(0.0, 1.0 - y / 40.0)
        return (self.cx + (x + lean) * self.u, self.y0 + y * self.u)

    def w(self, units: float) -> int:
        """A line width of ``units`` u in whole pixels (at least 1)."""
        return max(1, int(round(units * self.u)))


@dataclass(frozen=True)
class _Plan:
    """All identities and images of one dataset."""

    train_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    shots: tuple[_Shot, ...]


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


# ---------------------------------------------------------------- drawing

_Painter = Callable[[ImageDraw.ImageDraw], None]
_Points = list[tuple[float, float]]


def _fill(canvas: Image.Image, shapes: Sequence[_Points], paint: _Painter) -> None:
    """Paint a pattern over a copy of the canvas and paste it inside the given polygons only."""
    layer = canvas.copy()
    paint(ImageDraw.Draw(layer))
    mask = Image.new("L", canvas.size, 0)
    mask_draw = ImageDraw.Draw(mask)
    for shape in shapes:
        mask_draw.polygon(shape, fill=255)
    canvas.paste(layer, (0, 0), mask)


def _bands(colours: Sequence[RGB], top: float, bottom: float, step: float) -> _Painter:
    """A painter of horizontal bands cycling through the colours (multicolour garments)."""

    def paint(d: ImageDraw.ImageDraw) -> None:
        y, i = top, 0
        while y < bottom:
            d.rectangle([0, y, d.im.size[0], y + step], fill=colours[i % len(colours)])
            y, i = y + step, i + 1

    return paint


def _garment(canvas: Image.Image, shapes: Sequence[_Points], colours: Sequence[RGB],
             f: _Frame) -> None:
    """Fill garment polygons with one colour, or with bands of 2-3 colours."""
    if len(colours) == 1:
        d = ImageDraw.Draw(canvas)
        for shape in shapes:
            d.polygon(shape, fill=colours[0])
        return
    top = min(y for shape in shapes for _, y in shape)
    bottom = max(y for shape in shapes for _, y in shape)
    _fill(canvas, shapes, _bands(colours, top, bottom, max(2.0, 6.0 * f.u)))


def _draw_legs(canvas: Image.Image, f: _Frame, person: _Person, pose: _Pose) -> None:
    """Skin of the legs, shorts / pants (two legs) or a skirt (trapezoid), and shoes."""
    d, look = ImageDraw.Draw(canvas), person.look
    short, dress = person["down"] == 1, person["clothes"] == 0
    legs: list[_Points] = []
    for side in (-1, 1):
        ax = side * 3.3 + pose.stride * side
        top = [f.p(side * f.hw, 46), f.p(side * 0.5, 51)]
        knee = [f.p(ax + side * 2.9, 70), f.p(ax - side * 2.0, 70)]
        ankle = [f.p(ax + side * 2.2, 95), f.p(ax - side * 1.6, 95)]
        d.polygon([f.p(ax + side * 2.6, 64), ankle[0], ankle[1], f.p(ax - side * 1.8, 64)],
                  fill=look.skin)
        lower = [knee[0], knee[1]] if short else [knee[0], ankle[0], ankle[1], knee[1]]
        legs.append([top[0], *lower, top[1]])
        shoe = f.p(ax + side * 0.3, 97)
        d.ellipse([shoe[0] - 2.8 * f.u, shoe[1] - 2.2 * f.u, shoe[0] + 2.8 * f.u,
                   shoe[1] + 2.2 * f.u], fill=look.shoes)
    legs.append([f.p(-f.hw, 46), f.p(f.hw, 46), f.p(0.5, 52), f.p(-0.5, 52)])  # crotch
    if dress:
        hem = 64 if short else 90
        legs = [[f.p(-f.ww, 38), f.p(f.ww, 38), f.p(f.hw * 1.55, hem), f.p(-f.hw * 1.55, hem)]]
    _garment(canvas, legs, look.bottom, f)


def _torso_polygon(f: _Frame, person: _Person) -> _Points:
    bottom = 40 if person["clothes"] == 0 else 48
    return [f.p(-f.sw + 1.5, 15), f.p(f.sw - 1.5, 15), f.p(f.sw, 17), f.p(f.sw - 0.8, 24),
            f.p(f.ww, 36), f.p(f.hw, bottom), f.p(-f.hw, bottom), f.p(-f.ww, 36),
            f.p(-f.sw + 0.8, 24), f.p(-f.sw, 17)]


def _top_painter(f: _Frame, look: _Look, front: bool) -> _Painter | None:
    """The top's pattern: stripes, dots, a chest logo, or multicolour blocks."""
    colours, extra = look.top, look.pattern_colour
    if len(colours) > 1:
        return _multicolour_painter(f, look)
    if look.pattern == "stripes":
        def stripes(d: ImageDraw.ImageDraw) -> None:
            for y in range(20, 48, 6):
                d.rectangle([*f.p(-20, y), *f.p(20, y + 1.8)], fill=extra)
        return stripes
    if look.pattern == "dots":
        def dots(d: ImageDraw.ImageDraw) -> None:
            r = 0.7 * f.u
            for y in range(20, 46, 6):
                for x in range(-10, 11, 5):
                    cx, cy = f.p(x + (y % 4) * 1.2, y)
                    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=extra)
        return dots
    if look.pattern == "logo" and front:
        return lambda d: d.rectangle([*f.p(-3, 23), *f.p(3, 29)], fill=extra)
    return None


def _multicolour_painter(f: _Frame, look: _Look) -> _Painter:
    """Stripes, vertical halves or patches of the top's 2-3 colours."""
    colours = look.top

    def paint(d: ImageDraw.ImageDraw) -> None:
        if look.multi_style == 0:
            _bands(colours, f.p(0, 15)[1], f.p(0, 48)[1], 5 * f.u)(d)
        elif look.multi_style == 1:
            d.rectangle([*f.p(-20, 10), *f.p(0, 50)], fill=colours[0])
            d.rectangle([*f.p(0, 10), *f.p(20, 50)], fill=colours[1])
            d.rectangle([*f.p(-20, 31), *f.p(20, 38)], fill=colours[-1])
        else:
            d.rectangle([*f.p(-20, 10), *f.p(20, 50)], fill=colours[0])
            d.rectangle([*f.p(-20, 10), *f.p(20, 26)], fill=colours[1])
            d.polygon([f.p(-5, 31), f.p(5, 29), f.p(7, 42), f.p(-6, 44)], fill=colours[-1])

    return paint


def _draw_torso(canvas: Image.Image, f: _Frame, person: _Person, pose: _Pose) -> None:
    """The top: plain, patterned, or 2-3 colour blocks for multicolour."""
    outline = _torso_polygon(f, person)
    ImageDraw.Draw(canvas).polygon(outline, fill=person.look.top[0])
    painter = _top_painter(f, person.look, pose.front)
    if painter is not None:
        _fill(canvas, [outline], painter)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _hand(f: _Frame, pose: _Pose, side: int) -> tuple[float, float]:
    return f.p(side * (f.sw + 0.9 + pose.swing), 48)


def _draw_arms(canvas: Image.Image, f: _Frame, person: _Person, pose: _Pose) -> None:
    """Arms: sleeves in the top colour, full length (long) or upper arm only (short)."""
    d, look = ImageDraw.Draw(canvas), person.look
    sleeve = look.top[-1]
    width = f.w(3.4 * (0.88 if person["gender"] else 1.0) * look.build)
    for side in (-1, 1):
        shoulder = f.p(side * (f.sw - 1.4), 18)
        elbow = f.p(side * (f.sw + 0.6 + pose.swing * 0.4), 33)
        hand = _hand(f, pose, side)
        d.line([shoulder, elbow, hand], fill=look.skin, width=width, joint="curve")
        if person["up"] == 0:
            d.line([shoulder, elbow, _lerp(elbow, hand, 0.85)], fill=sleeve, width=width + 1,
                   joint="curve")
        else:
            d.line([shoulder, _lerp(shoulder, elbow, 0.5)], fill=sleeve, width=width + 2)
        r = 1.9 * f.u
        d.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=look.skin)


def _head_box(f: _Frame, grow: float = 0.0) -> list[float]:
    cx, cy = f.p(0, 7.0 + f.drop)
    rx, ry = (4.4 + grow) * f.head * f.u, (5.8 + grow) * f.head * f.u
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def _draw_head(canvas: Image.Image, f: _Frame, person: _Person, pose: _Pose) -> None:
    """Neck, long hair behind, face (front) or back of the head, hair cap and hat."""
    d, look, long_hair = ImageDraw.Draw(canvas), person.look, person["hair"] == 1
    d.rectangle([*f.p(-1.6, 11), *f.p(1.6, 16)], fill=look.skin)
    box, grown = _head_box(f), _head_box(f, 0.7)
    if long_hair and pose.front:
        d.polygon([(grown[0], grown[1] + 4 * f.u), (grown[2], grown[1] + 4 * f.u),
                   f.p(6.2 * f.head, 24), f.p(-6.2 * f.head, 24)], fill=look.hair)
    if pose.front:
        d.ellipse(box, fill=look.skin)
        start, end = (172, 368) if long_hair else (186, 354)  # long hair frames the face
        d.chord(grown, start, end, fill=look.hair)
    else:
        d.ellipse(_head_box(f, 0.4), fill=look.hair)
        if long_hair:
            d.polygon([f.p(-5.0 * f.head, 8), f.p(5.0 * f.head, 8), f.p(5.8 * f.head, 30),
                       f.p(-5.8 * f.head, 30)], fill=look.hair)
    if person["hat"] == 1:
        _draw_hat(d, f, look)


def _draw_hat(d: ImageDraw.ImageDraw, f: _Frame, look: _Look) -> None:
    """Cap, bucket hat or beanie on top of the head."""
    x0, y0, x1, y1 = _head_box(f, 0.8)
    w, h = x1 - x0, y1 - y0
    if look.hat_style == 0:  # cap with a brim
        d.chord([x0, y0 - 0.06 * h, x1, y1 - 0.2 * h], 180, 360, fill=look.hat)
        d.rectangle([x0 - 0.2 * w, y0 + 0.3 * h, x1 + 0.05 * w, y0 + 0.4 * h], fill=look.hat)
    elif look.hat_style == 1:  # bucket hat with a wide brim
        d.rectangle([x0 + 0.1 * w, y0 - 0.14 * h, x1 - 0.1 * w, y0 + 0.32 * h], fill=look.hat)
        d.ellipse([x0 - 0.25 * w, y0 + 0.24 * h, x1 + 0.25 * w, y0 + 0.42 * h], fill=look.hat)
    else:  # beanie, pulled low
        d.chord([x0, y0 - 0.12 * h, x1, y1 + 0.02 * h], 180, 360, fill=look.hat)
        d.rectangle([x0, y0 + 0.36 * h, x1, y0 + 0.5 * h], fill=_mix(look.hat, (0, 0, 0), 0.3))


def _draw_pack_behind(canvas: Image.Image, f: _Frame, person: _Person, pose: _Pose) -> None:
    """A backpack seen from the front: its sides stick out behind the shoulders."""
    if person["backpack"] == 1 and pose.front:
        ImageDraw.Draw(canvas).rounded_rectangle(
            [*f.p(-f.sw - 1.8, 16), *f.p(f.sw + 1.8, 43)], radius=f.w(2), fill=person.look.pack)


def _draw_backpack(d: ImageDraw.ImageDraw, f: _Frame, look: _Look, front: bool) -> None:
    """Straps seen from the front, a dark block from behind."""
    if front:
        for side in (-1, 1):
            d.line([f.p(side * (f.sw - 3.2), 15), f.p(side * (f.sw - 3.6), 35)],
                   fill=look.pack, width=f.w(1.6))
        return
    d.rounded_rectangle([*f.p(-f.sw + 1.4, 17), *f.p(f.sw - 1.4, 45)], radius=f.w(2.5),
                        fill=look.pack)
    d.line([f.p(-f.sw + 2.5, 31), f.p(f.sw - 2.5, 31)], fill=_mix(look.pack, (0, 0, 0), 0.4),
           width=f.w(0.8))


def _draw_carried(canvas: Image.Image, f: _Frame, person: _Person, pose: _Pose) -> None:
    """Backpack, shoulder bag (strap across the body, bag at the hip) and handbag (in hand)."""
    d, look, side = ImageDraw.Draw(canvas), person.look, person.look.bag_side
    if person["backpack"] == 1:
        _draw_backpack(d, f, look, pose.front)
    if person["bag"] == 1:
        d.line([f.p(-side * (f.sw - 2.5), 16), f.p(side * (f.hw + 1.5), 44)],
               fill=_mix(look.bag, (0, 0, 0), 0.3), width=f.w(1.0))
        (xa, ya), (xb, yb) = f.p(side * (f.hw - 1.0), 41), f.p(side * (f.hw + 6.0), 52)
        d.rounded_rectangle([min(xa, xb), ya, max(xa, xb), yb], radius=f.w(1.2), fill=look.bag)
    if person["handbag"] == 1:
        hx, hy = _hand(f, pose, -side)
        w, h = 2.6 * f.u, 7.0 * f.u
        d.arc([hx - 1.6 * f.u, hy - 1.0 * f.u, hx + 1.6 * f.u, hy + 3.0 * f.u], 180, 360,
              fill=_mix(look.bag, (0, 0, 0), 0.4), width=f.w(0.6))
        d.rectangle([hx - w, hy + 1.0 * f.u, hx + w, hy + h], fill=_mix(look.bag, look.hat, 0.3))


def _frame(person: _Person, pose: _Pose, camera: _Camera, size: tuple[int, int]) -> _Frame:
    """Place the body on a canvas of ``size`` (width, height)."""
    cw, ch = size
    age, female, look = person["age"], person["gender"] == 1, person.look
    age_height = (0.74, 0.94, 1.0, 0.97)[age]
    height = ch * 0.86 * camera.scale * pose.scale * look.height * age_height
    foot = ch * 0.975 + pose.dy * ch
    slim = look.build * (0.9 if age == 0 else 1.0)
    return _Frame(
        cx=cw * (0.5 + camera.shift + pose.dx), y0=foot - height, u=height / 100.0,
        sw=(9.4 if female else 11.6) * slim, ww=(7.0 if female else 8.6) * slim,
        hw=(9.6 if female else 8.2) * slim, head=1.16 if age == 0 else 1.0,
        stoop=1.4 if age == 3 else 0.0, drop=1.8 if age == 3 else 0.0,
    )


def _draw_person(canvas: Image.Image, person: _Person, pose: _Pose, camera: _Camera) -> None:
    """Draw one pedestrian on the canvas, back to front."""
    f = _frame(person, pose, camera, canvas.size)
    for part in (_draw_pack_behind, _draw_legs, _draw_torso, _draw_arms, _draw_head,
                 _draw_carried):
        part(canvas, f, person, pose)


# ---------------------------------------------------------------- cameras and images


def _background(seed: int, cam: int, size: tuple[int, int]) -> Image.Image:
    """A camera's scene, larger than an image so each image can crop it at an offset."""
    camera, rng = _CAMERAS[cam - 1], _rng(seed, _P_CAMERA, cam)
    w, h = size
    img = Image.new("RGB", size, camera.wall)
    d = ImageDraw.Draw(img)
    _TEXTURES[camera.texture](d, rng, camera, size)
    horizon = int(h * camera.horizon)
    d.rectangle([0, horizon, w, h], fill=camera.ground)
    for y in range(horizon + 6, h, 14):
        d.line([0, y, w, y + int(rng.integers(-3, 4))], fill=_mix(camera.ground, (0, 0, 0), 0.15))
    pixels = np.asarray(img, dtype=np.float32)
    pixels += rng.normal(0.0, 5.0, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _tex_tiles(d: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera,
               size: tuple[int, int]) -> None:
    for y in range(0, size[1], 18):
        d.line([0, y, size[0], y], fill=_mix(cam.wall, (255, 255, 255), 0.2), width=2)
    for x in range(int(rng.integers(20)), size[0], 36):
        d.line([x, 0, x, size[1]], fill=_mix(cam.wall, (0, 0, 0), 0.15), width=2)


def _tex_foliage(d: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera,
                 size: tuple[int, int]) -> None:
    for _ in range(40):
        x, y, r = rng.uniform(0, size[0]), rng.uniform(0, size[1] * 0.7), rng.uniform(6, 22)
        shade = _mix(cam.wall, (0, 0, 0) if rng.random() < 0.5 else (200, 230, 150), 0.3)
        d.ellipse([x - r, y - r, x + r, y + r], fill=shade)
    for x in rng.uniform(0, size[0], size=3):
        d.rectangle([x, size[1] * 0.3, x + 8, size[1]], fill=(70, 52, 36))


def _tex_bricks(d: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera,
                size: tuple[int, int]) -> None:
    mortar = _mix(cam.wall, (200, 200, 200), 0.5)
    for row, y in enumerate(range(0, size[1], 10)):
        d.line([0, y, size[0], y], fill=mortar, width=2)
        for x in range((row % 2) * 12, size[0], 24):
            d.line([x, y, x, y + 10], fill=mortar, width=2)


def _tex_panels(d: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera,
                size: tuple[int, int]) -> None:
    for x in range(0, size[0], 60):
        d.rectangle([x + 6, 30, x + 44, size[1] * 0.6], outline=_mix(cam.wall, (0, 0, 0), 0.25),
                    width=3)
    x = float(rng.uniform(0, size[0] - 50))
    d.rectangle([x, size[1] * 0.2, x + 46, size[1] * 0.64], fill=(96, 70, 50))


def _tex_glass(d: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera,
               size: tuple[int, int]) -> None:
    for x in range(0, size[0], 40):
        d.line([x, 0, x, size[1]], fill=(60, 66, 72), width=4)
    for y in range(0, size[1], 50):
        d.line([0, y, size[0], y], fill=(60, 66, 72), width=3)
    for _ in range(6):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1] * 0.5)
        d.line([x, y, x + 30, y + 40], fill=_mix(cam.wall, (255, 255, 255), 0.35), width=3)


def _tex_road(d: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera,
              size: tuple[int, int]) -> None:
    for y in range(0, size[1], 24):
        d.rectangle([0, y, size[0], y + 8], fill=_mix(cam.wall, (90, 80, 60), 0.25))
    for x in rng.uniform(0, size[0], size=2):
        d.rectangle([x, 0, x + 5, size[1]], fill=(80, 80, 84))


_TEXTURES: dict[str, Callable[..., None]] = {
    "tiles": _tex_tiles, "foliage": _tex_foliage, "bricks": _tex_bricks,
    "panels": _tex_panels, "glass": _tex_glass, "road": _tex_road,
}


def _sample_pose(rng: np.random.Generator, camera: _Camera) -> _Pose:
    return _Pose(
        dx=float(rng.uniform(-0.06, 0.06)), dy=float(rng.uniform(-0.03, 0.02)),
        scale=float(rng.uniform(0.94, 1.05)), stride=float(rng.uniform(-1.2, 2.4)),
        swing=float(rng.uniform(-0.6, 1.6)), front=bool(rng.random() < camera.front_p),
        mirror=bool(rng.random() < camera.mirror_p),
    )


def _occlude(canvas: Image.Image, rng: np.random.Generator) -> None:
    """Cover part of the person with a random box (a bin, a car, another passer-by)."""
    w, h = canvas.size
    bw, bh = rng.uniform(0.25, 0.6) * w, rng.uniform(0.15, 0.35) * h
    x = rng.uniform(-0.2 * w, w - 0.5 * bw)
    y = rng.uniform(0.45 * h, h - 0.6 * bh) if rng.random() < 0.7 else rng.uniform(0.1, 0.4) * h
    colour = tuple(int(c) for c in rng.integers(20, 235, size=3))
    ImageDraw.Draw(canvas).rounded_rectangle([x, y, x + bw, y + bh], radius=int(0.08 * w),
                                             fill=colour)


class _Renderer:
    """Draws images for one seed and image size; holds each camera's background."""

    def __init__(self, seed: int, size: tuple[int, int]) -> None:
        self.seed, self.size = seed, size
        self.canvas = (2 * size[0], 2 * size[1])  # drawn at 2x, then reduced (anti-aliasing)
        self.margin = (size[0] // 2, size[1] // 8)
        big = (self.canvas[0] + 2 * self.margin[0], self.canvas[1] + 2 * self.margin[1])
        self.backgrounds = [_background(seed, cam, big) for cam in range(1, NUM_CAMERAS + 1)]

    def _scene(self, rng: np.random.Generator, cam: int) -> Image.Image:
        ox = int(rng.integers(0, 2 * self.margin[0] + 1))
        oy = int(rng.integers(0, 2 * self.margin[1] + 1))
        return self.backgrounds[cam - 1].crop(
            (ox, oy, ox + self.canvas[0], oy + self.canvas[1]))

    def person(self, person: _Person, cam: int, rng: np.random.Generator,
               offset: float = 0.0) -> Image.Image:
        """One image of ``person`` on camera ``cam`` (1..6), at the final size."""
        camera = _CAMERAS[cam - 1]
        canvas = self._scene(rng, cam)
        pose = _sample_pose(rng, camera)
        if offset:
            pose = replace(pose, dx=offset)
        _draw_person(canvas, person, pose, camera)
        if pose.mirror:
            canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < camera.occlude_p:
            _occlude(canvas, rng)
        return self._finish(canvas.reduce(2), rng, camera)

    def _finish(self, img: Image.Image, rng: np.random.Generator,
                camera: _Camera, extra_blur: float = 0.0) -> Image.Image:
        """Camera blur, light level, colour cast and sensor noise."""
        radius = camera.blur * float(rng.uniform(0.6, 1.3)) + extra_blur
        if radius > 0.15:
            img = img.filter(ImageFilter.GaussianBlur(radius))
        gain = camera.gain * float(rng.uniform(0.9, 1.1))
        cast = np.asarray(camera.cast, dtype=np.float32) * rng.uniform(0.97, 1.03, size=3)
        pixels = np.asarray(img, dtype=np.float32) * (gain * cast).astype(np.float32)
        sigma = float(rng.uniform(2.0, 6.0))
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))

    def junk(self, person: _Person, cam: int, rng: np.random.Generator) -> Image.Image:
        """A bad detection: a small, blurred bit of a person or of the scene."""
        full = self.person(person, cam, rng)
        w, h = full.size
        cw, ch = int(w * rng.uniform(0.3, 0.6)), int(h * rng.uniform(0.2, 0.45))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        bit = full.crop((x, y, x + cw, y + ch)).resize(self.size, Image.Resampling.BILINEAR)
        return self._finish(bit, rng, _CAMERAS[cam - 1], extra_blur=float(rng.uniform(1.0, 2.5)))

    def distractor(self, person: _Person, cam: int, rng: np.random.Generator) -> Image.Image:
        """Someone not among the ids, whole (70%) or half out of the box (30%)."""
        if rng.random() < 0.7:
            return self.person(person, cam, rng)
        return self.person(person, cam, rng, offset=float(rng.choice([-0.45, 0.45])))


def render_identity(labels: Sequence[int], seed: int = 0, camera: int = 1, shot: int = 0,
                    width: int = 64, height: int = 128) -> Image.Image:
    """Draw one image of a synthetic person with the given task labels.

    Args:
        labels: 12 task labels in the order of :data:`attreid.schema.TASK_NAMES`.
        seed: picks the identity's look (shades, pattern, build, ...) and the scene.
        camera: camera 1..6.
        shot: picks the per-image variation (pose, position, view, noise).
        width, height: image size in pixels.

    Returns:
        an RGB image of size (width, height).
    """
    labels = tuple(int(v) for v in labels)
    tasks_to_raw(labels)  # validates the labels
    if not 1 <= camera <= NUM_CAMERAS:
        raise ValueError(f"camera {camera} outside 1..{NUM_CAMERAS}")
    person = _Person(labels, _sample_look(_rng(seed, _P_LOOK, 9, 0), labels))
    return _renderer(seed, (width, height)).person(person, camera, _rng(seed, _P_SHOT, 9, shot))


@functools.lru_cache(maxsize=8)
def _renderer(seed: int, size: tuple[int, int]) -> _Renderer:
    """A shared renderer (its backgrounds are read only)."""
    return _Renderer(seed, size)


# ---------------------------------------------------------------- the plan


def _choose_ids(rng: np.random.Generator, ids: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Distinct non-contiguous person ids, half (rounded down) for training."""
    pool = max(1501, ids)
    chosen = rng.choice(np.arange(1, pool + 1), size=ids, replace=False)
    n_train = ids // 2
    return tuple(sorted(int(p) for p in chosen[:n_train])), tuple(
        sorted(int(p) for p in chosen[n_train:]))


def _track(rng: np.random.Generator) -> tuple[int, int, int]:
    """Sequence, first frame and frame step of one pass in front of a camera."""
    return int(rng.integers(1, 7)), int(rng.integers(50, 180000)), int(rng.integers(5, 40))


def _train_shots(seed: int, pid: int) -> list[_Shot]:
    """12-20 images of a training identity on 2-6 cameras (at least 2 per camera)."""
    rng = _rng(seed, _P_PLAN, pid)
    cams = np.sort(rng.choice(np.arange(1, NUM_CAMERAS + 1), size=int(rng.integers(2, 7)),
                              replace=False))
    counts = np.full(len(cams), 2)
    total = int(rng.integers(12, 21))
    extra = rng.multinomial(total - counts.sum(), np.ones(len(cams)) / len(cams))
    shots: list[_Shot] = []
    for cam, n in zip(cams, counts + extra):
        seq, start, step = _track(rng)
        for k in range(int(n)):
            shots.append(_Shot("train", pid, int(cam), seq, start + k * step, 1, _KIND_PERSON,
                               len(shots)))
    return shots


def _test_shots(seed: int, pid: int) -> list[_Shot]:
    """One query per camera (2-6 cameras) and 2-4 gallery images on each of those cameras."""
    rng = _rng(seed, _P_PLAN, pid)
    cams = np.sort(rng.choice(np.arange(1, NUM_CAMERAS + 1), size=int(rng.integers(2, 7)),
                              replace=False))
    shots: list[_Shot] = []
    for cam in cams:
        seq, start, step = _track(rng)
        n = int(rng.integers(2, 5))
        for k in range(n + 1):
            split, box = ("query", 0) if k == n // 2 else ("gallery", 1 + (k > n // 2))
            shots.append(_Shot(split, pid, int(cam), seq, start + k * step, box, _KIND_PERSON,
                               len(shots)))
    return shots


def _extra_shots(seed: int, kind: int, count: int) -> list[_Shot]:
    """Gallery distractors (pid 0) or junk (pid -1) with distinct names."""
    rng = _rng(seed, _P_PLAN, 100000 + kind)
    pid = DISTRACTOR_ID if kind == _KIND_DISTRACTOR else JUNK_ID
    seen: set[tuple[int, int, int, int]] = set()
    shots: list[_Shot] = []
    while len(shots) < count:
        cam, seq = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        frame, box = int(rng.integers(50, 180000)), int(rng.integers(1, 9))
        if (cam, seq, frame, box) not in seen:
            seen.add((cam, seq, frame, box))
            shots.append(_Shot("gallery", pid, cam, seq, frame, box, kind, len(shots)))
    return shots


def _make_plan(ids: int, seed: int) -> _Plan:
    """Identities and the images to draw; depends only on ``ids`` and ``seed``."""
    train_ids, test_ids = _choose_ids(_rng(seed, _P_PLAN), ids)
    shots = [s for pid in train_ids for s in _train_shots(seed, pid)]
    shots += [s for pid in test_ids for s in _test_shots(seed, pid)]
    n_true = sum(s.split == "gallery" for s in shots)
    shots += _extra_shots(seed, _KIND_DISTRACTOR, max(2, round(0.15 * n_true)))
    shots += _extra_shots(seed, _KIND_JUNK, max(2, round(0.12 * n_true)))
    return _Plan(train_ids, test_ids, tuple(shots))


def _render(renderer: _Renderer, shot: _Shot) -> bytes:
    """The JPEG bytes of one shot."""
    seed = renderer.seed
    rng = _rng(seed, _P_SHOT, shot.kind, max(shot.pid, 0), shot.key)
    if shot.kind == _KIND_PERSON:
        img = renderer.person(_person(seed, _KIND_PERSON, shot.pid), shot.camid, rng)
    elif shot.kind == _KIND_DISTRACTOR:
        img = renderer.distractor(_person(seed, shot.kind, shot.key), shot.camid, rng)
    else:
        img = renderer.junk(_person(seed, shot.kind, shot.key), shot.camid, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _images(plan: _Plan, seed: int, size: tuple[int, int],
            progress: bool) -> Iterator[tuple[_Shot, bytes]]:
    """Render every shot of the plan, in plan order."""
    renderer = _Renderer(seed, size)
    shots: Iterable[_Shot] = plan.shots
    if progress:
        from rich.progress import track

        shots = track(plan.shots, description="drawing pedestrians")
    for shot in shots:
        yield shot, _render(renderer, shot)


# ---------------------------------------------------------------- writers


def _market_name(shot: _Shot) -> str:
    pid = "-1" if shot.pid == JUNK_ID else f"{shot.pid:04d}"
    return f"{pid}_c{shot.camid}s{shot.seq}_{shot.frame:06d}_{shot.box:02d}.jpg"


def _attribute_struct(seed: int, pids: Sequence[int],
                      order: Sequence[str]) -> dict[str, np.ndarray]:
    """One split of ``market_attribute``: every field shaped (1, N), in the given order."""
    raws = [tasks_to_raw(_person(seed, _KIND_PERSON, pid).labels) for pid in pids]
    struct: dict[str, np.ndarray] = {}
    for name in order:
        if name == "image_index":
            index = np.empty((1, len(pids)), dtype=object)
            index[0, :] = [f"{pid:04d}" for pid in pids]
            struct[name] = index
        else:
            struct[name] = np.array([[raw[name] for raw in raws]], dtype=np.uint8)
    return struct


def _write_mat(path: Path, plan: _Plan, seed: int) -> None:
    """``market_attribute.mat`` as in Market-1501_Attribute, with a reproducible header."""
    content = {"market_attribute": {
        "test": _attribute_struct(seed, plan.test_ids, MAT_TEST_ORDER),
        "train": _attribute_struct(seed, plan.train_ids, MAT_TRAIN_ORDER),
    }}
    buf = io.BytesIO()
    scipy.io.savemat(buf, content, format="5")
    data = bytearray(buf.getvalue())
    header = f"MATLAB 5.0 MAT-file, synthetic attreid data, seed {seed}".encode("ascii")
    data[:116] = header.ljust(116, b" ")  # scipy writes the creation time here
    path.write_bytes(bytes(data))


def _write_market(out: Path, plan: _Plan, seed: int, size: tuple[int, int],
                  progress: bool) -> dict[str, int]:
    folders = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
    counts = {name: 0 for name in folders.values()}
    for name in folders.values():
        (out / name).mkdir(parents=True)
    for shot, data in _images(plan, seed, size, progress):
        folder = folders[shot.split]
        (out / folder / _market_name(shot)).write_bytes(data)
        counts[folder] += 1
    _write_mat(out / "market_attribute.mat", plan, seed)
    return counts


def _course_train_name(shot: _Shot) -> str:
    return f"{shot.pid:04d}_c{shot.camid}_{shot.frame:06d}{shot.seq}{shot.box:02d}.jpg"


def _course_names(plan: _Plan, seed: int) -> dict[_Shot, str]:
    """File names of every shot; test and query files numbered in a shuffled order."""
    rng = _rng(seed, _P_ORDER)
    names = {s: _course_train_name(s) for s in plan.shots if s.split == "train"}
    for split in ("gallery", "query"):
        shots = [s for s in plan.shots if s.split == split]
        for number, i in enumerate(rng.permutation(len(shots))):
            names[shots[int(i)]] = f"{number:06d}.jpg"
    return names


def _write_annotations(path: Path, plan: _Plan, seed: int) -> None:
    """``annotations_train.csv``: one row per training identity, shuffled, id unpadded."""
    order = _rng(seed, _P_ORDER, 1).permutation(len(plan.train_ids))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i in order:
            pid = plan.train_ids[int(i)]
            raw = tasks_to_raw(_person(seed, _KIND_PERSON, pid).labels)
            writer.writerow([pid] + [raw[name] for name in RAW_ATTRIBUTES])


def _write_course(out: Path, plan: _Plan, seed: int, size: tuple[int, int],
                  progress: bool) -> dict[str, int]:
    folders = {"train": "train", "gallery": "test", "query": "queries"}
    counts = {name: 0 for name in folders.values()}
    for name in folders.values():
        (out / name).mkdir(parents=True)
    names = _course_names(plan, seed)
    truth: list[tuple[str, str, int, int]] = []
    for shot, data in _images(plan, seed, size, progress):
        folder = folders[shot.split]
        (out / folder / names[shot]).write_bytes(data)
        counts[folder] += 1
        if folder != "train":
            truth.append((folder, names[shot], shot.pid, shot.camid))
    truth += _write_duplicates(out / "test", truth, seed)
    counts["test"] += 2
    _write_annotations(out / "annotations_train.csv", plan, seed)
    _write_truth(out / "synth_truth.csv", truth)
    return counts


def _write_duplicates(folder: Path, truth: Sequence[tuple[str, str, int, int]],
                      seed: int) -> list[tuple[str, str, int, int]]:
    """Two byte-identical copies ``NNNNNN(1).jpg`` in test/, as the real release has."""
    rows = sorted(r for r in truth if r[0] == "test")
    picks = _rng(seed, _P_ORDER, 2).choice(len(rows), size=2, replace=False)
    added = []
    for i in sorted(int(p) for p in picks):
        split, name, pid, camid = rows[i]
        copy = name.replace(".jpg", "(1).jpg")
        shutil.copyfile(folder / name, folder / copy)
        added.append((split, copy, pid, camid))
    return added


def _write_truth(path: Path, rows: Sequence[tuple[str, str, int, int]]) -> None:
    """``synth_truth.csv``: split (test/queries), file, pid (0 distractor, -1 junk), camid."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["split", "file", "pid", "camid"])
        writer.writerows(sorted(rows))


_WRITERS = {"market": _write_market, "course": _write_course}


def _write_readme(out: Path, info: SynthInfo) -> None:
    lines = [
        "SYNTHETIC pedestrian data made by attreid.data.synth (not real people, not Market-1501).",
        f"layout: {info.layout}",
        f"seed: {info.seed}",
        f"identities: {info.train_ids} train, {info.test_ids} test",
        "images: " + ", ".join(f"{k} {v}" for k, v in info.images.items()),
        "Same seed and arguments give byte-identical files.",
    ]
    if info.layout == "course":
        lines.append("synth_truth.csv gives pid (0 distractor, -1 junk) and camera of test/ and "
                     "queries/ files.")
    (out / "README.txt").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- entry point


def _check_args(out: Path, ids: int, seed: int, layout: str, height: int, width: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not isinstance(ids, int) or not MIN_IDS <= ids <= MAX_PID:
        raise ValueError(f"ids must be an integer in {MIN_IDS}..{MAX_PID}, got {ids!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(height, int) and isinstance(width, int)) or min(height, width) < 16:
        raise ValueError(f"height and width must be integers >= 16, got {height}x{width}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} exists and is not an empty folder; give a new path")


def generate(out: Path | str, ids: int = 100, seed: int = 0, layout: str = "market",
             height: int = 128, width: int = 64, progress: bool = False) -> SynthInfo:
    """Write a synthetic pedestrian dataset.

    Args:
        out: a new (or empty) output folder.
        ids: number of identities (>= 4); ``ids // 2`` train, the rest test.
        seed: makes everything reproducible (same seed -> byte-identical files).
        layout: ``"market"`` (Market-1501 release + ``market_attribute.mat``) or ``"course"``
            (train/, test/, queries/, ``annotations_train.csv`` and ``synth_truth.csv``).
        height, width: image size in pixels (Market-1501: 128 x 64).
        progress: show a progress bar.

    Returns:
        what was written, see :class:`SynthInfo`.
    """
    out = Path(out)
    _check_args(out, ids, seed, layout, height, width)
    plan = _make_plan(ids, seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = _WRITERS[layout](out, plan, seed, (width, height), progress)
    info = SynthInfo(out, layout, seed, len(plan.train_ids), len(plan.test_ids), counts)
    _write_readme(out, info)
    return info
