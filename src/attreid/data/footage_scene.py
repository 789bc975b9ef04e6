"""Pixels of synthetic footage: each camera's still scene and the walking figures.

A camera's scene is the crop generator's background of that camera's look (:mod:`camera`:
wall texture, ground, horizon) at the frame size, with 2-4 fixed objects at the back (benches,
bins, planters, posts) and one lamp post in front of the walkers; its finish is fixed too (the
look's blur, gain and colour cast, and a left-to-right light ramp). Everything is drawn from
``(seed, purpose, camera)``, so the same seed gives the same scene.

A figure (:class:`Sprite`) is the crop generator's pedestrian (:mod:`drawing`) at a given depth
height, walking phase, view and direction, drawn at twice the size on a key colour and reduced
with its coverage as alpha (premultiplied), so it can be laid over any scene.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from attreid.data.appearance import _CAMERAS, _Camera, _Person, _Pose, _rng
from attreid.data.camera import _background
from attreid.data.drawing import _draw_person
from attreid.data.footage_plan import _P_SCENE, Ground

_KEY = (255, 0, 255)  # no garment, skin or hair colour has green 0 with red and blue 255
_PHASES = 8
"""Walking phases drawn per stride cycle."""
_CYCLE = 0.8
"""Distance walked in one stride cycle, in depth heights."""
_UPRIGHT = replace(_CAMERAS[0], scale=1.0, shift=0.0)  # drawing.py reads only scale and shift


def look_of(camera: int) -> _Camera:
    """The crop generator's camera look used by footage camera ``camera`` (1-based; the six
    looks repeat after camera 6)."""
    return _CAMERAS[(camera - 1) % len(_CAMERAS)]


@dataclass(frozen=True)
class Scene:
    """The still part of one camera's frames, finished (blurred and lit) once.

    Attributes:
        still: (H, W, 3) float32 background with its fixed objects, blurred and lit.
        light: (1, W, 3) float32 gain x colour cast x light ramp, for figures laid on ``still``.
        blur: Gaussian blur radius in pixels of this camera (0: none).
        post: the columns the lamp post stands in (a slice of the frame's width).
        post_rgb: (H, w, 3) float32 the post over those columns, blurred, lit, premultiplied.
        post_alpha: (H, w, 1) float32 its coverage, blurred.
        post_solid: (H, W) bool, the pixels the post hides (before the blur).
        noise: (2H, 2W, 3) float32 sensor noise; each frame takes a window at its own offset.
    """

    still: np.ndarray
    light: np.ndarray
    blur: float
    post: slice
    post_rgb: np.ndarray
    post_alpha: np.ndarray
    post_solid: np.ndarray
    noise: np.ndarray


def _blurred(rgba: Image.Image, radius: float) -> Image.Image:
    return rgba.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.15 else rgba


def _back_object(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, base: float,
                 scale: float) -> None:
    """A bench, bin, planter or post standing on the ground line ``base``."""
    kind = int(rng.integers(4))
    dark = tuple(int(c) for c in rng.integers(30, 90, size=3))
    light = tuple(int(c) for c in rng.integers(120, 220, size=3))
    s = scale
    if kind == 0:  # bench
        d.rectangle([x - 26 * s, base - 14 * s, x + 26 * s, base - 10 * s], fill=light)
        d.rectangle([x - 26 * s, base - 24 * s, x + 26 * s, base - 20 * s], fill=light)
        for leg in (-22, 20):
            d.rectangle([x + leg * s, base - 12 * s, x + (leg + 3) * s, base], fill=dark)
    elif kind == 1:  # bin
        d.rounded_rectangle([x - 8 * s, base - 26 * s, x + 8 * s, base], radius=3 * s, fill=dark)
        d.rectangle([x - 9 * s, base - 28 * s, x + 9 * s, base - 24 * s], fill=light)
    elif kind == 2:  # planter with a bush
        d.rectangle([x - 18 * s, base - 14 * s, x + 18 * s, base], fill=light)
        d.ellipse([x - 22 * s, base - 40 * s, x + 22 * s, base - 8 * s],
                  fill=(int(rng.integers(30, 70)), int(rng.integers(90, 140)), 50))
    else:  # sign post
        d.rectangle([x - 2 * s, base - 60 * s, x + 2 * s, base], fill=dark)
        d.rectangle([x - 14 * s, base - 62 * s, x + 14 * s, base - 46 * s], fill=light)


def _front_post(size: tuple[int, int], rng: np.random.Generator, ground: Ground) -> Image.Image:
    """A lamp post in front of the walkers: an RGBA layer of the frame's size (straight
    alpha)."""
    w, h = size
    layer = Image.new("RGBA", (2 * w, 2 * h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    x = 2 * float(rng.uniform(0.12, 0.88)) * w
    half = 2 * float(rng.uniform(2.0, 3.5)) * h / 240
    colour = tuple(int(c) for c in rng.integers(40, 110, size=3)) + (255,)
    d.rectangle([x - half, 0, x + half, 2 * ground.y_near + 6], fill=colour)
    d.rectangle([x - 2.2 * half, 2 * ground.y_near - 10 * h / 240, x + 2.2 * half,
                 2 * ground.y_near + 6], fill=colour)
    return layer.reduce(2)


def make_scene(seed: int, camera: int, ground: Ground) -> Scene:
    """The still scene of footage camera ``camera`` (1-based) at the ground's frame size."""
    look = look_of(camera)
    size = (ground.width, ground.height)
    style = (camera - 1) % len(_CAMERAS) + 1
    img = _background(seed + 7919 * ((camera - 1) // len(_CAMERAS)), style, size)
    rng = _rng(seed, _P_SCENE, camera)
    d = ImageDraw.Draw(img)
    base = look.horizon * ground.height + 0.03 * ground.height
    for x in np.sort(rng.uniform(0.05, 0.95, size=int(rng.integers(2, 5)))):
        _back_object(d, rng, float(x) * ground.width, base, ground.height / 240)
    post = _front_post(size, rng, ground)
    ramp = np.linspace(1.0, float(rng.uniform(0.8, 1.2)), ground.width, dtype=np.float32)
    light = (look.gain * np.asarray(look.cast, np.float32)[None, :] * ramp[:, None])[None]
    blur = 0.8 * look.blur
    still = np.asarray(_blurred(img, blur), np.float32) * light
    solid = np.asarray(post, np.float32)[..., 3] >= 128
    layer = np.asarray(_blurred(_premultiplied(post), blur), np.float32)
    cols = np.nonzero(layer[..., 3].max(axis=0) > 0)[0]
    span = slice(int(cols.min()), int(cols.max()) + 1)
    noise = rng.standard_normal((2 * ground.height, 2 * ground.width, 3), dtype=np.float32)
    return Scene(still, light.astype(np.float32), blur, span,
                 layer[:, span, :3] * light[:, span], layer[:, span, 3:] / 255, solid,
                 noise * np.float32(2.5))


def _premultiplied(rgba: Image.Image) -> Image.Image:
    """An RGBA image with its colour multiplied by its alpha (so that blurs mix right)."""
    pixels = np.asarray(rgba, np.uint16)
    rgb = (pixels[..., :3] * pixels[..., 3:] + 127) // 255
    return Image.fromarray(np.dstack([rgb, pixels[..., 3:]]).astype(np.uint8), "RGBA")


def finish(scene: Scene, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lay the post over a (H, W, 3) float32 frame of figures on the still scene (in place)
    and add this frame's sensor noise.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    cols = frame[:, scene.post]
    frame[:, scene.post] = cols * (1 - scene.post_alpha) + scene.post_rgb
    h, w = frame.shape[:2]
    oy, ox = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
    frame += scene.noise[oy:oy + h, ox:ox + w]
    np.clip(frame, 0, 255, out=frame)
    return (frame + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class Sprite:
    """One drawing of a person, ready to lay over a frame.

    Attributes:
        rgb: (h, w, 3) float32 colour premultiplied by ``alpha``.
        alpha: (h, w, 1) float32 coverage in [0, 1].
        solid: (h, w) bool, ``alpha >= 0.5`` (what the figure hides).
        foot: (x, y) of the feet in sprite pixels.
        box: x0, y0, x1, y1 (x1, y1 exclusive) of the pixels with any coverage.
        area: number of solid pixels.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    solid: np.ndarray
    foot: tuple[int, int]
    box: tuple[int, int, int, int]
    area: int


def phase_of(walked: float, depth_height: float) -> int:
    """Walking phase 0..7 after walking ``walked`` px at a depth height of ``depth_height`` px."""
    return int(walked / (_CYCLE * depth_height) * _PHASES) % _PHASES


def draw_sprite(person: _Person, depth_height: int, phase: int, front: bool,
                leftward: bool, blur: float = 0.0) -> Sprite:
    """Draw ``person`` at ``depth_height`` px (times the identity's own height and age factor),
    in walking ``phase`` (0..7), from the front or back, facing left or right, blurred by the
    camera's ``blur`` radius (``solid``, ``box`` and ``area`` are of the figure before it)."""
    ch = 2 * int(round(depth_height / 0.86))
    cw = 2 * int(round(0.25 * ch))
    angle = 2 * np.pi * phase / _PHASES
    pose = _Pose(dx=0.0, dy=0.0, scale=1.0, stride=float(0.6 + 1.8 * np.sin(angle)),
                 swing=float(0.5 + 1.0 * np.cos(angle)), front=front, mirror=leftward)
    canvas = Image.new("RGB", (cw, ch), _KEY)
    _draw_person(canvas, person, pose, _UPRIGHT)
    if leftward:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    big = np.asarray(canvas)
    drawn = (big[..., 0] != 255) | (big[..., 1] != 0) | (big[..., 2] != 255)
    rgba = np.dstack([big * drawn[..., None], drawn.astype(np.uint8) * 255])
    small = Image.fromarray(rgba, "RGBA").reduce(2)  # anti-aliased, premultiplied
    alpha = np.asarray(small)[..., 3]
    rows, cols = np.nonzero(alpha)
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    solid = alpha >= 128
    pad = int(np.ceil(3 * blur)) if blur > 0.15 else 0
    if pad:
        padded = Image.new("RGBA", (small.width + 2 * pad, small.height + 2 * pad), (0, 0, 0, 0))
        padded.paste(small, (pad, pad))
        small = _blurred(padded, blur)
        solid = np.pad(solid, pad)
        box = (box[0] + pad, box[1] + pad, box[2] + pad, box[3] + pad)
    pixels = np.asarray(small, np.float32)
    return Sprite(pixels[..., :3], pixels[..., 3:] / 255, solid,
                  (small.width // 2, pad + int(round(0.975 * ch / 2))), box, int(solid.sum()))
