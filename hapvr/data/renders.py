"""Procedurally rendered videos with real temporal structure, for benchmarks.

The packaged photos give near-still pans: their frame maps are stripes, not the diagonals of
real copies. A rendered *world* moves: sprites (ellipses, boxes, polygons, textured) travel over
a textured backdrop, or, for the ``screen`` kind, lines of text scroll under a moving cursor, as
in a screen recording. A world is a pure function of its seed; a video of it is the world seen
from a camera path (a square crop moving from one box to another) over a span of world time,
one frame per time unit (read as a second, as hapvr extracts 1 frame per second). So one world
yields a query, copies of it (the same frames re-edited, or the same event played at another
speed), another camera on the same event (CS) and another moment of the world (IS).

Everything comes from ``random.Random`` / NumPy generators seeded by the caller: the same seed
renders the same pixels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from hapvr.data.augment import overlay_font

WORLD_SIDE = 512
KINDS = ("objects", "screen")
_WORDS = ("copy", "video", "frame", "search", "index", "query", "match", "scene", "camera", "clip", "record",
          "stream", "upload", "render", "edit", "speed", "title", "cursor", "window", "report", "table", "chart")


@dataclass
class Sprite:
    shape: str  # ellipse, box or polygon
    size: float  # fraction of the world side
    colour: tuple[int, int, int]
    stripe: tuple[int, int, int] | None  # a second colour for a striped sprite
    start: tuple[float, float]  # centre at t = 0, fractions of the side
    velocity: tuple[float, float]  # per time unit, fractions of the side (bounces off the edges)
    wobble: float  # amplitude of a sideways oscillation
    spin: float  # radians per time unit
    vertices: list[tuple[float, float]] = field(default_factory=list)  # polygon, unit circle


@dataclass
class World:
    seed: int
    kind: str
    backdrop: np.ndarray  # uint8 [S, S, 3]
    sprites: list[Sprite]
    lines: list[tuple[str, tuple[int, int, int]]]  # screen kind: text lines and colours
    scroll: float  # screen kind: pixels per time unit


def _smooth_noise(rng: np.random.Generator, cells: int, side: int) -> np.ndarray:
    small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC))


def make_world(seed: int, kind: str | None = None) -> World:
    """The world of ``seed`` (kind drawn from the seed unless given)."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    kind = kind or rng.choice(KINDS)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    S = WORLD_SIDE
    if kind == "screen":
        light = rng.random() < 0.6
        base = np.full((S, S, 3), 235 if light else 30, dtype=np.uint8)
        img = Image.fromarray(base)
        d = ImageDraw.Draw(img)
        for _ in range(rng.randint(2, 4)):  # panels and a title bar
            x0, y0 = rng.randint(0, S // 2), rng.randint(0, S // 2)
            d.rectangle([x0, y0, x0 + rng.randint(S // 6, S // 2), y0 + rng.randint(S // 10, S // 3)],
                        fill=tuple(rng.randint(60, 220) for _ in range(3)))
        d.rectangle([0, 0, S, S // 14], fill=tuple(rng.randint(0, 120) for _ in range(3)))
        backdrop = np.asarray(img)
        ink = (20, 20, 20) if light else (225, 225, 225)
        lines = [(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6))),
                  ink if rng.random() < 0.8 else tuple(rng.randint(0, 255) for _ in range(3)))
                 for _ in range(60)]
        sprites = [Sprite("box", 0.03, (255, 60, 0), None, (rng.random(), rng.random()),
                          (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)), 0.02, 0.0)]
        return World(seed, kind, backdrop, sprites, lines, rng.uniform(6, 14))
    backdrop = (0.6 * _smooth_noise(nrng, rng.randint(3, 6), S) + 0.4 * _smooth_noise(nrng, rng.randint(12, 24), S))
    img = Image.fromarray(backdrop.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 14)):  # static scenery
        x, y, r = rng.randint(0, S), rng.randint(0, S), rng.randint(S // 30, S // 8)
        c = tuple(rng.randint(0, 255) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x - r, y - r, x + r, y + r // 2], fill=c)
    sprites = []
    for _ in range(rng.randint(3, 6)):
        shape = rng.choice(("ellipse", "box", "polygon"))
        verts = [(math.cos(a), math.sin(a)) for a in sorted(rng.uniform(0, 2 * math.pi) for _ in range(rng.randint(3, 7)))]
        sprites.append(Sprite(shape, rng.uniform(0.06, 0.16), tuple(rng.randint(0, 255) for _ in range(3)),
                              tuple(rng.randint(0, 255) for _ in range(3)) if rng.random() < 0.5 else None,
                              (rng.random(), rng.random()), (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)),
                              rng.uniform(0.0, 0.05), rng.uniform(-0.5, 0.5), verts))
    return World(seed, kind, np.asarray(img), sprites, [], 0.0)


def _bounce(x: float) -> float:
    """Position in [0, 1] of a point moving freely along x, reflected at the edges."""
    x = x % 2.0
    return x if x <= 1.0 else 2.0 - x


def world_frame(world: World, t: float) -> Image.Image:
    """The whole world at time ``t``."""
    S = WORLD_SIDE
    img = Image.fromarray(world.backdrop.copy())
    d = ImageDraw.Draw(img)
    if world.kind == "screen":
        font = overlay_font(S // 26)
        offset = (t * world.scroll) % (len(world.lines) * S / 20)
        for k, (text, colour) in enumerate(world.lines):
            y = S // 12 + k * S / 20 - offset
            if S // 14 < y < S - 10:
                d.text((S // 20, y), text, fill=colour, font=font)
    for sp in world.sprites:
        cx = _bounce(sp.start[0] + sp.velocity[0] * t + sp.wobble * math.sin(1.3 * t + sp.size * 50))
        cy = _bounce(sp.start[1] + sp.velocity[1] * t)
        r = sp.size * S / 2
        x, y = cx * S, cy * S
        if sp.shape == "polygon":
            a = sp.spin * t
            pts = [(x + r * (u * math.cos(a) - v * math.sin(a)), y + r * (u * math.sin(a) + v * math.cos(a)))
                   for u, v in sp.vertices]
            d.polygon(pts, fill=sp.colour)
        else:
            box = [x - r, y - r * 0.7, x + r, y + r * 0.7]
            (d.ellipse if sp.shape == "ellipse" else d.rectangle)(box, fill=sp.colour)
            if sp.stripe is not None:
                d.rectangle([x - r, y - r * 0.15, x + r, y + r * 0.15], fill=sp.stripe)
    return img


def render(world: World, times, start: tuple[float, float, float], end: tuple[float, float, float],
           out: int = 256) -> torch.Tensor:
    """``uint8 [len(times), 3, out, out]``: the world at each time, seen through a square camera
    box moving linearly from ``start`` to ``end`` (``(cx, cy, side)`` fractions of the world side)."""
    times = list(times)
    frames = []
    for k, t in enumerate(times):
        a = k / max(len(times) - 1, 1)
        cx, cy, side = (s + a * (e - s) for s, e in zip(start, end))
        s = side * WORLD_SIDE
        x0 = min(max(cx * WORLD_SIDE - s / 2, 0), WORLD_SIDE - s)
        y0 = min(max(cy * WORLD_SIDE - s / 2, 0), WORLD_SIDE - s)
        frame = world_frame(world, t).resize((out, out), Image.BILINEAR, box=(x0, y0, x0 + s, y0 + s))
        frames.append(np.asarray(frame))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
