"""Where a training run's batches come from.

- **cached** (the CPU preset, the built-in corpus): a few augmented views per video, run once
  through the frozen backbone and teacher and cached (:mod:`hapvr.training.pool`); batches are
  drawn from them (:class:`PoolBatches`).
- **streaming** (``--preset paper``, or ``--data`` whose cached pool would pass
  ``--cache-budget-gb``): videos decoded by DataLoader workers and augmented afresh every step
  (:class:`StreamBatches`).

:func:`choose_pipeline` says which, and why.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time

import torch

from hapvr.data import corpus, load_folder
from hapvr.data.augment import AugmentConfig
from hapvr.data.video import list_videos
from hapvr.errors import InputError
from hapvr.evaluation.builtin import cache_key, load_cache
from hapvr.features import Teacher
from hapvr.features.pca import read_pca_file
from hapvr.features.teacher import TEACHER_DIMS
from hapvr.io.files import save_torch
from hapvr.progress import note
from hapvr.progress import progress as progress_bar
from hapvr.runtime import DistInfo, barrier, broadcast_object, cores_per_rank
from hapvr.training.batches import FeaturePool, draw_batch
from hapvr.training.config import TrainConfig, sibling_videos, train_renders
from hapvr.training.pool import ViewPool, build_view_pool
from hapvr.training.stream import (
    NoDecodableVideo,
    StreamingBatches,
    cached_pool_bytes,
    pca_sample,
)

NO_VIDEOS = "no videos found (extensions .mp4 .mkv .avi ..., or folders of frames)"


def data_videos(cfg: TrainConfig) -> list[str]:
    """The videos of ``--data``, refused (one error) when there are none."""
    try:
        paths = list_videos(cfg.data)
    except FileNotFoundError as exc:
        raise InputError(str(exc), "data") from None
    if not paths:
        raise InputError(f"--data {cfg.data}: {NO_VIDEOS}")
    return paths


def _group_of_builtin(video_id: str) -> str:
    return video_id.rsplit("-", 1)[0]


def _pool_source(cfg: TrainConfig) -> dict:
    """What the cached pool is made from, for its cache key."""
    if cfg.data:
        listing = [(p, os.path.getsize(p) if os.path.isfile(p) else 0, os.path.getmtime(p)) for p in data_videos(cfg)]
        return dict(data=os.path.abspath(cfg.data), listing=listing, fps=cfg.fps)
    source = dict(data="builtin", corpus=dataclasses.asdict(corpus.CorpusConfig()),
                  held_out=corpus.VALIDATION_PHOTOS)  # photos of the validation benchmark
    if train_renders(cfg):  # keys of corpora without renders or siblings omit them (docs/compatibility.md)
        source["renders"] = train_renders(cfg)
    if sibling_videos(cfg):
        source["siblings"] = True
    return source


def _decode_data(cfg: TrainConfig, log):
    """The ``--data`` videos decoded at ``--fps`` (unreadable ones skipped and listed)."""
    log(f"decoding videos under {cfg.data} at {cfg.fps} fps ...")
    videos, report = load_folder(cfg.data, fps=cfg.fps, max_frames=cfg.pool_frames, log=note)
    log(report.summary())
    short = sorted(v for v, x in videos.items() if x.shape[0] < cfg.clip_frames)
    if short:
        log(f"note: {len(short)} videos have fewer than --clip-frames {cfg.clip_frames} frames at "
            f"{cfg.fps} fps; their clips are that short (the batch pads them): "
            + ", ".join(short[:10]) + (" ..." if len(short) > 10 else ""))
    if not videos:
        raise InputError(f"--data {cfg.data}: none of the videos could be decoded")
    return videos, report.skipped


def _build_pool(cfg: TrainConfig, info: DistInfo, extractor, path: str, log) -> None:
    t0 = time.time()
    skipped, group_of, siblings = [], None, {}
    if cfg.data:
        videos, skipped = _decode_data(cfg, log)
    else:
        log("building the built-in training corpus (pans and zooms over real photos) ...")
        videos, siblings = corpus.build_train_corpus(corpus.CorpusConfig(), renders=train_renders(cfg),
                                                     siblings=bool(sibling_videos(cfg)))
        group_of = _group_of_builtin
    teacher = Teacher(cfg.teacher, cfg.teacher_weights, cache_dir=cfg.cache_dir, backbone=extractor,
                      raw_pixels=cfg.teacher_raw_pixels)
    views = cfg.views_per_video + bool(siblings)
    frames = sum(min(v.shape[0], cfg.pool_frames) for v in videos.values()) * views
    log(f"caching backbone + teacher features of {len(videos)} videos x {cfg.views_per_video} views"
        + (" + a sibling" if siblings else "") + f" ({frames} frames, once) ...")
    with progress_bar(total=frames, desc="features", unit="frame", disable=not info.main) as bar:
        pool = build_view_pool(videos, extractor, teacher, cfg.views_per_video, cfg.pool_frames, cfg.seed,
                               aug=augment_config(cfg), progress=bar.update, group_of=group_of, teacher_on_all_views=cfg.teacher_all_views,
                               siblings=siblings or None)
    save_torch(dict(pool=pool.state(), skipped=skipped), path)
    log(f"cached {path} ({time.time() - t0:.0f} s)")


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    """The augmentations of the training views: the package's, with the pasted video's largest side
    from ``--mixup-max``."""
    return AugmentConfig(mixup_scale=(0.3, cfg.mixup_max))


def load_or_build_pool(cfg: TrainConfig, info: DistInfo, extractor, log=print) -> tuple[ViewPool, list]:
    """The cached view pool (backbone descriptors + teacher vectors) of the training videos, built
    once by the main process; with the videos skipped when it was built."""
    key = cache_key(source=_pool_source(cfg), backbone=cfg.backbone, weights=cfg.backbone_weights,
                    teacher=cfg.teacher, teacher_weights=cfg.teacher_weights, raw=cfg.teacher_raw_pixels,
                    views=cfg.views_per_video, teacher_all=cfg.teacher_all_views,
                    augment=dataclasses.asdict(augment_config(cfg)), frames=cfg.pool_frames, seed=cfg.seed)
    path = os.path.join(cfg.cache_dir, f"pool-{key}.pt")
    built = info.main and not os.path.isfile(path)
    if built:
        _build_pool(cfg, info, extractor, path, log)
    barrier(info)
    state = load_cache(path)
    if state["skipped"] and not built:
        log(f"note: {len(state['skipped'])} videos were skipped when this cache was built "
            f"(corrupt, empty or unreadable): " + ", ".join(p for p, _ in state["skipped"]))
    return ViewPool(**state["pool"]), state["skipped"]


def fit_pca(extractor, pool: ViewPool) -> None:
    """PCA whitening learned from every cached frame of the training pool (all views; not the
    siblings, so a run with them whitens, and its baseline scores, exactly as one without)."""
    V, K, T = pool.desc.shape[:3]
    valid = torch.arange(T)[None, :] < pool.lengths[:, None]  # [V, T]
    vecs = pool.desc[:, :K - getattr(pool, "siblings", False)].permute(0, 2, 1, 3, 4)[valid]  # [frames, K, 9, Din]
    extractor.fit_pca(vecs.reshape(-1, extractor.in_dim).float())


def read_pca(cfg: TrainConfig, extractor) -> dict | None:
    """The whitening of ``--pca`` (checked before the long data preparation), or None."""
    if not cfg.pca:
        return None
    return read_pca_file(cfg.pca, extractor.in_dim, cfg.pca_dim, cfg.backbone)


@torch.no_grad()
def whiten_cpu(extractor, desc: torch.Tensor) -> torch.Tensor:
    """PCA-whitened features on the CPU, wherever the PCA lives (the streaming path moves it to
    the training device)."""
    return extractor.whiten(desc.float().to(extractor.pca.mean.device)).cpu()


class PoolBatches:
    """Batches drawn from the cached view pool (the CPU preset's fast path)."""

    def __init__(self, pool: FeaturePool, cfg: TrainConfig, sampler: random.Random):
        self.pool, self.cfg, self.sampler = pool, cfg, sampler
        self.videos = len(pool)
        self.views = pool.features.shape[1]

    def next(self):
        return draw_batch(self.pool, self.sampler, self.cfg.batch_videos, self.cfg.clip_frames,
                          max_shift=self.cfg.clip_shift, siblings=min(sibling_videos(self.cfg), self.cfg.batch_videos),
                          guests=self.cfg.pip_guests)

    def describe(self) -> str:
        sib = sibling_videos(self.cfg)
        return (f"{self.videos} videos x {self.views - self.pool.siblings} cached views"
                + (f" (+ {min(sib, self.cfg.batch_videos)} sibling clips per step)" if sib else ""))

    def close(self) -> None:
        pass


class StreamBatches:
    """Batches of the streaming path (:class:`hapvr.training.stream.StreamingBatches`): videos
    decoded by DataLoader workers, views drawn afresh every step, the frozen networks on the
    training device. Step ``s`` draws the same batch whenever it runs, so a resumed run continues
    exactly."""

    def __init__(self, paths: list[str], cfg: TrainConfig, info: DistInfo, extractor, teacher, start_step: int,
                 workers: int):
        self.videos = len(paths)
        self.data = cfg.data
        self.workers = workers
        self.pca_skipped: dict[str, str] = {}
        self.stream = StreamingBatches(paths, extractor, teacher, batch_videos=cfg.batch_videos,
                                       clip_frames=cfg.clip_frames, clip_shift=cfg.clip_shift, fps=cfg.fps,
                                       seed=cfg.seed + cfg.seed_offset, rank=info.rank, world=info.world,
                                       start_step=start_step,
                                       steps=cfg.iterations, workers=workers, device=info.device, amp=cfg.amp,
                                       teacher_all_views=cfg.teacher_all_views, aug=augment_config(cfg), log=note)
        self._it = iter(self.stream)

    def next(self):
        try:
            return next(self._it)
        except NoDecodableVideo as exc:
            raise InputError(f"--data {self.data}: {exc.reason}") from None

    def describe(self) -> str:
        return (f"{self.videos} videos streamed ({self.workers} decoding worker{'s' if self.workers != 1 else ''}, "
                f"fresh views every step)")

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return sorted({**self.pca_skipped, **self.stream.skipped}.items())

    def close(self) -> None:
        """Stops the DataLoader workers (and drops the batches they prefetched)."""
        self._it.close()


def choose_pipeline(cfg: TrainConfig, extractor, resumed: str | None = None, log=print) -> str:
    """``cached`` or ``streaming`` for this run, printed with the reason; a resumed run keeps the
    pipeline it was started with (``resumed``)."""
    if resumed is not None:
        note = "" if cfg.pipeline in ("auto", resumed) else f"; --pipeline {cfg.pipeline} is not used on --resume"
        log(f"data pipeline: {resumed} (the resumed run's{note})")
        return resumed
    if not cfg.data:
        if cfg.pipeline == "streaming":
            log("note: the built-in corpus is made in memory, not read from files: it uses the cached "
                "pipeline (stream your own videos with --data DIR)")
        return "cached"
    if cfg.pipeline != "auto":
        choice, why = cfg.pipeline, f"--pipeline {cfg.pipeline}"
    else:
        n = len(list_videos(cfg.data))
        need = cached_pool_bytes(n, cfg.views_per_video, cfg.pool_frames, extractor.in_dim,
                                 TEACHER_DIMS.get(cfg.teacher, extractor.in_dim), whitened_dim=cfg.pca_dim)
        choice = "streaming" if need > cfg.cache_budget_gb * 1e9 else "cached"
        why = (f"the cached pool of {n} videos x {cfg.views_per_video} views would take {need / 1e9:.1f} GB, "
               f"{'over' if choice == 'streaming' else 'within'} --cache-budget-gb {cfg.cache_budget_gb:g}")
    log(f"data pipeline: {choice} ({why})")
    return choice


def stream_batches(cfg: TrainConfig, info: DistInfo, extractor, start_step: int, fit: bool, log=print) -> StreamBatches:
    """The streaming path's batches; with ``fit`` (neither --resume nor --pca gave the whitening)
    the PCA is first fitted on weak clips, on rank 0, and sent to the others."""
    paths = data_videos(cfg)
    teacher = Teacher(cfg.teacher, cfg.teacher_weights, cache_dir=cfg.cache_dir, backbone=extractor,
                      raw_pixels=cfg.teacher_raw_pixels)
    cores = cores_per_rank()
    workers = min(cfg.workers, cores)
    if workers < cfg.workers:
        log(f"note: --workers {cfg.workers} is more than the {cores} cores here: using {workers}")
    skipped: dict[str, str] = {}
    if fit:
        state = None
        if info.main:
            n = min(cfg.pca_videos, len(paths))
            log(f"fitting the PCA whitening on the weak clips of {n} of {len(paths)} videos ...")
            try:
                sample = pca_sample(paths, extractor, n, clip_frames=cfg.clip_frames, fps=cfg.fps, seed=cfg.seed,
                                    workers=workers, device=info.device, amp=cfg.amp, log=note, skipped=skipped)
            except NoDecodableVideo as exc:
                raise InputError(f"--data {cfg.data}: {exc.reason}") from None
            extractor.fit_pca(sample)
            state = {k: v.cpu() for k, v in extractor.pca.state_dict().items()}
        extractor.pca.load_state_dict(broadcast_object(info, state))
    batches = StreamBatches(paths, cfg, info, extractor, teacher, start_step, workers)
    batches.pca_skipped = skipped
    return batches
