"""Rectangles inside a video's frames that hold another video: a picture-in-picture inset, the
picture between static borders (letterbox, pillarbox, a frame), or the halves of a two-up stack.

Classical image processing on the decoded frames, no weights. What gives an inset away:

- **persistent straight edges**: where a pasted video meets its host, the brightness jumps along
  the same rows or columns in every frame, while the edges of what is filmed move. Per frame,
  a thin-line response (the gradient across a candidate line minus the gradient two pixels to
  either side) is taken at every pixel; its lower quartile over time keeps only what persists.
  The four sides of a candidate rectangle are scored from running sums of that map (each side
  in O(1)), and a rectangle counts when its weakest side stands clearly above the frame's own
  level of persistent edges.
- **stillness outside**: static borders are rows and columns of one colour that never change,
  on opposite sides of the frame (top and bottom, left and right).

A video with no inset gives an empty list. Candidates come from the strongest persistent lines
(non-maximum suppressed), so the search tries tens of rectangles, not every one.

Measured on the built-in benchmark's picture-in-picture copies (insets of 0.55-0.7 of the side,
pasted without a border; 256 x 256 frames, 8 a video), 2026-12-07, 2-core development VM,
``python -m benchmarks.bench_insets --set validation|test`` (benchmarks/results/insets_*.json):
validation (tuned on): 25 of 26 insets found with IoU >= 0.85, 3 of 310 other videos with a
false rectangle; test (not tuned on): 22 of 22 with IoU >= 0.85, 10 of 280 others with a false
rectangle (9 insets, 1 stack: rendered scenes with a fixed camera, whose horizon and walls are
persistent edges too); 16-17 ms a video (the line responses once for all kinds, every candidate
rectangle scored at once; a video of more than ``max_frames`` frames is looked at in that many, so
the cost per video is bounded). Used by ``compare --insets``, ``index build --insets``,
``search --insets`` (hapvr.api.VideoModel.views) and ``extract --insets``
(hapvr.features.extraction.inset_views).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

KINDS = ("picture-in-picture", "border", "stack")


@dataclass(frozen=True)
class InsetConfig:
    min_side: float = 0.2  # an inset's side, as a share of the frame's (smaller ones hold too little)
    max_side: float = 0.92  # larger ones are the frame itself
    # weakest side's line response over the frame's typical (median) response: on the built-in
    # validation benchmark, every true inset scored >= 11.9 and every false rectangle <= 7.8
    min_contrast: float = 10.0
    # the same for a stack's dividing line, along each eighth of it (no false stack seen to set it
    # by); two halves meeting at the same grey along a stretch in over a quarter of the frames
    # leave that eighth below it, and the stack is not split
    stack_contrast: float = 4.0
    candidates: int = 12  # strongest lines tried per axis
    border_std: float = 3.0  # a static border row / column: brightness spread (0-255) below this
    min_border: float = 0.04  # a border narrower than this share of the side is ignored
    persistence: float = 0.25  # quantile over time of the line response (low: present in most frames)
    max_frames: int = 32  # a longer video is looked at in this many frames, evenly spread (bounded cost)


@dataclass(frozen=True)
class Inset:
    """A rectangle of the frame, in pixels of the frames given: ``top, left, height, width``."""

    kind: str
    top: int
    left: int
    height: int
    width: int
    score: float

    def to_dict(self) -> dict:
        return asdict(self)

    def iou(self, other: "Inset | tuple[int, int, int, int]") -> float:
        t, l, h, w = (other.top, other.left, other.height, other.width) if isinstance(other, Inset) else other
        y0, x0 = max(self.top, t), max(self.left, l)
        y1, x1 = min(self.top + self.height, t + h), min(self.left + self.width, l + w)
        inter = max(0, y1 - y0) * max(0, x1 - x0)
        return inter / float(self.height * self.width + h * w - inter)


def _gray(frames) -> np.ndarray:
    """``[T, 3, H, W]`` (uint8 or float, 0-255) or ``[T, H, W]`` -> float32 ``[T, H, W]``."""
    x = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if x.ndim == 4:
        if x.shape[1] != 3:
            raise ValueError(f"frames must be [T, 3, H, W] or [T, H, W], got shape {tuple(x.shape)}")
        x = x.astype(np.float32).mean(1)
    elif x.ndim != 3:
        raise ValueError(f"frames must be [T, 3, H, W] or [T, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 16 or x.shape[2] < 16:
        raise ValueError(f"frames must hold at least one 16 x 16 frame, got shape {tuple(x.shape)}")
    return x.astype(np.float32)


def line_responses(gray: np.ndarray, persistence: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Persistent thin-line responses ``(vertical [H, W - 1], horizontal [H - 1, W])``: between
    columns x and x + 1 (rows y and y + 1), the brightness jump minus the mean of the jumps two
    pixels to either side, clipped at 0, at its ``persistence`` quantile over time."""
    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))
    gx = (x[:, :, 1:] - x[:, :, :-1]).abs()  # [T, H, W - 1]: jump between columns x and x + 1
    gy = (x[:, 1:] - x[:, :-1]).abs()  # [T, H - 1, W]

    def thin(g, dim):
        side = 0.5 * (torch.roll(g, 2, dims=dim) + torch.roll(g, -2, dims=dim))
        return (g - side).clamp_(min=0)

    def quantile(g):  # over time, interpolated linearly between order statistics (numpy's default)
        s = torch.sort(g, dim=0).values
        pos = persistence * (s.shape[0] - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        return (s[lo] + (s[hi] - s[lo]) * (pos - lo)).numpy()

    return quantile(thin(gx, 2)), quantile(thin(gy, 1))


def _peaks(profile: np.ndarray, count: int, spacing: int = 4) -> list[int]:
    """Indices of the ``count`` largest values, each at least ``spacing`` from a larger one."""
    order = np.argsort(profile)[::-1]
    chosen: list[int] = []
    for i in order:
        if all(abs(int(i) - j) >= spacing for j in chosen):
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return chosen


def static_borders(gray: np.ndarray, cfg: InsetConfig = InsetConfig()) -> Inset | None:
    """The picture inside static, flat borders (rows / columns of one brightness in every frame) on
    opposite sides, or None when no pair of sides has borders wider than ``min_border``."""
    T, H, W = gray.shape
    row_flat = gray.std(axis=(0, 2)) < cfg.border_std  # [H]
    col_flat = gray.std(axis=(0, 1)) < cfg.border_std  # [W]

    def run(flags):
        n = 0
        for f in flags:
            if not f:
                break
            n += 1
        return n

    top, bottom = run(row_flat), run(row_flat[::-1])
    left, right = run(col_flat), run(col_flat[::-1])
    if top + bottom >= H or left + right >= W:
        return None  # a flat picture: nothing inside
    widths = (top / H, bottom / H, left / W, right / W)
    keep = [v if v >= cfg.min_border else 0.0 for v in widths]
    # bars come in opposite pairs (letterbox: top and bottom, pillarbox: left and right); a flat
    # band on one side only is more often the sky or a wall than a border
    if not (keep[0] and keep[1]):
        keep[0] = keep[1] = 0.0
    if not (keep[2] and keep[3]):
        keep[2] = keep[3] = 0.0
    if max(keep) == 0.0:
        return None
    top, bottom = round(keep[0] * H), round(keep[1] * H)
    left, right = round(keep[2] * W), round(keep[3] * W)
    return Inset("border", top, left, H - top - bottom, W - left - right, 1.0)


def _pairs(lines: list[int], size: int, cfg: InsetConfig) -> np.ndarray:
    """``[P, 2]`` pairs of candidate lines ``(a, b)``, ``a < b``, whose distance is an inset's side."""
    out = [(a, b) for i, a in enumerate(lines) for b in lines[i + 1:] if cfg.min_side * size <= b - a <= cfg.max_side * size]
    return np.array(out, np.int64).reshape(-1, 2)


def picture_in_picture(gray: np.ndarray, cfg: InsetConfig = InsetConfig(), lines=None) -> Inset | None:
    """The best rectangle whose four sides are persistent edges (a side on the frame's own edge
    counts as present), or None. ``lines``: :func:`line_responses` of ``gray``, when computed."""
    T, H, W = gray.shape
    v, h = lines if lines is not None else line_responses(gray, cfg.persistence)
    level = max(float(np.median(np.concatenate([v.ravel(), h.ravel()]))), 0.5)
    cols = _peaks(v.mean(axis=0), cfg.candidates)  # line x: between columns x and x + 1
    rows = _peaks(h.mean(axis=1), cfg.candidates)
    xp = _pairs(sorted(set([-1, W - 1] + cols)), W, cfg)  # -1 / W - 1: the frame's own left / right edge
    yp = _pairs(sorted(set([-1, H - 1] + rows)), H, cfg)
    if not len(xp) or not len(yp):
        return None
    # every rectangle at once, [x pairs, y pairs]: each side's mean response from running sums
    cv = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(v, axis=0)])  # [H + 1, W - 1]: down each column line
    ch = np.concatenate([np.zeros((h.shape[0], 1)), np.cumsum(h, axis=1)], axis=1)  # [H - 1, W + 1]
    x0, x1 = xp[:, 0:1], xp[:, 1:2]  # [P, 1]
    y0, y1 = yp[None, :, 0], yp[None, :, 1]  # [1, Q]
    width, height = (x1 - x0).astype(np.float64), (y1 - y0).astype(np.float64)
    top, left = y0 + 1, x0 + 1

    def vertical(x):  # the line between columns x and x + 1, over the rectangle's rows
        xc = np.clip(x, 0, W - 2)
        return (cv[y1 + 1, xc] - cv[top, xc]) / height

    def horizontal(y):
        yc = np.clip(y, 0, H - 2)
        return (ch[yc, x1 + 1] - ch[yc, left]) / width

    shape = (len(xp), len(yp))
    sides = [(vertical(x0), np.broadcast_to(x0 >= 0, shape), height),  # left, right, top, bottom
             (vertical(x1), np.broadcast_to(x1 < W - 1, shape), height),
             (horizontal(y0), np.broadcast_to(y0 >= 0, shape), width),
             (horizontal(y1), np.broadcast_to(y1 < H - 1, shape), width)]
    count = sum(present.astype(np.int64) for _, present, _ in sides)
    weakest = np.min([np.where(present, m / level, np.inf) for m, present, _ in sides], axis=0)
    # the rectangle with the most edge seen along its sides: one leaning on the frame's edges
    # (which show nothing) loses to one whose four sides are seen
    evidence = sum(np.where(present, m / level * np.broadcast_to(n, shape), 0.0) for m, present, n in sides)
    # two sides at least inside the frame (else it is a crop of it), each clearly seen
    evidence = np.where((count >= 2) & (weakest >= cfg.min_contrast), evidence, -np.inf)
    i, j = np.unravel_index(int(np.argmax(evidence)), shape)  # ties: the first, as a loop would take
    if not np.isfinite(evidence[i, j]):
        return None
    return Inset("picture-in-picture", int(top[0, j]), int(left[i, 0]), int(height[0, j]), int(width[i, 0]),
                 float(weakest[i, j]))


def two_up(gray: np.ndarray, cfg: InsetConfig = InsetConfig(), lines=None) -> list[Inset]:
    """The two halves of a stack split by one persistent line across the whole frame near its
    middle (0.3 to 0.7 of the side), or []. ``lines``: :func:`line_responses` of ``gray``."""
    T, H, W = gray.shape
    v, h = lines if lines is not None else line_responses(gray, cfg.persistence)
    level = max(float(np.median(np.concatenate([v.ravel(), h.ravel()]))), 0.5)
    found = []
    for axis, prof, size in ((0, h.mean(axis=1), H), (1, v.mean(axis=0), W)):
        lo, hi = int(0.3 * size), int(0.7 * size)
        i = lo + int(np.argmax(prof[lo:hi]))
        # across the whole frame: its weakest eighth must stand out too (an inset's edge, at most
        # 0.92 of the frame, leaves one eighth out)
        line = h[i] if axis == 0 else v[:, i]
        eighths = [line[k * len(line) // 8:(k + 1) * len(line) // 8].mean() for k in range(8)]
        score = min(eighths) / level
        if score >= cfg.stack_contrast:
            found.append((score, axis, i + 1))
    if not found:
        return []
    score, axis, cut = max(found)
    if axis == 0:
        return [Inset("stack", 0, 0, cut, W, float(score)), Inset("stack", cut, 0, H - cut, W, float(score))]
    return [Inset("stack", 0, 0, H, cut, float(score)), Inset("stack", 0, cut, H, W - cut, float(score))]


def detect_insets(frames, cfg: InsetConfig = InsetConfig()) -> list[Inset]:
    """The rectangles of ``frames`` (``[T, 3, H, W]`` 0-255, or ``[T, H, W]``) that hold another
    video, strongest kind first: the picture inside static borders, the halves of a two-up
    stack, a picture-in-picture inset (looked for inside the borders). Empty for a plain video."""
    if len(frames) > cfg.max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, cfg.max_frames).round().astype(np.int64)]
    gray = _gray(frames)
    found: list[Inset] = []
    border = static_borders(gray, cfg)
    inner, dy, dx = gray, 0, 0
    if border is not None:
        found.append(border)
        inner = gray[:, border.top:border.top + border.height, border.left:border.left + border.width]
        dy, dx = border.top, border.left
    if min(inner.shape[1:]) < 16:
        return found
    lines = line_responses(inner, cfg.persistence)
    halves = two_up(inner, cfg, lines)
    if halves:
        return found + [Inset(s.kind, s.top + dy, s.left + dx, s.height, s.width, s.score) for s in halves]
    pip = picture_in_picture(inner, cfg, lines)
    if pip is not None:
        found.append(Inset(pip.kind, pip.top + dy, pip.left + dx, pip.height, pip.width, pip.score))
    return found
