"""The schedule of synthetic footage: when each camera records and where each person walks.

Numbers only (no pixels); :mod:`footage_synth` draws them. The cameras stand along one
corridor: camera ``c`` starts recording a little after camera ``c - 1`` and people walk it in
camera order, crossing each frame left to right or right to left along a ground line (foot
``y``) with a constant-ish speed of about one body height a second. Their size in pixels follows
the ground line (nearer, lower in the frame = taller), with no other perspective.

A few visits are placed on purpose so that the footage tests what it should:

* person 1 walks into the first camera of its route, turns back out of the frame, waits out of
  view for 1-2 s and comes back in (a track that must be joined across a gap);
* person 3 crosses person 2 in the middle of person 2's first camera, on a nearby ground line
  (an occlusion, and a chance to switch identities);
* the last person is seen in one camera only, the first in every camera the time allows.

Times are seconds on one clock shared by all cameras (0 = the first camera's first frame);
:class:`Plan` holds each camera's start on that clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attreid.data.appearance import _rng

# Purposes of the derived generators, clear of appearance's (0..5).
_P_WINDOW, _P_ROUTE, _P_SCENE, _P_NOISE = range(10, 14)

Point = tuple[float, float, float]  # (time s, foot x px, foot y px)

MIN_SHOWN_S = 1.5
"""A visit must show the person for at least this long inside its camera's recording."""


@dataclass(frozen=True)
class Ground:
    """Where feet can stand in a frame of ``width`` x ``height``, and how tall people look there.

    ``y_far`` .. ``y_near`` is the walkable band (foot y in pixels); the depth height (the height
    of a person of average build, before the identity's own height and age factor) grows
    linearly from 48 to 104 px over the band at a frame height of 240 and scales with it.
    """

    width: int
    height: int
    y_far: float
    y_near: float

    def depth_height(self, y: float) -> float:
        """Depth height in pixels at foot ``y``."""
        t = (y - self.y_far) / max(self.y_near - self.y_far, 1e-6)
        return (48.0 + 56.0 * float(np.clip(t, 0.0, 1.0))) * self.height / 240.0

    def margin(self, y: float) -> float:
        """How far outside the frame a foot must be for the whole body to be out of view."""
        return 0.6 * 110.0 / 104.0 * self.depth_height(y) + 2.0


@dataclass(frozen=True)
class Visit:
    """One pass of one person in front of one camera: a piecewise-linear path of the feet.

    Attributes:
        identity: the person's global identity (1..people, the same in every camera).
        camera: 1-based camera number.
        points: ``(time s, foot x px, foot y px)`` waypoints, times increasing; the person is
            in the scene (maybe out of the frame) from the first time to the last.
        front: seen from the front (True) or the back.
        reentry: the path leaves the frame and comes back in.
    """

    identity: int
    camera: int
    points: tuple[Point, ...]
    front: bool
    reentry: bool = False

    @property
    def start(self) -> float:
        return self.points[0][0]

    @property
    def end(self) -> float:
        return self.points[-1][0]

    def at(self, t: float) -> tuple[float, float, bool, float] | None:
        """Foot ``x``, ``y``, whether walking to the left, and the distance walked (px) at time
        ``t``; None outside the visit."""
        if not self.start <= t <= self.end:
            return None
        ts = np.array([p[0] for p in self.points])
        xs = np.array([p[1] for p in self.points])
        ys = np.array([p[2] for p in self.points])
        walked = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(xs), np.diff(ys)))])
        segment = int(np.clip(np.searchsorted(ts, t, side="right") - 1, 0, len(ts) - 2))
        moves = np.diff(xs)[: segment + 1]
        moving = moves[moves != 0]
        left = bool(moving[-1] < 0) if len(moving) else False
        return (float(np.interp(t, ts, xs)), float(np.interp(t, ts, ys)), left,
                float(np.interp(t, ts, walked)))


@dataclass(frozen=True)
class Plan:
    """Everything :mod:`footage_synth` draws.

    Attributes:
        starts: each camera's first frame on the shared clock (s), increasing.
        seconds: the length of every camera's recording.
        fps: frames a second.
        grounds: each camera's walkable band.
        visits: every visit, ordered by identity, then time.
    """

    starts: tuple[float, ...]
    seconds: float
    fps: float
    grounds: tuple[Ground, ...]
    visits: tuple[Visit, ...]

    def frames(self) -> int:
        """Frames per camera."""
        return int(round(self.seconds * self.fps))


# ---------------------------------------------------------------- paths


def _walk(rng: np.random.Generator, t0: float, x0: float, x1: float, y0: float, y1: float,
          speed: float) -> list[Point]:
    """A walk from (x0, y0) to (x1, y1) starting at ``t0``: four legs whose speeds differ by up
    to 10 % (constant-ish velocity)."""
    points = [(t0, x0, y0)]
    for k in range(1, 5):
        x, y = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        step = float(np.hypot(x - points[-1][1], y - points[-1][2]))
        points.append((points[-1][0] + step / (speed * rng.uniform(0.9, 1.1)), x, y))
    return points


def _line(rng: np.random.Generator, ground: Ground) -> tuple[float, float, float]:
    """A ground line (start and end foot y, a little slanted) and a walking speed (px/s)."""
    y0 = float(rng.uniform(ground.y_far, ground.y_near))
    drift = float(rng.uniform(-0.05, 0.05)) * ground.height
    y1 = float(np.clip(y0 + drift, ground.y_far, ground.y_near))
    speed = float(rng.uniform(0.8, 1.2)) * ground.depth_height((y0 + y1) / 2)
    return y0, y1, speed


def _crossing(rng: np.random.Generator, ground: Ground, t0: float, leftward: bool,
              line: tuple[float, float, float] | None = None) -> list[Point]:
    """Enter on one side, cross the frame, leave on the other."""
    y0, y1, speed = line or _line(rng, ground)
    m0, m1 = ground.margin(y0), ground.margin(y1)
    x0, x1 = -m0, ground.width + m1
    if leftward:
        x0, x1 = ground.width + m0, -m1
    return _walk(rng, t0, x0, x1, y0, y1, speed)


def _reentry(rng: np.random.Generator, ground: Ground, t0: float, leftward: bool) -> list[Point]:
    """Walk in about a third of the frame, turn back out, wait 1-2 s out of view, come back in
    on the same side and cross the whole frame."""
    y0, _, speed = _line(rng, ground)
    m, w = ground.margin(y0), ground.width
    edge, turn = (w + m, w * 0.68) if leftward else (-m, w * 0.32)
    points = _walk(rng, t0, edge, turn, y0, y0, speed)
    points += _walk(rng, points[-1][0], turn, edge, y0, y0, speed)[1:]
    back = points[-1][0] + float(rng.uniform(1.0, 2.0))
    line = (y0, float(np.clip(y0 + rng.uniform(-0.04, 0.04) * ground.height, ground.y_far,
                              ground.y_near)), speed)
    return points + _crossing(rng, ground, back, leftward, line)


def _shifted(points: list[Point] | tuple[Point, ...], dt: float) -> tuple[Point, ...]:
    return tuple((t + dt, x, y) for t, x, y in points)


def _time_at_x(points: tuple[Point, ...], x: float) -> float:
    """When a monotone walk passes foot ``x``."""
    xs = np.array([p[1] for p in points])
    ts = np.array([p[0] for p in points])
    order = np.argsort(xs)
    return float(np.interp(x, xs[order], ts[order]))


# ---------------------------------------------------------------- the schedule


def camera_starts(cameras: int, seconds: float, seed: int) -> tuple[float, ...]:
    """Start of each camera on the shared clock: whole seconds, each 30 % of a recording (at
    least 1 s) plus 0-1 s after the one before."""
    rng = _rng(seed, _P_WINDOW)
    step = max(1, int(round(0.3 * seconds)))
    starts = [0.0]
    for _ in range(cameras - 1):
        starts.append(starts[-1] + step + int(rng.integers(0, 2)))
    return tuple(starts)


def _route(rng: np.random.Generator, index: int, people: int, cameras: int) -> list[int]:
    """The cameras a person passes, in corridor order: the first person every camera, the
    second at least two, the last one camera, the others one (30 %) or two or more."""
    if index == 0:
        count = cameras
    elif index == people - 1 and people > 1:
        count = 1
    elif cameras == 1 or (index > 1 and rng.random() < 0.3):
        count = 1
    else:
        count = int(rng.integers(2, cameras + 1))
    return sorted(int(c) + 1 for c in rng.choice(cameras, size=count, replace=False))


def _crossing_path(rng: np.random.Generator, ground: Ground, other: Visit) -> tuple[Point, ...]:
    """A walk against ``other``'s direction on a ground line 6-14 px (at 240 px) from its
    start, timed so that both pass the middle of the frame together."""
    offset = float(rng.choice([-1, 1]) * rng.uniform(6, 14)) * ground.height / 240
    y = float(np.clip(other.points[0][2] + offset, ground.y_far, ground.y_near))
    line = (y, y, float(rng.uniform(0.8, 1.2)) * ground.depth_height(y))
    other_leftward = other.points[0][1] > other.points[-1][1]
    path = _crossing(rng, ground, 0.0, not other_leftward, line)
    middle = ground.width / 2
    return _shifted(path, _time_at_x(other.points, middle) - _time_at_x(tuple(path), middle))


def _first_time(rng: np.random.Generator, starts: tuple[float, ...], seconds: float,
                route: list[int], paths: list[tuple[Point, ...]], gaps: list[float]) -> float:
    """A start for a route's first visit: its middle inside the recording, and if possible
    early enough, where it can be, that the last visit's middle is inside its camera's."""
    durations = [p[-1][0] - p[0][0] for p in paths]
    low = starts[route[0] - 1] - 0.3 * durations[0]
    high = max(low, starts[route[0] - 1] + seconds - 0.7 * durations[0])
    whole = sum(durations) + sum(gaps) - 0.5 * durations[-1]
    high = max(low, min(high, starts[route[-1] - 1] + seconds - whole))
    return float(rng.uniform(low, high + 0.1))


def _person_visits(seed: int, index: int, people: int, cameras: int, starts: tuple[float, ...],
                   seconds: float, grounds: tuple[Ground, ...],
                   crossing: Visit | None) -> list[Visit]:
    """The visits of person ``index`` (identity ``index + 1``), in time order: walks that the
    recordings miss are left out (with the rest of the route)."""
    identity = index + 1
    rng = _rng(seed, _P_ROUTE, identity)
    route = _route(rng, index, people, cameras)
    if crossing is not None:  # this person crosses another's first visit
        route = [crossing.camera] + [c for c in route if c > crossing.camera][: len(route) - 1]
    paths: list[tuple[Point, ...]] = []
    for number, cam in enumerate(route):
        ground, leftward = grounds[cam - 1], bool(rng.random() < 0.5)
        if index == 0 and number == 0:
            paths.append(tuple(_reentry(rng, ground, 0.0, leftward)))
        elif number == 0 and crossing is not None:
            paths.append(_crossing_path(rng, ground, crossing))
        else:
            paths.append(tuple(_crossing(rng, ground, 0.0, leftward)))
    gaps = [float(g) for g in rng.uniform(1.0, 3.0, size=len(route) - 1)]
    fronts = rng.random(len(route)) < 0.5
    if index == 0:
        t0 = starts[route[0] - 1] + float(rng.uniform(0.3, 1.0))  # the re-entry: all in view
    elif crossing is not None:
        t0 = 0.0  # the crossing walk is timed already
    else:
        t0 = _first_time(rng, starts, seconds, route, paths, gaps)
    visits: list[Visit] = []
    for number, (cam, path) in enumerate(zip(route, paths)):
        start, duration = starts[cam - 1], path[-1][0] - path[0][0]
        if number:
            t0 = max(visits[-1].end + gaps[number - 1], start - 0.3 * duration) - path[0][0]
        shown = min(t0 + path[-1][0], start + seconds) - max(t0 + path[0][0], start)
        if shown < MIN_SHOWN_S:
            break  # the recording misses this walk (and, later in time, the rest)
        visits.append(Visit(identity, cam, _shifted(list(path), t0), bool(fronts[number]),
                            index == 0 and number == 0))
    return visits


def make_plan(cameras: int, people: int, seconds: float, fps: float, size: tuple[int, int],
              seed: int, horizons: tuple[float, ...]) -> Plan:
    """The whole schedule; depends only on its arguments.

    Args:
        horizons: per camera, the fraction of the height where the ground starts.
    """
    width, height = size
    grounds = tuple(Ground(width, height, h * height + 0.06 * height, 0.97 * height)
                    for h in horizons)
    starts = camera_starts(cameras, seconds, seed)
    visits: list[Visit] = []
    for index in range(people):
        crossing = None
        if index == 2:  # person 3 crosses person 2's first visit
            crossing = next((v for v in visits if v.identity == 2), None)
        visits += _person_visits(seed, index, people, cameras, starts, seconds, grounds,
                                 crossing)
    return Plan(starts, float(seconds), float(fps), grounds, tuple(visits))
