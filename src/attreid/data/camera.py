"""A camera's image of a synthetic pedestrian: scene, figure, occlusion and the camera's finish.

Each of the six cameras (settings in :mod:`appearance`) has a textured background (tiles,
foliage, bricks, panels, glass, road) larger than an image, so each image crops it at its own
offset; the figure (:mod:`drawing`) is drawn on it at twice the size and reduced, sometimes
occluded, then blurred, lit, colour cast and given sensor noise. :class:`_Renderer` also makes
the gallery's distractors and junk; :func:`render_identity` draws one image of given labels.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from attreid.data.appearance import (
    _CAMERAS,
    _P_CAMERA,
    _P_LOOK,
    _P_SHOT,
    NUM_CAMERAS,
    _Camera,
    _mix,
    _Person,
    _rng,
    _sample_look,
    _sample_pose,
)
from attreid.data.drawing import _draw_person
from attreid.schema import tasks_to_raw


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
