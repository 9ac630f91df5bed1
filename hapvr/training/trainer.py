"""The training run of ``python -m hapvr.train`` (paper section 3, appendix B.3): setup, the step,
the loop with its checkpoints, the rounds of ``--restarts`` and the selection on validation.

:func:`run` is the whole run; :func:`setup` builds a :class:`Trainer` (device and process
group, backbone, data, PCA, model, optimiser, schedule and sampler, resumed from
``OUT/checkpoint.pt`` with ``--resume``), :func:`train_loop` steps it, and
:mod:`hapvr.training.report` reports it. The order of setup is part of the result: the random
generators are drawn from in that order, and a run is deterministic for a given machine, seed
and thread count.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass

import torch

from hapvr.evaluation.builtin import load_or_build_benchmark
from hapvr.evaluation.levels import evaluate_model
from hapvr.errors import InputError
from hapvr.features import RegionFeatureExtractor
from hapvr.io.checkpoint import save_checkpoint, set_rng_state
from hapvr.models import VideoSimilarityModel
from hapvr.progress import progress as progress_bar
from hapvr.runtime import DistInfo, leave_group, resolve_device, setup_training
from hapvr.training.batch_loss import BatchLoss, as_floats, objective_inputs
from hapvr.training.batches import FeaturePool
from hapvr.training.config import TrainConfig, init_seed, restarts, sampler_seed, validate
from hapvr.training.data import (PoolBatches, choose_pipeline, fit_pca, load_or_build_pool, read_pca, stream_batches,
                                 whiten_cpu)
from hapvr.training.gather import GatheredSimilarity, gathered_labels
from hapvr.training.log import TrainLog
from hapvr.training.report import finish
from hapvr.training.resume import read_resume_checkpoint
from hapvr.training.schedule import lr_lambda, round_length
from hapvr.training.selection import Selection


@dataclass
class Trainer:
    """Everything a training run holds between its setup and its report."""

    cfg: TrainConfig
    info: DistInfo
    extractor: RegionFeatureExtractor
    model: torch.nn.Module  # the live weights
    train_model: torch.nn.Module  # model, or its DDP wrapper
    eval_model: torch.nn.Module  # model, or its moving average (--ema)
    ema: torch.nn.Module | None
    baseline: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: random.Random
    batches: object  # PoolBatches or StreamBatches: .next() -> Batch, .videos, .describe(), .skipped, .close()
    loss: BatchLoss
    gather: bool
    start_step: int
    ckpt_path: str
    pipeline: str  # "cached" or "streaming"
    bench: object  # BenchmarkFeatures or None
    bench_feats: dict | None
    skipped: list
    t_start: float
    t_data: float
    selection: Selection | None = None  # with --select-on validation

    @property
    def report_model(self) -> torch.nn.Module:
        """What the run reports and saves: the selected weights, or the evaluated ones."""
        return self.eval_model if self.selection is None else self.selection.selected(self.eval_model)

    def say(self, *msg) -> None:
        """Prints on the main process only."""
        if self.info.main:
            print(*msg, flush=True)


def new_model(cfg: TrainConfig, round_index: int = 0) -> VideoSimilarityModel:
    """The model at the start of training: round 0 draws from the global generator (seeded by
    setup), each later round of ``--restarts`` from its own seed, the global generator untouched."""
    if round_index == 0:
        return VideoSimilarityModel(cfg.pca_dim, cfg.k_s, cfg.k_t, head=cfg.head)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(cfg, round_index))
        return VideoSimilarityModel(cfg.pca_dim, cfg.k_s, cfg.k_t, head=cfg.head)


def _data(cfg: TrainConfig, info: DistInfo, extractor, ckpt: dict | None, pca_state: dict | None, say):
    """The run's data in setup's order: pipeline, cached pool, benchmarks, PCA, sampler, batches."""
    pipeline = choose_pipeline(cfg, extractor, ckpt["extra"].get("pipeline") if ckpt is not None else None,
                               log=say)
    pool, skipped = load_or_build_pool(cfg, info, extractor, say) if pipeline == "cached" else (None, [])
    bench = (load_or_build_benchmark(cfg.benchmark_set, extractor, cfg.cache_dir, info, optional=bool(cfg.data),
                                     log=say) if cfg.benchmark else None)
    val = (load_or_build_benchmark("validation", extractor, cfg.cache_dir, info, optional=bool(cfg.data), log=say)
           if cfg.select_on == "validation" else None)
    if ckpt is not None:
        extractor.pca.load_state_dict(ckpt["pca"])
    elif pca_state is not None:
        extractor.pca.load_state_dict(pca_state)
        say(f"PCA whitening loaded from {cfg.pca}")
    elif pool is not None:
        fit_pca(extractor, pool)
    sampler = random.Random(sampler_seed(cfg, info.rank))
    if pool is not None:
        batches = PoolBatches(FeaturePool(pool, extractor.whiten), cfg, sampler)
    else:
        batches = stream_batches(cfg, info, extractor, ckpt["step"] if ckpt is not None else 0,
                                 fit=ckpt is None and pca_state is None, log=say)
    return pipeline, skipped, bench, val, sampler, batches


def _restore(t: Trainer, ckpt: dict) -> None:
    """The checkpoint's live weights, average, selection, optimiser, schedule and generators."""
    live = ckpt["extra"].get("train_weights")
    t.model.load_state_dict(ckpt["model"] if live is None else live)
    if t.ema is not None:  # the average; a selecting run without one restarts it from the live weights
        t.ema.load_state_dict(ckpt["extra"].get("ema_weights", live if "selection" in ckpt["extra"] else ckpt["model"]))
    if t.selection is not None and "selection" in ckpt["extra"]:
        t.selection.restore(ckpt["extra"]["selection"], ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], t.sampler)
    if t.info.enabled:
        t.sampler.setstate(ckpt["extra"]["rank_samplers"][t.info.rank])
    t.start_step = ckpt["step"]
    t.say(f"resumed from {t.ckpt_path} at step {t.start_step}")


def setup(cfg: TrainConfig) -> Trainer:
    """The :class:`Trainer` of ``cfg`` (see the module docstring)."""
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise InputError(f"--device: {exc}") from None
    info = setup_training(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    extractor = RegionFeatureExtractor(cfg.backbone, cfg.backbone_weights, cfg.pca_dim)
    os.makedirs(cfg.out, exist_ok=True)  # once the backbone is known to load: no empty run folder
    pca_state = read_pca(cfg, extractor)
    ckpt = read_resume_checkpoint(cfg)  # read (as data) and checked before the long data preparation
    say = print if info.main else (lambda *a, **k: None)
    pipeline, skipped, bench, val, sampler, batches = _data(cfg, info, extractor, ckpt, pca_state, say)
    t_data = time.time() - t_start
    if cfg.batch_videos > batches.videos and info.main:
        print(f"note: --batch-videos {cfg.batch_videos} > {batches.videos} videos in the pool; using {batches.videos}")
    torch.manual_seed(init_seed(cfg))
    model = new_model(cfg).to(info.device)
    gather = cfg.gather_negatives and info.enabled  # one process: every clip is already a target
    train_model = model
    if info.enabled:
        ids = [info.local_rank] if info.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(GatheredSimilarity(model) if gather else model,
                                                                device_ids=ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    # exponential moving average of the weights (--ema): what is evaluated and saved as "model"
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    selection = None
    if val is not None and info.main:
        selection = Selection(val.queries, val.labels, {k: whiten_cpu(extractor, v) for k, v in val.desc.items()})
    baseline = VideoSimilarityModel.baseline(cfg.pca_dim, cfg.k_s, cfg.k_t).to(info.device)  # scored where the model is
    t = Trainer(cfg, info, extractor, model, train_model, model if ema is None else ema, ema, baseline, optimizer,
                scheduler, sampler, batches, BatchLoss(cfg), gather, 0, os.path.join(cfg.out, "checkpoint.pt"),
                pipeline, bench, None, skipped, t_start, t_data, selection)
    if ckpt is not None:
        _restore(t, ckpt)
    if bench is not None:
        t.bench_feats = {k: whiten_cpu(extractor, v) for k, v in bench.desc.items()}
    if cfg.gather_negatives and not info.enabled:
        t.say("note: --gather-negatives has no effect in a single process (every clip is already a target)")
    return t


def train_step(t: Trainer, batch) -> dict[str, torch.Tensor]:
    """One optimisation step on ``batch``: forward (bf16 autocast on CUDA: the spatial op's forward
    and backward GEMMs both run in bf16), the objective, backward, AdamW, schedule, moving
    average. Returns the loss parts as detached device tensors: nothing here waits for the device
    (:func:`~hapvr.training.batch_loss.as_floats` reads them on the steps that are logged)."""
    dev = t.info.device
    use_amp = t.cfg.amp == "bf16" and dev.type == "cuda"
    # non_blocking: a copy from pageable memory is staged by the driver, the host does not wait for
    # the device's queue (a blocking copy would, once per tensor)
    features, lengths = batch.features.to(dev, non_blocking=True), batch.lengths.to(dev, non_blocking=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        if t.gather:
            out = t.train_model(features, lengths)
        else:
            out = t.train_model(features, query_lengths=lengths)
    if t.gather:
        labels = gathered_labels(batch.positives.to(dev, non_blocking=True), batch.video_index.to(dev, non_blocking=True),
                                 batch.guests.to(dev, non_blocking=True))
        inputs = objective_inputs(out, batch, t.model.min_frames, dev, labels,
                                  GatheredSimilarity.offset(len(batch.lengths)))
    else:
        inputs = objective_inputs(out, batch, t.model.min_frames, dev)
    loss, parts = t.loss(inputs)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()
    t.scheduler.step()
    if t.ema is not None:
        with torch.no_grad():
            for e, p in zip(t.ema.parameters(), t.model.parameters()):
                e.lerp_(p, 1 - t.cfg.ema)
    return parts


def save(t: Trainer, step: int) -> None:
    """OUT/checkpoint.pt (atomic): weights, PCA, optimiser, schedule, every sampler's state."""
    extra = {"pipeline": t.pipeline}
    if t.info.enabled:  # every rank's sampler state, so a resumed DDP run draws the same batches
        states = [None] * t.info.world
        torch.distributed.all_gather_object(states, t.sampler.getstate())
        extra["rank_samplers"] = states
    if not t.info.main:
        return
    model = t.eval_model
    if t.ema is not None or t.selection is not None:
        extra["train_weights"] = t.model.state_dict()
    if t.selection is not None:
        extra["selection"] = t.selection.state()
        if t.ema is not None:
            extra["ema_weights"] = t.ema.state_dict()
        model = t.report_model
    save_checkpoint(t.ckpt_path, step=step, model=model, pca=t.extractor.pca, optimizer=t.optimizer,
                    scheduler=t.scheduler, sampler=t.sampler, config=dataclasses.asdict(t.cfg), extra=extra)


def restart(t: Trainer, step: int) -> None:
    """Starts round ``step // round_length`` of ``--restarts``: fresh weights (and average), a fresh
    optimiser state; the schedule restarts by itself (:func:`lr_lambda`), the batches go on."""
    index = step // round_length(t.cfg)
    fresh = new_model(t.cfg, index).state_dict()
    t.model.load_state_dict(fresh)
    if t.ema is not None:
        t.ema.load_state_dict(fresh)
    t.optimizer.state.clear()
    t.say(f"round {index + 1} of {restarts(t.cfg)} at step {step}: fresh weights and optimiser state, "
          f"a new warm-up and cosine")


def select(t: Trainer, step: int, log: TrainLog | None = None) -> None:
    """Scores the evaluated model on the validation benchmark at ``step`` (--select-on validation)."""
    t0 = time.time()
    score, res, improved = t.selection.evaluate(t.eval_model, step)
    if log is not None:
        log.benchmark(step, res, "validation")
    sel = t.selection
    best = (f"best {100 * sel.best_score:.2f} at step {sel.best_step}" if sel.best_step >= 0
            else "no step at or above the baseline yet")
    below = "" if sel.history[-1]["qualifies"] else " (below the baseline on some figure)"
    t.say(f"validation at step {step}: score {100 * score:.2f} (mean of mAP/uAP over the levels){below}, "
          f"{best}{' (new best)' if improved else ''}; {time.time() - t0:.0f} s")


def _after_step(t: Trainer, log: TrainLog, done: int, parts: dict, t0: float, bar=None) -> None:
    """The main process's bookkeeping after step ``done``: log (the only read of the loss values,
    every ``--log-every`` steps), periodic benchmark, selection."""
    cfg = t.cfg
    if done % cfg.log_every == 0 or done == cfg.iterations:
        values = as_floats(parts)
        log.step(done, t.optimizer.param_groups[0]["lr"], values, time.time() - t0)
        if bar is not None:
            bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
    if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.iterations and t.bench_feats is not None:
        log.benchmark(done, evaluate_model(t.eval_model, t.bench_feats, t.bench.queries, t.bench.labels))
    if t.selection is not None and (done % cfg.select_every == 0 or done % round_length(cfg) == 0
                                    or done == cfg.iterations):
        select(t, done, log)


def train_loop(t: Trainer, log: TrainLog) -> tuple[int, float]:
    """Steps from ``t.start_step`` to ``--iterations`` (or ``--stop-after`` more), with progress,
    logging, periodic evaluation and checkpoints. Returns (steps done, seconds)."""
    cfg, info = t.cfg, t.info
    t.say(f"training {sum(p.numel() for p in t.model.parameters())} parameters on {t.batches.describe()}, "
          f"{cfg.iterations} steps of {min(cfg.batch_videos, t.batches.videos)} videos x 2 clips "
          f"({info.world} process{'es' if info.world > 1 else ''}, {torch.get_num_threads()} threads"
          f"{', negatives gathered from all ranks' if t.gather else ''})")
    t0 = time.time()
    bar = progress_bar(range(t.start_step, cfg.iterations), initial=t.start_step, total=cfg.iterations, desc="train",
                       unit="step", disable=not info.main)
    t.model.train()
    done = t.start_step
    if t.selection is not None and not t.selection.history:
        t.selection.score_baseline(t.baseline)
        select(t, done)
    rounds = round_length(cfg)
    for step in bar:
        if step and step % rounds == 0 and step < cfg.iterations:
            restart(t, step)
        parts = train_step(t, t.batches.next())
        done = step + 1
        if info.main:
            _after_step(t, log, done, parts, t0, bar)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
            save(t, done)
        if cfg.stop_after and done - t.start_step >= cfg.stop_after and done < cfg.iterations:
            break
    bar.close()
    save(t, done if cfg.iterations > t.start_step else t.start_step)
    return done, time.time() - t0


@dataclass
class Outcome:
    """What a run did: the benchmark results per model ({} when stopped early or on ranks other
    than 0), the training videos skipped as unreadable (path, why), and its process count."""
    results: dict
    skipped: list
    world: int


def run(cfg: TrainConfig) -> Outcome:
    """Trains as ``cfg`` says and reports (:class:`Outcome`). On an error the process group is
    left at once (no barrier: the other ranks may be inside a collective); on success every rank
    waits for the others before leaving."""
    for note in validate(cfg):
        print(note, file=sys.stderr)
    try:
        t = setup(cfg)
        log = TrainLog(cfg, t.info.main, t.start_step)
        try:
            done, t_train = train_loop(t, log)
        finally:
            log.close()
            if t.pipeline == "streaming":
                t.skipped = t.batches.skipped
            t.batches.close()
        if done < cfg.iterations:
            t.say(f"stopped at step {done} of {cfg.iterations} (--stop-after); continue with --resume")
            results = {}
        else:
            results = finish(t, t_train)
    except BaseException:
        leave_group(wait=False)
        raise
    leave_group(wait=True)
    return Outcome(results, list(t.skipped), t.info.world)
