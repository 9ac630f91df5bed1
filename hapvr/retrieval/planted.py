"""Synthetic region features with planted copies, for the retrieval tests and benchmark.

Random unit vectors would make every unrelated pair equally dissimilar, so a coarse stage could
not miss anything but the copies; real collections are not like that. Here videos are cut into
shots, each shot filmed in one of a bank of shared *scenes* (drawn with Zipf popularity, so
some scenes recur in many videos), with per-shot, per-region and per-frame variation. Unrelated
videos that share a scene are partially similar, which gives the exhaustive ranking a graded
tail below the copies, as real distractors do.

A *planted group* is a source video and copies of it, each made by one temporal edit
(:func:`hapvr.data.augment.temporal_edit_indices`: segments dropped or shuffled, fast forward,
slow motion, reverse, pause), an optional sub-clip (30-90 % of the edit, contiguous), a
copy-wide shift (a colour change moves every region the same way) and per-region noise.

Every video is a pure function of ``(seed, its index)``, so a collection of any size streams
without being held in memory, and a copy regenerates its source on demand.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from hapvr.data.augment import temporal_edit_indices


@dataclass(frozen=True)
class PlantedConfig:
    n_videos: int = 1000  # indexed videos: planted groups plus distractors
    planted_fraction: float = 0.2  # of the indexed videos that belong to a planted group
    copies_per_source: int = 3  # indexed copies beside each source
    min_frames: int = 10
    max_frames: int = 60
    regions: int = 9
    dim: int = 512
    videos_per_scene: float = 2.0  # scene bank size = n_videos / this
    scene_zipf: float = 1.1  # popularity exponent of the scenes
    mean_shot_frames: float = 12.0
    shot_spread: float = 1.0  # shot centre = scene + this x noise (relative norms)
    region_spread: float = 1.0  # region = shot centre + this x noise
    frame_drift: float = 0.4  # AR(1) drift of a region along its shot
    copy_shift: float = 0.3  # one offset added to every region of a copy
    copy_noise: float = 0.4  # per-region noise of a copy
    p_subclip: float = 0.4  # a copy keeps only a contiguous 30-90 % of its source
    seed: int = 0


def _unit_noise(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Gaussian vectors of expected norm 1 along the last axis."""
    return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-1]))


def _key_ints(key: tuple) -> list[int]:
    """A video's key as seed integers (``str`` hashes differ between processes)."""
    return [ord(k[0]) if isinstance(k, str) else int(k) for k in key]


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class PlantedCollection:
    """Indexed videos ``v000000...`` (sources, their copies and distractors, shuffled) and held-out
    query copies, all reproducible from :class:`PlantedConfig`.

    ``groups[source_id]`` lists the indexed copies of ``source_id``; ``group_of[vid]`` is the
    source of a planted video (itself for a source), absent for distractors."""

    def __init__(self, cfg: PlantedConfig = PlantedConfig()):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        n_scenes = max(8, int(cfg.n_videos / cfg.videos_per_scene))
        self.scenes = _normalize(rng.standard_normal((n_scenes, cfg.dim), dtype=np.float32))
        weights = 1.0 / np.arange(1, n_scenes + 1) ** cfg.scene_zipf
        self._scene_cdf = np.cumsum(weights / weights.sum())
        group_size = 1 + cfg.copies_per_source
        n_groups = int(cfg.n_videos * cfg.planted_fraction) // group_size
        # role of each indexed slot: ("source", g), ("copy", g, j) or ("distractor", k)
        roles = [("source", g) for g in range(n_groups)]
        roles += [("copy", g, j) for g in range(n_groups) for j in range(cfg.copies_per_source)]
        roles += [("distractor", k) for k in range(cfg.n_videos - len(roles))]
        random.Random(cfg.seed).shuffle(roles)
        self._roles = roles
        self.ids = [f"v{i:06d}" for i in range(cfg.n_videos)]
        source_slot = {r[1]: i for i, r in enumerate(roles) if r[0] == "source"}
        self.sources = [self.ids[source_slot[g]] for g in range(n_groups)]
        self.groups: dict[str, list[str]] = {s: [] for s in self.sources}
        self.group_of: dict[str, str] = {}
        for i, r in enumerate(roles):
            if r[0] == "source":
                self.group_of[self.ids[i]] = self.ids[i]
            elif r[0] == "copy":
                src = self.sources[r[1]]
                self.groups[src].append(self.ids[i])
                self.group_of[self.ids[i]] = src

    def __len__(self) -> int:
        return self.cfg.n_videos

    # --- generation ---------------------------------------------------------------------------

    def _original(self, key: tuple) -> np.ndarray:
        """An unedited video ``[T, R, D]`` float32 (unit regions) from its key."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 1, *_key_ints(key)])
        T = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
        out = np.empty((T, cfg.regions, cfg.dim), dtype=np.float32)
        t = 0
        while t < T:
            length = min(T - t, 1 + int(rng.geometric(1.0 / cfg.mean_shot_frames)))
            scene = self.scenes[min(int(np.searchsorted(self._scene_cdf, rng.random())), len(self.scenes) - 1)]
            centre = scene + cfg.shot_spread * _unit_noise(rng, cfg.dim)
            regions = centre + cfg.region_spread * _unit_noise(rng, cfg.regions, cfg.dim)
            drift = np.zeros_like(regions)
            for s in range(length):
                drift = 0.9 * drift + cfg.frame_drift * np.sqrt(1 - 0.81) * _unit_noise(rng, cfg.regions, cfg.dim)
                out[t + s] = regions + drift
            t += length
        return _normalize(out)

    def _copy(self, source: np.ndarray, key: tuple, subclip: bool | None = None) -> np.ndarray:
        return self._copy_and_frames(source, key, subclip)[0]

    def _copy_and_frames(self, source: np.ndarray, key: tuple,
                         subclip: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A copy of ``source`` and, per copy frame, the source frame it shows."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 2, *_key_ints(key)])
        rnd = random.Random(int(rng.integers(2**62)))
        _, idx = temporal_edit_indices(source.shape[0], rnd)
        idx = idx.numpy()
        if subclip if subclip is not None else rnd.random() < cfg.p_subclip:
            keep = max(1, round(len(idx) * rnd.uniform(0.3, 0.9)))
            start = rnd.randrange(len(idx) - keep + 1)
            idx = idx[start: start + keep]
        idx = idx[: cfg.max_frames]
        x = source[idx]
        x = x + cfg.copy_shift * _unit_noise(rng, cfg.dim) + cfg.copy_noise * _unit_noise(rng, *x.shape)
        return _normalize(x).astype(np.float32), idx

    def source_coverage(self, vid: str) -> float | None:
        """The share of its source's time an indexed copy shows (runs of source frames it plays,
        forward or backward, a step of at most 2 frames apart, joined); None for a source or a
        distractor. A copy showing 0.8 or more is the same video as its source for ``--duplicates``."""
        role = self._roles[int(vid[1:])]
        if role[0] != "copy":
            return None
        source = self._original(("s", role[1]))
        _, idx = self._copy_and_frames(source, ("c", role[1], role[2]))
        runs, run = [], [int(idx[0])]
        for a, b in zip(idx[:-1], idx[1:]):
            if abs(int(b) - int(a)) > 2:
                runs.append(run)
                run = []
            run.append(int(b))
        runs.append(run)
        covered = set()
        for r in runs:
            covered.update(range(min(r), max(r) + 1))
        return len(covered) / source.shape[0]

    def video(self, vid: str) -> np.ndarray:
        """Features ``[T, R, D]`` float32 of an indexed video."""
        role = self._roles[int(vid[1:])]
        if role[0] == "distractor":
            return self._original(("d", role[1]))
        source = self._original(("s", role[1]))
        return source if role[0] == "source" else self._copy(source, ("c", role[1], role[2]))

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for vid in self.ids:
            yield vid, self.video(vid)

    def query(self, number: int, frames: int | None = None) -> tuple[np.ndarray, str]:
        """Held-out copy ``number`` (of source ``number % len(sources)``), never indexed, and its
        source id. With ``frames``, it is cut or filled to exactly that length: a longer copy keeps
        a window, a shorter one is followed by frames of a video outside the collection (a
        compilation), so the copy is only part of the query."""
        g = number % len(self.sources)
        x = self._copy(self._original(("s", g)), ("q", number))
        if frames is not None:
            if x.shape[0] >= frames:
                start = random.Random(number).randrange(x.shape[0] - frames + 1)
                x = x[start: start + frames]
            else:
                filler = self._original(("f", number))
                while filler.shape[0] < frames - x.shape[0]:
                    filler = np.concatenate([filler, filler])
                x = np.concatenate([x, filler[: frames - x.shape[0]]])
        return x, self.sources[g]


def planted_descriptors(n: int, dim: int = 512, n_scenes: int | None = None, seed: int = 0,
                        block: int = 65536) -> Iterator[np.ndarray]:
    """``n`` synthetic video descriptors ``[*, dim]`` float32 in blocks: each the normalised sum of
    2-4 Zipf-popular scene vectors plus noise, so they cluster as real video descriptors do
    (uniform random vectors would be the easiest case for brute force and the worst for IVF)."""
    rng = np.random.default_rng([seed, 3])
    n_scenes = n_scenes or max(8, n // 2)
    scenes = _normalize(rng.standard_normal((n_scenes, dim), dtype=np.float32))
    cdf = np.cumsum(1.0 / np.arange(1, n_scenes + 1) ** 1.1)
    cdf /= cdf[-1]
    for start in range(0, n, block):
        m = min(block, n - start)
        picks = np.minimum(np.searchsorted(cdf, rng.random((m, 4))), n_scenes - 1)
        used = rng.integers(2, 5, size=m)[:, None] > np.arange(4)[None, :]
        x = (scenes[picks] * used[..., None]).sum(1) + 0.5 * _unit_noise(rng, m, dim)
        yield _normalize(x).astype(np.float32)
