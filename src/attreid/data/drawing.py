"""Drawing a synthetic pedestrian figure from its labels, look and pose.

The figure is drawn so that its 12 attributes can be seen: hair length, hat, sleeve length,
lower-body length, dress or pants, backpack, shoulder bag, handbag, upper and lower colour,
gender (shoulders and hips) and age (size, grey hair, stoop). Parts are drawn back to front in
body coordinates (:class:`_Frame`: 1/100 of the person height) placed by the camera's scale and
shift. The numbers come from :mod:`appearance`; :mod:`camera` puts the figure in a camera image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image, ImageDraw

from attreid.data.appearance import RGB, _Camera, _Look, _mix, _Person, _Pose


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

