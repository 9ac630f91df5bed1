"""Streaming training batches: videos decoded, augmented afresh and featurised every step.

The cached view pool (:mod:`hapvr.training.pool`) stores a few fixed augmentations per video;
at paper scale (~100k videos, :func:`cached_pool_bytes`) it does not fit, and it never shows a
video in a new augmentation. This path follows SPEC section 3 instead:

- :class:`StepSampler` (a batch sampler) gives the videos of step ``s``: each epoch is one
  permutation of the videos cut into batches (DDP ranks take consecutive batches of it), so
  the videos of a step are a pure function of ``(seed, step, rank, world)``.
- :class:`ClipDataset` (in ``DataLoader`` workers) decodes one video with PyAV at ``fps``,
  draws a weak window of ``clip_frames`` samples anywhere in it and a strong window up to
  ``clip_shift x clip_frames`` away, and builds the weak view (crop + flip) and the strong view
  (one temporal edit, crop, RandAugment, overlays, blur) with :mod:`hapvr.data.augment`. Every
  random choice comes from ``random.Random`` seeded with ``(seed, step, rank, slot)``, so a
  step's batch is the same for any number of workers and a run resumed at step ``s`` (a new
  :class:`StreamingBatches` with ``start_step=s``) draws what an uninterrupted run would. No
  state needs checkpointing.
- :meth:`ClipDataset.collate` pastes, with probability ``p_mixup``, the strong view of another
  video of the same batch into a strong view (video-in-video), so the extra positive pair is in
  the batch and :func:`~hapvr.data.augment.positive_matrix` marks it.
- :class:`StreamingBatches` runs the frozen backbone (+ PCA whitening) and the teacher on the
  training device and yields the trainer's :class:`~hapvr.training.batches.Batch`.

Videos shorter than a clip are looped, as the HAP-VR release does (its ``random_temporal_crop``,
inherited from S2VS, concatenates a short video with itself until it holds a window): every
clip has ``clip_frames`` frames before its temporal edit. Undecodable videos are skipped with
a warning and replaced by a video drawn deterministically from outside the batch.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F

from hapvr.data import augment
from hapvr.data.video import (VideoDecodeError, decode_samples, expected_samples, frame_folder_names,
                              load_frame_folder, to_tensor)
from hapvr.training.batches import Batch

MAX_REPLACEMENTS = 32  # undecodable videos tried in a row for one slot before the run stops
PCA_STEP = -1  # steps below 0 draw the PCA sample, apart from every training step's draws


def step_rng(*parts) -> random.Random:
    """A ``random.Random`` that depends only on ``parts`` (the same in every process, unlike
    ``hash()`` of a string)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


# --- which videos a step draws ------------------------------------------------------------------


class NoDecodableVideo(RuntimeError):
    """No video could be decoded for a batch slot (every candidate failed): the data folder is
    (nearly) all broken. The trainer turns it into one error line (:attr:`reason`)."""

    @property
    def reason(self) -> str:
        """The message alone: raised in a DataLoader worker, the text also holds its traceback."""
        return str(self).strip().splitlines()[-1].split("NoDecodableVideo: ", 1)[-1]


class ClipKey(NamedTuple):
    """What a worker needs to build one video's clips: the step, the video's slot in the batch,
    the video drawn and every video of the batch (a replacement comes from outside it)."""

    step: int
    slot: int
    video: int
    batch: tuple[int, ...]


class StepSampler:
    """Batch sampler of :class:`ClipKey` lists, steps ``start_step`` to ``steps`` (``None``: no end).

    Epoch ``e`` is a permutation of the videos seeded by ``(seed, e)`` and cut into batches of
    ``batch_videos`` (the remainder waits for another epoch, as with ``drop_last``); step ``s`` of
    rank ``r`` takes batch ``s * world + r``. A batch never holds a video twice.
    """

    def __init__(self, n_videos: int, batch_videos: int, seed: int = 0, rank: int = 0, world: int = 1,
                 start_step: int = 0, steps: int | None = None):
        if n_videos < 1:
            raise ValueError("the stream needs at least one video")
        self.n, self.b = n_videos, min(batch_videos, n_videos)
        self.seed, self.rank, self.world = seed, rank, world
        self.start, self.steps = start_step, steps
        self._epoch: tuple[int, list[int]] | None = None  # the last permutation, kept for speed only

    def videos(self, step: int) -> list[int]:
        per_epoch = self.n // self.b
        epoch, k = divmod(step * self.world + self.rank, per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            order = list(range(self.n))
            step_rng(self.seed, "epoch", epoch).shuffle(order)
            self._epoch = (epoch, order)
        return self._epoch[1][k * self.b:(k + 1) * self.b]

    def keys(self, step: int) -> list[ClipKey]:
        vids = self.videos(step)
        return [ClipKey(step, slot, v, tuple(vids)) for slot, v in enumerate(vids)]

    def __iter__(self) -> Iterator[list[ClipKey]]:
        step = self.start
        while self.steps is None or step < self.steps:
            yield self.keys(step)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless stream has no length")
        return max(self.steps - self.start, 0)


# --- one video's clips (runs in the DataLoader workers) ----------------------------------------


def plan_windows(n: int, clip_frames: int, clip_shift: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """Sample indices of the weak and the strong window of a video of ``n`` samples.

    A video shorter than a clip is concatenated with itself until it holds one (the release's
    looping); the strong window starts up to ``int(clip_shift * clip_frames)`` samples before or
    after the weak one, as :func:`~hapvr.training.batches.draw_batch` does.
    """
    seq = list(range(n))
    while len(seq) < clip_frames:
        seq = seq + seq
    a0 = rng.randint(0, len(seq) - clip_frames)
    reach = int(clip_frames * clip_shift)
    b0 = min(max(a0 + rng.randint(-reach, reach), 0), len(seq) - clip_frames)
    return seq[a0:a0 + clip_frames], seq[b0:b0 + clip_frames]


@dataclass
class VideoClips:
    """The two clips of one video of a step, in pixels (``uint8``, ``size x size``).

    ``anchor`` is the weak crop of each distinct source sample the step uses (``source``: their
    sample indices at ``fps``): the weak clip's samples first (``n_weak`` rows), then, when the
    teacher sees the weak view only, the strong clip's other samples. The weak clip is
    ``anchor[weak_rows]``; ``strong`` is the strong view (video-in-video pasted in by the collate
    function), showing samples ``strong_source``, whose anchor rows are ``strong_rows`` (-1 where
    the anchor lacks one).
    """

    step: int
    slot: int
    video: int
    anchor: torch.Tensor
    n_weak: int
    source: torch.Tensor
    weak_rows: torch.Tensor
    strong: torch.Tensor | None = None
    strong_source: torch.Tensor | None = None
    strong_rows: torch.Tensor | None = None
    edit: str = "none"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ClipBatch:
    """A step's clips before the networks: per video its :class:`VideoClips`, and per clip
    (weak, strong, weak, strong, ...) the labels of :class:`~hapvr.training.batches.Batch`."""

    step: int
    videos: list[VideoClips]
    lengths: torch.Tensor
    positives: torch.Tensor
    video_index: torch.Tensor
    guests: torch.Tensor
    skipped: list[tuple[str, str]]
    warnings: list[tuple[str, str]]
    seconds: dict[str, float]

    def pin_memory(self) -> "ClipBatch":
        for v in self.videos:
            v.anchor = v.anchor.pin_memory()
            if v.strong is not None:
                v.strong = v.strong.pin_memory()
        return self


class ClipDataset(torch.utils.data.Dataset):
    """``dataset[ClipKey] -> VideoClips``; ``collate`` makes the step's :class:`ClipBatch`.

    ``strong=False`` builds weak views only (the PCA sample). ``anchor_strong`` adds the strong
    clip's source samples to the anchor (for a teacher that sees the weak view only).
    """

    def __init__(self, paths: list[str], clip_frames: int = 28, fps: float = 1.0, clip_shift: float = 0.25,
                 seed: int = 0, rank: int = 0, aug: augment.AugmentConfig | None = None, strong: bool = True,
                 anchor_strong: bool = True):
        self.paths = list(paths)
        self.clip_frames, self.fps, self.clip_shift = clip_frames, fps, clip_shift
        self.seed, self.rank = seed, rank
        self.aug = aug or augment.AugmentConfig()
        self.strong, self.anchor_strong = strong, anchor_strong
        self._bad: dict[int, str] = {}  # per process, to fail fast on a file seen broken; never changes a draw

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: ClipKey) -> VideoClips:
        t0 = time.perf_counter()
        skipped, video, frames = [], key.video, None
        for video in self._candidates(key):
            try:
                frames, weak_src, strong_src, warns = self._decode(video, key)
                break
            except VideoDecodeError as exc:
                self._bad[video] = str(exc)
                skipped.append((self.paths[video], str(exc)))
        if frames is None:
            raise NoDecodableVideo(f"step {key.step}: no decodable video for slot {key.slot} after {len(skipped)} "
                                   f"failures in a row ({', '.join(p for p, _ in skipped[:5])} ...) and "
                                   f"{len(self._bad)} known broken files; check the data folder")
        t1 = time.perf_counter()
        clips = self._views(key, video, frames, weak_src, strong_src)
        clips.skipped = skipped
        clips.warnings = [(self.paths[video], w) for w in warns]
        clips.seconds = {"decode": t1 - t0, "augment": time.perf_counter() - t1}
        return clips

    def _candidates(self, key: ClipKey) -> Iterator[int]:
        """The drawn video, then replacements: first from outside the batch, slot ``k`` taking
        every ``B``-th video of a permutation seeded by the step from the ``k``-th on (two slots
        never take the same one), then the rest of it, then (a duplicate, when the batch holds
        every video) the batch's other videos."""
        if key.video not in self._bad:
            yield key.video
        batch = set(key.batch)
        outside = [v for v in range(len(self.paths)) if v not in batch]
        step_rng(self.seed, "spare", key.step, self.rank).shuffle(outside)
        mine = outside[key.slot::len(key.batch)]
        taken = set(mine)
        order = mine + [v for v in outside if v not in taken] + [v for v in key.batch if v != key.video]
        tried = 0
        for v in order:
            if v not in self._bad:
                yield v
                tried += 1
                if tried >= MAX_REPLACEMENTS:
                    return

    def _decode(self, video: int, key: ClipKey):
        """``({sample index: uint8 [3, H, W]}, weak window, strong window, warnings)``, decoding
        only the windows' samples."""
        path = self.paths[video]

        def plan(n: int):
            weak, strong = plan_windows(n, self.clip_frames, self.clip_shift,
                                        step_rng(self.seed, "window", key.step, self.rank, key.slot))
            return weak, strong, sorted(set(weak) | set(strong)) if self.strong else sorted(set(weak))

        if os.path.isdir(path):
            weak, strong, need = plan(len(frame_folder_names(path)))
            return dict(zip(need, load_frame_folder(path, indices=need))), weak, strong, []
        n = expected_samples(path, self.fps)
        warns: list[str] = []  # a truncation is found by the decoding that runs into it, the first one
        for _ in range(2):  # a file may hold fewer samples than it declares: plan again on the count
            if n is None:
                _, n = decode_samples(path, self.fps, keep=())
            weak, strong, need = plan(n)
            images, n = decode_samples(path, self.fps, keep=set(need), max_frames=need[-1] + 1, warnings=warns)
            if len(images) == len(need):
                size = images[need[0]].size
                pixels = to_tensor([images[k] if images[k].size == size else images[k].resize(size) for k in need])
                return dict(zip(need, pixels)), weak, strong, warns
        raise VideoDecodeError(f"{path}: {n} frames at {self.fps} fps on the second decoding, fewer than the first")

    def _views(self, key: ClipKey, video: int, frames: dict, weak_src: list[int], strong_src: list[int]) -> VideoClips:
        rng = step_rng(self.seed, "augment", key.step, self.rank, key.slot)
        weak_distinct = sorted(set(weak_src))
        source = weak_distinct
        if self.strong and self.anchor_strong:
            source = weak_distinct + sorted(set(strong_src) - set(weak_distinct))
        row = {k: i for i, k in enumerate(source)}
        anchor = augment.weak_view(torch.stack([frames[k] for k in source]), rng, self.aug)
        clips = VideoClips(key.step, key.slot, video, anchor, len(weak_distinct), torch.tensor(source),
                           torch.tensor([row[k] for k in weak_src]))
        if self.strong:
            edit, idx = augment.temporal_edit_indices(self.clip_frames, rng, edits=self.aug.temporal_edits)
            shown = [strong_src[i] for i in idx[:self.clip_frames].tolist()]  # slow motion / pauses cut back
            view = augment.strong_view(torch.stack([frames[k] for k in shown]), rng, self.aug, temporal=False)
            clips.strong, clips.edit = view.frames, edit
            clips.strong_source = torch.tensor(shown)
            clips.strong_rows = torch.tensor([row.get(k, -1) for k in shown])
        return clips

    def collate(self, videos: list[VideoClips]) -> ClipBatch:
        """Video-in-video between the step's videos (each strong view, with probability
        ``p_mixup``, gets another video's unmixed strong view pasted in) and the labels."""
        unmixed = [v.strong for v in videos]
        ids, mixed = [], []
        for v in videos:
            guest = None
            if v.strong is not None:
                rng = step_rng(self.seed, "mixup", v.step, self.rank, v.slot)
                others = [j for j, o in enumerate(videos) if o.video != v.video]
                if others and rng.random() < self.aug.p_mixup:
                    j = rng.choice(others)
                    v.strong = augment.video_in_video(v.strong, unmixed[j], rng, self.aug.mixup_scale)
                    guest = videos[j].video
            ids += [v.video, v.video]
            mixed += [None, guest]
        lengths = [n for v in videos for n in (len(v.weak_rows), 0 if v.strong is None else v.strong.shape[0])]
        seconds = {k: sum(v.seconds.get(k, 0.0) for v in videos) for k in ("decode", "augment")}
        return ClipBatch(videos[0].step, videos, torch.tensor(lengths), augment.positive_matrix(ids, mixed),
                         torch.tensor(ids), torch.tensor([-1 if g is None else g for g in mixed]),
                         [s for v in videos for s in v.skipped], [w for v in videos for w in v.warnings], seconds)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker per core: more threads each would only oversubscribe


def clip_loader(dataset: ClipDataset, batches, workers: int = 0, pin_memory: bool = False,
                prefetch: int = 2) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` of :class:`ClipBatch` over ``batches`` (a :class:`StepSampler` or lists
    of :class:`ClipKey`)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       collate_fn=dataset.collate, worker_init_fn=_worker_init,
                                       pin_memory=pin_memory, prefetch_factor=prefetch if workers else None)


# --- the frozen networks on the training device -------------------------------------------------


class FrozenNetworks:
    """The backbone (+ PCA whitening) and the teacher under ``no_grad`` on ``device``, in bf16
    autocast on CUDA when ``amp == "bf16"``; ``seconds`` adds up the time each takes."""

    def __init__(self, extractor, teacher, device="cpu", amp: str = "bf16"):
        self.device = torch.device(device)
        self.extractor = extractor.to(self.device).eval()
        self.teacher = teacher
        self.teacher_device = torch.device("cpu") if getattr(teacher, "session", None) is not None else self.device
        if isinstance(getattr(teacher, "net", None), torch.nn.Module):  # the cnn teacher may be the extractor's
            teacher.net.to(self.teacher_device)
        self.autocast = self.device.type == "cuda" and amp == "bf16"
        self.seconds = {"backbone": 0.0, "teacher": 0.0}

    def _timed(self, name: str, fn, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = fn(x).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] += time.perf_counter() - t0
        return out

    def descriptors(self, frames: torch.Tensor) -> torch.Tensor:
        """``uint8 [N, 3, S, S]`` -> pre-PCA region descriptors ``[N, 9, Din]`` (fp32)."""
        return self._timed("backbone", self.extractor.descriptors, frames.to(self.device, non_blocking=True))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``uint8 [N, 3, S, S]`` -> whitened region features ``[N, 9, D]`` (whitening in fp32)."""
        with torch.no_grad():
            return self.extractor.whiten(self.descriptors(frames))

    def teacher_vectors(self, frames: torch.Tensor) -> torch.Tensor:
        """``uint8 [N, 3, S, S]`` -> L2-normalised teacher vectors ``[N, Dt]`` on ``device``."""
        x = frames.to(self.teacher_device, non_blocking=True).float()
        return F.normalize(self._timed("teacher", self.teacher, x).to(self.device), dim=-1)


def batch_from_clips(clips: ClipBatch, nets: FrozenNetworks, teacher_all_views: bool = False) -> Batch:
    """The trainer's :class:`~hapvr.training.batches.Batch` of a :class:`ClipBatch`: features
    and teacher vectors on the networks' device (0 on padding), labels on the CPU.

    ``teacher_all_views=False`` runs the teacher on the anchor (weak crops) only and gives each
    strong frame the vector of its source sample, as the cached pool does.
    """
    vids = clips.videos
    weak_in = torch.cat([v.anchor[:v.n_weak] for v in vids])
    strong_in = torch.cat([v.strong for v in vids])
    f_weak, f_strong = nets.features(weak_in), nets.features(strong_in)
    if teacher_all_views:
        t_anchor, t_strong = nets.teacher_vectors(weak_in), nets.teacher_vectors(strong_in)
    else:
        t_anchor, t_strong = nets.teacher_vectors(torch.cat([v.anchor for v in vids])), None
    T = int(clips.lengths.max())
    dev = nets.device
    features = torch.zeros(2 * len(vids), T, *f_weak.shape[1:], device=dev)
    teacher = torch.zeros(2 * len(vids), T, t_anchor.shape[-1], device=dev)
    fw = fa = fs = 0  # row offsets into f_weak, the anchors and f_strong
    for i, v in enumerate(vids):
        L, Ls = len(v.weak_rows), v.strong.shape[0]
        weak_rows, strong = v.weak_rows.to(dev), slice(fs, fs + Ls)
        features[2 * i, :L] = f_weak[fw + weak_rows]
        features[2 * i + 1, :Ls] = f_strong[strong]
        teacher[2 * i, :L] = t_anchor[(fw if teacher_all_views else fa) + weak_rows]
        teacher[2 * i + 1, :Ls] = t_strong[strong] if teacher_all_views else t_anchor[fa + v.strong_rows.to(dev)]
        fw, fa, fs = fw + v.n_weak, fa + v.anchor.shape[0], fs + Ls
    return Batch(features, teacher, clips.lengths.clone(), clips.positives, clips.video_index, clips.guests)


class StreamingBatches:
    """Iterates the trainer's :class:`~hapvr.training.batches.Batch`, one per step from
    ``start_step`` to ``steps`` (``None``: endless), drawn afresh from the videos at ``paths``.

    ``workers`` DataLoader processes decode and augment ahead of the training step (0: in this
    process); the backbone, PCA whitening (fit it first: :func:`pca_sample`) and the teacher run
    here on ``device``. To resume at step ``s``, build a new one with ``start_step=s``: the draws
    are a pure function of ``(seed, step, rank, world)``.

    ``skipped`` (path -> reason) lists the undecodable videos met so far, ``truncated`` the videos
    whose decoding stopped early; each is logged once through ``log``. ``seconds`` adds up the
    workers' decode and augment time and this process's backbone, teacher and wait for data.
    """

    def __init__(self, paths: list[str], extractor, teacher, *, batch_videos: int = 64, clip_frames: int = 28,
                 clip_shift: float = 0.25, fps: float = 1.0, seed: int = 0, rank: int = 0, world: int = 1,
                 start_step: int = 0, steps: int | None = None, workers: int = 0, device="cpu", amp: str = "bf16",
                 teacher_all_views: bool = False, aug: augment.AugmentConfig | None = None,
                 log: Callable[[str], None] = print, prefetch: int = 2):
        self.dataset = ClipDataset(paths, clip_frames, fps, clip_shift, seed, rank, aug,
                                   anchor_strong=not teacher_all_views)
        self.sampler = StepSampler(len(paths), batch_videos, seed, rank, world, start_step, steps)
        self.nets = FrozenNetworks(extractor, teacher, device, amp)
        self.teacher_all_views, self.workers, self.prefetch, self.log = teacher_all_views, workers, prefetch, log
        self.skipped: dict[str, str] = {}
        self.truncated: dict[str, str] = {}
        self.seconds = {"decode": 0.0, "augment": 0.0, "wait": 0.0}

    def clip_batches(self) -> Iterator[ClipBatch]:
        """The steps' clips before the networks (what the workers make), with problems logged."""
        loader = clip_loader(self.dataset, self.sampler, self.workers, self.nets.device.type == "cuda", self.prefetch)
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                clips = next(it)
            except StopIteration:
                return
            self.seconds["wait"] += time.perf_counter() - t0
            report(clips, self.skipped, self.truncated, self.log)
            for k, s in clips.seconds.items():
                self.seconds[k] += s
            yield clips

    def __iter__(self) -> Iterator[Batch]:
        for clips in self.clip_batches():
            yield batch_from_clips(clips, self.nets, self.teacher_all_views)

    def __len__(self) -> int:
        return len(self.sampler)


def report(clips: ClipBatch, skipped: dict[str, str], truncated: dict[str, str], log) -> None:
    """Logs each undecodable or truncated video the first time a batch meets it."""
    for path, reason in clips.skipped:
        if path not in skipped:
            skipped[path] = reason
            log(f"warning: skipping undecodable video ({len(skipped)} so far; a replacement is drawn): {reason}")
    for path, reason in clips.warnings:
        if path not in truncated:
            truncated[path] = reason
            log(f"warning: {path}: {reason}")


# --- PCA sample and the cached pool's size ------------------------------------------------------


def pca_sample(paths: list[str], extractor, max_videos: int = 1000, *, clip_frames: int = 28, fps: float = 1.0,
               seed: int = 0, workers: int = 0, device="cpu", amp: str = "bf16", batch_videos: int = 16,
               aug: augment.AugmentConfig | None = None, log: Callable[[str], None] = print,
               skipped: dict[str, str] | None = None) -> torch.Tensor:
    """Pre-PCA descriptors ``[frames, 9, Din]`` (fp32, CPU) of the weak clips of up to ``max_videos``
    videos (a seeded choice), for ``extractor.fit_pca(...)`` before :class:`StreamingBatches`
    starts (the streaming path has no cached pool to fit on). Undecodable videos are replaced
    and logged as in the stream (and added to ``skipped`` when given)."""
    dataset = ClipDataset(paths, clip_frames, fps, 0.0, seed, 0, aug, strong=False)
    order = list(range(len(paths)))
    step_rng(seed, "pca").shuffle(order)
    chosen = order[:max_videos]
    batches = [[ClipKey(PCA_STEP - b, slot, v, tuple(chosen[s:s + batch_videos]))
                for slot, v in enumerate(chosen[s:s + batch_videos])]
               for b, s in enumerate(range(0, len(chosen), batch_videos))]
    nets = FrozenNetworks(extractor, None, device, amp)
    skipped = {} if skipped is None else skipped
    out = []
    for clips in clip_loader(dataset, batches, workers):
        report(clips, skipped, {}, log)
        out.append(nets.descriptors(torch.cat([v.anchor[:v.n_weak] for v in clips.videos])).cpu())
    return torch.cat(out)


def cached_pool_bytes(videos: int, views: int, pool_frames: int, descriptor_dim: int, teacher_dim: int,
                      regions: int = 9, half: bool = True, whitened_dim: int | None = None) -> int:
    """Bytes of the cached view pool (:class:`~hapvr.training.pool.ViewPool`: pre-PCA descriptors
    and teacher vectors of every view, fp16 when ``half``), plus, with ``whitened_dim``, the fp32
    whitened copy the trainer batches from (:class:`~hapvr.training.batches.FeaturePool`). E.g. the
    paper's 100k videos x 4 views x 64 frames with ResNet-50 (3840) and DINO (384): 1.8 TB."""
    frames = videos * views * pool_frames
    total = frames * (regions * descriptor_dim + teacher_dim) * (2 if half else 4)
    if whitened_dim is not None:
        total += frames * (regions * whitened_dim + teacher_dim) * 4
    return total
