"""Copy localisation: which part of the query was copied from which part of the target
(SPEC section 6; beyond the HAP-VR paper).

Input is a pair's frame-similarity map ``sim [T, T']`` (query frames x target frames sampled at
``fps``); output is a list of :class:`Segment` (query span, target span, in seconds).

Algorithm: the temporal network (TN) of Tan et al., "Scalable detection of partial near-duplicate
videos by visual-temporal consistency" (ACM MM'09), one of the localisation baselines of VCSL
(CVPR'22), written here from its description:

1. Nodes: for each query frame ``i``, its ``top_k`` most similar target frames ``j`` whose
   similarity is at least ``threshold``.
2. Edges ``(i, j) -> (i', j')``: ``0 < i' - i <= max_gap``, ``0 < j' - j <= max_gap`` and slope
   ``(j' - j) / (i' - i)`` in ``[1 / max_speed, max_speed]``: time runs forward in both videos,
   a few unmatched frames may be skipped, and the copy may be played up to ``max_speed`` times
   faster or slower.
3. The heaviest path (sum of node similarities) ending at each node, by dynamic programming
   over query frames (edges only reach ``max_gap`` rows back, so row ``i`` reads a
   ``[top_k, max_gap * top_k]`` block).
4. Repeatedly: take the heaviest path, turn it into a segment (its bounding box), remove every
   node inside that box and update the DP only where the removal changed it. A segment is kept
   when both its spans last ``min_length`` seconds (or ``min_length_share`` of the shorter
   video, if that is less), its mean similarity is ``min_score`` or more
   and it overlaps no better segment by more than ``max_overlap`` (IoU of the boxes).

Frame ``i`` covers ``[i / fps, (i + 1) / fps)``, so a path from query frame ``a`` to ``b`` gives
``query_start = a / fps``, ``query_end = (b + 1) / fps``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from hapvr.ops import spatial_topk_chamfer, topk_count


@dataclass(frozen=True)
class Segment:
    """A copied part: the query's ``[query_start, query_end)`` matches the target's
    ``[target_start, target_end)`` (seconds from each video's start). ``score`` is the mean
    similarity of the matched frame pairs along the path."""

    query_start: float
    query_end: float
    target_start: float
    target_end: float
    score: float
    reversed: bool = False  # the target plays the query's frames backwards

    def to_dict(self) -> dict[str, float | bool]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LocalizationConfig:
    """Parameters of :func:`localize` and their defaults.

    threshold: a frame pair becomes a node when its similarity is at least this (map units);
        with ``threshold_margin``, at least the larger of this and the map's median plus the
        margin (the pair's own background: an edited copy sits lower on the map, and so do its
        unrelated frame pairs).
    top_k: nodes kept per query frame (its most similar target frames).
    max_gap: largest step between consecutive path nodes on either axis, in frames of the map
        (``max_gap - 1`` unmatched frames may be skipped).
    max_speed: allowed playback-speed ratio; an edge's slope ``dj / di`` must lie in
        ``[1 / max_speed, max_speed]`` (2.0 finds 0.5x to 2x copies).
    min_length: shortest reported segment, in seconds, on both the query and the target axis.
    min_length_share: for short videos, the shortest segment is this share of the shorter video
        when that is less than ``min_length`` (a 3-s video cut from two 1.5-s parts of another
        holds two segments; a copy of a 1-s clip gets one).
    min_score: lowest mean similarity along a reported path (map units); with ``score_margin``,
        the larger of this and the map's median plus the margin.
    threshold_margin, score_margin: see above; None: the thresholds alone.
    max_segments: most segments returned per pair.
    max_overlap: a segment whose box has IoU above this with a better-scoring one is dropped.
    max_paths: most paths examined (DP passes) per pair, found or rejected; bounds the time
        spent on noisy maps.
    reverse: also look for copies played backwards (the network run on the map with the
        target's time reversed).
    """

    # threshold, min_score and the margins: calibrated on the validation benchmark's copies
    # (benchmarks/calibrate_localization.py, docs/localization.md)
    threshold: float = 0.15
    top_k: int = 5
    max_gap: int = 5
    max_speed: float = 2.0
    min_length: float = 3.0
    min_length_share: float = 0.4
    min_score: float = 0.25
    max_segments: int = 10
    max_overlap: float = 0.3
    max_paths: int = 100
    reverse: bool = True
    threshold_margin: float | None = None
    score_margin: float | None = 0.06

    def __post_init__(self):
        for name in ("threshold", "min_score"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        for name in ("threshold_margin", "score_margin"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None, got {value!r}")
        for name in ("top_k", "max_gap", "max_segments", "max_paths"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.max_speed) and self.max_speed >= 1.0):
            raise ValueError(f"max_speed must be a finite number >= 1 (1 = same speed only), got {self.max_speed!r}")
        if not (math.isfinite(self.min_length) and self.min_length >= 0.0):
            raise ValueError(f"min_length must be a finite number of seconds >= 0, got {self.min_length!r}")
        if not (0.0 <= self.min_length_share <= 1.0):
            raise ValueError(f"min_length_share must be a share in [0, 1], got {self.min_length_share!r}")
        if not (0.0 <= self.max_overlap <= 1.0):
            raise ValueError(f"max_overlap must be an IoU in [0, 1], got {self.max_overlap!r}")


# The two kinds of map. Use as ``localize(sim, fps, **PRESETS[name])``.
PRESETS: dict[str, dict] = {
    # Region Chamfer maps of L2-normalised features (what compare and search localise on): about
    # [0, 1], identical frames 1. The defaults, calibrated on the validation benchmark's copies.
    "chamfer": dataclasses.asdict(LocalizationConfig()),
    # The paper head's comparator output after Hardtanh: [-1, 1], unrelated frames near or below
    # 0; one cell per 4 frames: pass fps = extraction fps / 4. (Not calibrated.)
    "trained": dataclasses.asdict(LocalizationConfig(threshold=0.3, min_score=0.5, threshold_margin=None,
                                                     score_margin=None)),
}

_D = LocalizationConfig  # the dataclass's fields hold the defaults


def localize(sim, fps: float = 1.0, *, threshold: float = _D.threshold, top_k: int = _D.top_k,
             max_gap: int = _D.max_gap, max_speed: float = _D.max_speed, min_length: float = _D.min_length,
             min_length_share: float = _D.min_length_share, min_score: float = _D.min_score,
             max_segments: int = _D.max_segments,
             max_overlap: float = _D.max_overlap, max_paths: int = _D.max_paths,
             reverse: bool = _D.reverse, threshold_margin: float | None = _D.threshold_margin,
             score_margin: float | None = _D.score_margin) -> list[Segment]:
    """Copied segments of a pair from its frame-similarity map, best first.

    ``sim``: ``[T, T']`` torch tensor or array, query frames x target frames; ``-inf`` marks
    cells to ignore (padding); NaN is refused. ``fps``: frames per second of the map's axes (1.0
    for hapvr's 1-fps frame maps; a quarter of that for the comparator's output).

    Parameters (defaults in brackets; see :class:`LocalizationConfig`): ``threshold`` [0.15],
    ``threshold_margin`` [None], ``min_score`` [0.25], ``score_margin`` [0.06], ``top_k`` [5],
    ``max_gap`` [5 frames], ``max_speed`` [2.0], ``min_length`` [3.0 s], ``min_length_share``
    [0.4], ``max_segments`` [10], ``max_overlap`` [0.3], ``max_paths`` [100], ``reverse`` [True].
    The defaults suit region Chamfer maps (calibrated, docs/localization.md); ``PRESETS["trained"]``
    is for the paper head's comparator output. A short video's segments may be shorter than
    ``min_length``, down to ``min_length_share`` of the shorter video: a copy of a 1-s clip gets
    a segment.

    Returns segments in seconds sorted by ``score`` (mean similarity along the path), best first.
    :func:`localize_explained` also says why nothing was found.
    """
    return localize_explained(sim, fps, threshold=threshold, top_k=top_k, max_gap=max_gap, max_speed=max_speed,
                              min_length=min_length, min_length_share=min_length_share, min_score=min_score,
                              max_segments=max_segments, max_overlap=max_overlap, max_paths=max_paths, reverse=reverse,
                              threshold_margin=threshold_margin, score_margin=score_margin)[0]


def localize_explained(sim, fps: float = 1.0, **options) -> tuple[list[Segment], str | None]:
    """:func:`localize`'s segments and, when there are none, why: the strongest run of matching
    frames on the map, and the bar it did not meet."""
    cfg = LocalizationConfig(**options)
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.floating, np.integer)) \
            or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    m = _as_map(sim)
    if m.numel() == 0:
        return [], "a video with no frames"
    fps = float(fps)
    cfg = _for_this_map(cfg, m, fps)
    found = _TemporalNetwork(m, cfg).segments(fps)
    if cfg.reverse and m.shape[0] > 1 and m.shape[1] > 1:
        end = m.shape[1] / fps  # a path in the time-reversed map, mapped back onto the target's time
        backward = [Segment(s.query_start, s.query_end, end - s.target_end, end - s.target_start, s.score, True)
                    for s in _TemporalNetwork(m.flip(1), cfg).segments(fps)]
        found = _one_direction_each(found + backward)
    found = _best_apart(found, cfg, fps)
    return found, None if found else _why_none(m, cfg, fps)


def _for_this_map(cfg: LocalizationConfig, m: torch.Tensor, fps: float) -> LocalizationConfig:
    """The thresholds of this pair: over the map's background where margins are set, and a
    minimum length of at most ``min_length_share`` of the shorter video (a copy of a 1-s clip is
    1 s long)."""
    changes = dict(min_length=min(cfg.min_length, cfg.min_length_share * min(m.shape) / fps))
    if cfg.threshold_margin is not None or cfg.score_margin is not None:
        finite = m[torch.isfinite(m)]
        background = float(finite.median()) if finite.numel() else 0.0
        if cfg.threshold_margin is not None:
            changes["threshold"] = max(cfg.threshold, background + cfg.threshold_margin)
        if cfg.score_margin is not None:
            changes["min_score"] = max(cfg.min_score, background + cfg.score_margin)
    return dataclasses.replace(cfg, **changes)


def _why_none(m: torch.Tensor, cfg: LocalizationConfig, fps: float) -> str:
    """Why the map of this pair (``cfg``: its own thresholds) has no segment: the strongest run of
    matching frames and the bar it missed."""
    def run(s: Segment) -> str:
        length = min(s.query_end - s.query_start, s.target_end - s.target_start)
        return f"the strongest run of matching frames scores {s.score:.2f} over {length:g} s"

    one = dict(max_segments=1, max_paths=1, min_length=0.0)
    short = _TemporalNetwork(m, dataclasses.replace(cfg, **one)).segments(fps)
    if short:  # similar enough, too short
        return f"{run(short[0])}, shorter than the {cfg.min_length:g} s a segment needs"
    weak = _TemporalNetwork(m, dataclasses.replace(cfg, min_score=-1.0, **one)).segments(fps)
    if weak:
        return f"{run(weak[0])}, below the mean frame similarity of {cfg.min_score:.2f} a segment needs"
    finite = m[torch.isfinite(m)]
    best = float(finite.max()) if finite.numel() else float("nan")
    return f"no frame pair reaches {cfg.threshold:.2f} (the most similar pair: {best:.2f})"


def _best_apart(found: list[Segment], cfg: LocalizationConfig, fps: float) -> list[Segment]:
    """The best-scoring segments, none overlapping a better one by more than ``max_overlap``."""
    kept: list[Segment] = []
    for s in sorted(found, key=lambda s: -s.score):
        box = _frames_box(s, fps)
        if all(_box_iou(box, _frames_box(k, fps)) <= cfg.max_overlap for k in kept):
            kept.append(s)
        if len(kept) == cfg.max_segments:
            break
    return kept


def _one_direction_each(found: list[Segment]) -> list[Segment]:
    """Where a forward and a backward segment overlap, the longer one: a still or slowly moving shot
    matches both ways in short runs, and the copy is the long run."""
    kept: list[Segment] = []
    for s in sorted(found, key=lambda s: -min(s.query_end - s.query_start, s.target_end - s.target_start)):
        if not any(k.reversed != s.reversed and _overlap(s, k) for k in kept):
            kept.append(s)
    return kept


def _overlap(a: Segment, b: Segment) -> bool:
    """Whether two segments share time on both the query and the target axis."""
    return (min(a.query_end, b.query_end) > max(a.query_start, b.query_start)
            and min(a.target_end, b.target_end) > max(a.target_start, b.target_start))


def _frames_box(s: Segment, fps: float) -> tuple[int, int, int, int]:
    return (round(s.query_start * fps), round(s.query_end * fps), round(s.target_start * fps),
            round(s.target_end * fps))


def chamfer_frame_map(query: torch.Tensor, target: torch.Tensor, k_s: float) -> torch.Tensor:
    """``[T, T']`` region TopK-Chamfer map (eq. 3) of the L2-normalised features ``[T, R, D]`` of
    two videos, before any learned attention: about 1 for the same frame whatever the model, so
    the default parameters apply to every model (what compare localises on)."""
    qa = torch.nn.functional.normalize(query.float(), dim=-1)
    ta = torch.nn.functional.normalize(target.float(), dim=-1)
    return spatial_topk_chamfer(qa[None].contiguous(), ta[None].contiguous(), topk_count(k_s, qa.shape[1]))[0, 0]


def _as_map(sim) -> torch.Tensor:
    if isinstance(sim, torch.Tensor):
        m = sim.detach()
    else:
        a = np.asarray(sim)
        m = torch.from_numpy(a if a.flags.writeable else a.copy())  # torch warns on read-only arrays
    if m.dim() != 2:
        raise ValueError(f"sim must be a [T, T'] map (query frames x target frames), got shape {tuple(m.shape)}")
    if m.dtype not in (torch.float32, torch.float64):
        m = m.to(torch.float32 if m.is_floating_point() else torch.float64)
    m = m.cpu()
    if m.numel() and not bool(m.max() < math.inf):  # max propagates NaN
        raise ValueError("sim contains NaN or +inf (use -inf to mark cells to ignore)")
    return m


class _TemporalNetwork:
    """The node graph of one map and the heaviest-path DP over it.

    Nodes live in a dense ``[T, K]`` grid (query frame x rank among its top-K target frames):
    ``cols`` their target frames, ``vals`` their similarities, ``alive`` whether they are nodes.
    A node weighs its similarity less ``min_score``: a frame pair below the segment's bar lowers
    a path, so a copy's path does not run on into the weak matches around it (its reported score
    is still the mean similarity along it). ``edges[i, k, (d - 1) * K + k2]`` says node
    ``(i - d, k2)`` may precede node ``(i, k)``. ``best`` holds the heaviest path weight ending at
    each node (``-inf`` for no node), stored ``G`` rows down so that row ``i``'s predecessors are
    the contiguous rows ``i .. i + G - 1``.
    """

    def __init__(self, m: torch.Tensor, cfg: LocalizationConfig):
        self.cfg = cfg
        T, T2 = m.shape
        K = min(cfg.top_k, T2)
        G = cfg.max_gap
        self.T, self.K, self.G = T, K, G
        top = torch.topk(m, K, dim=1, sorted=False).indices.sort(dim=1).values  # by target frame
        self.cols = top.numpy().astype(np.int64)
        self.vals = m.gather(1, top).numpy().astype(np.float64)
        self.alive = self.vals >= cfg.threshold
        self.weights = self.vals - cfg.min_score
        edges = np.zeros((T, K, G * K), dtype=bool)
        for d in range(1, min(G, T - 1) + 1):
            dj = self.cols[d:, :, None] - self.cols[:-d, None, :]  # [T - d, K, K]
            ok = (dj >= 1) & (dj <= G) & (dj * cfg.max_speed >= d) & (dj <= d * cfg.max_speed)
            edges[d:, :, (d - 1) * K:d * K] = ok
        self.edges = edges
        self._rows = np.arange(K)
        self._full_dp()

    def _full_dp(self):
        G = self.G
        self.best = np.full((self.T + G, self.K), -np.inf)
        self.back = np.full((self.T, self.K), -1, dtype=np.int64)
        # Only rows with a node can end a path; rows with a node but no possible predecessor
        # start paths and need no DP step.
        needs_dp = self.alive.any(axis=1) & self.edges.any(axis=(1, 2))
        self.best[G:] = np.where(self.alive, self.weights, -np.inf)
        for i in np.nonzero(needs_dp)[0]:
            self._relax(i)

    def _relax(self, i: int) -> bool:
        """Recompute row ``i`` of the DP from rows ``i - G .. i - 1``; True if it changed."""
        G = self.G
        cand = self.best[i:i + G][::-1].reshape(-1)  # rows i-1, i-2, ..., i-G
        reach = np.where(self.edges[i], cand, -np.inf)  # [K, G * K]
        arg = reach.argmax(axis=1)
        prev = reach[self._rows, arg]
        extend = prev > 0.0  # a path with a non-positive sum is better not prefixed
        new = np.where(self.alive[i], self.weights[i] + np.where(extend, prev, 0.0), -np.inf)
        old = self.best[i + G]
        changed = not np.array_equal(new, old)
        self.best[i + G] = new
        self.back[i] = np.where(extend & self.alive[i], arg, -1)
        return changed

    def _path(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        qs, ks = [i], [k]
        while self.back[i, k] >= 0:
            a = int(self.back[i, k])
            i, k = i - (a // self.K + 1), a % self.K
            qs.append(i)
            ks.append(k)
        q = np.array(qs[::-1])
        return q, np.array(ks[::-1])

    def _remove_box(self, q0: int, q1: int, t0: int, t1: int):
        """Delete the nodes inside ``[q0, q1] x [t0, t1]`` and repair the DP downstream: a row
        changes only if a row within ``G`` before it changed (removal only lowers sums)."""
        inside = (self.cols[q0:q1 + 1] >= t0) & (self.cols[q0:q1 + 1] <= t1)
        self.alive[q0:q1 + 1] &= ~inside
        changed = np.zeros(self.T, dtype=bool)
        for i in range(q0, self.T):
            if i > q1 and not changed[max(0, i - self.G):i].any():
                break
            changed[i] = self._relax(i)

    def segments(self, fps: float) -> list[Segment]:
        cfg = self.cfg
        min_frames = cfg.min_length * fps
        # A keepable path has a mean similarity of min_score or more, so a weight of 0 or more; the
        # heaviest remaining weight only falls as nodes are removed, so below 0 nothing is left to find.
        stop_below = -1e-9  # float slack
        kept: list[tuple[Segment, tuple[int, int, int, int]]] = []
        for _ in range(cfg.max_paths):
            flat = int(self.best[self.G:].argmax())
            top = self.best[self.G:].flat[flat]
            if not np.isfinite(top) or top < stop_below:
                break
            q, k = self._path(*divmod(flat, self.K))
            t = self.cols[q, k]
            box = (int(q[0]), int(q[-1]) + 1, int(t.min()), int(t.max()) + 1)  # frames, end exclusive
            self._remove_box(box[0], box[1] - 1, box[2], box[3] - 1)
            score = float(self.vals[q, k].mean())
            long_enough = min(box[1] - box[0], box[3] - box[2]) >= min_frames
            if not long_enough or score < cfg.min_score:
                continue
            if any(_box_iou(box, other) > cfg.max_overlap for _, other in kept):
                continue
            kept.append((Segment(box[0] / fps, box[1] / fps, box[2] / fps, box[3] / fps, score), box))
            if len(kept) == cfg.max_segments:
                break
        return sorted((s for s, _ in kept), key=lambda s: -s.score)


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two ``(q0, q1, t0, t1)`` boxes (end-exclusive frames)."""
    iq = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    it = max(0, min(a[3], b[3]) - max(a[2], b[2]))
    inter = iq * it
    union = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return inter / union if union > 0 else 0.0
