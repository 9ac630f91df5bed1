"""The built-in default corpus: unlabelled training videos and a held-out benchmark.

Training videos are pans and zooms of a virtual camera over real photos. The benchmark is
built from *other* media (the real clips and other photos) and has three relevance levels in
the spirit of FIVR (SPEC section 4):

- ``DS`` (duplicate scene): the query's own footage transformed (crop, colour, overlays, blur,
  temporal edits, picture-in-picture), or a real re-encoding / re-cut shipped with the clip
  (``carphone_distorted``, ``v2s``);
- ``CS`` (complementary scene): the same scene filmed with another camera path (another pan /
  zoom over the same photo or footage; the two skyline clips ``v1`` / ``v2``);
- ``IS`` (incident scene): the same source, a different scene (a disjoint part of the photo, the
  other shots of ``bikes``).

DSVR positives are DS; CSVR DS+CS; ISVR DS+CS+IS. Everything else is a negative.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from hapvr.data import augment
from hapvr.data.media import clip_paths, load_photos
from hapvr.data.video import SHORT_SIDE, decode_video

# held out from training: used only by the benchmark
BENCHMARK_PHOTOS = ("sklearn-china", "sklearn-flower", "skimage-astronaut", "skimage-rocket", "skimage-coffee",
                    "skimage-chelsea")
LEVELS = ("DS", "CS", "IS")


@dataclass
class CorpusConfig:
    """Sizes of the built-in corpus (kept small: it must build and train in minutes on 2 cores)."""

    train_videos_per_photo: int = 2
    train_frames: int = 24
    benchmark_frames: int = 12
    clip_fps: float = 3.0  # the bundled clips last 4-10 s: sample 3 frames per second
    seed: int = 0


@dataclass
class Benchmark:
    """Videos (``uint8 [T, 3, 256, 256]``), queries and per-level labels ``{qid: {level: [ids]}}``."""

    videos: dict[str, torch.Tensor] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    labels: dict[str, dict[str, list[str]]] = field(default_factory=dict)


# --- a virtual camera ---------------------------------------------------------------------------


def _crop_frame(img: Image.Image, cx: float, cy: float, side: float, out: int) -> Image.Image:
    W, H = img.size
    s = side * min(W, H)
    x0 = min(max(cx * W - s / 2, 0), W - s)
    y0 = min(max(cy * H - s / 2, 0), H - s)
    return img.resize((out, out), Image.BILINEAR, box=(x0, y0, x0 + s, y0 + s))


def camera_path(source, start: tuple, end: tuple, n: int, out: int = SHORT_SIDE) -> torch.Tensor:
    """Square crops moving linearly (with ease-in/out) from box ``start`` to ``end``.

    A box is ``(cx, cy, side)`` as fractions of the source (side of the shorter dimension).
    ``source`` is a photo ``uint8 [H, W, 3]`` or a clip ``uint8 [T, 3, H, W]`` (frame t of the
    path is cut from clip frame ``t mod T``).
    """
    frames = []
    if isinstance(source, np.ndarray):
        imgs = [Image.fromarray(source)]
    else:
        imgs = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in source]
    for t in range(n):
        a = 0.5 - 0.5 * np.cos(np.pi * t / max(n - 1, 1))
        box = [s + a * (e - s) for s, e in zip(start, end)]
        frames.append(np.asarray(_crop_frame(imgs[t % len(imgs)], *box, out)))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def random_box(rng: random.Random, side=(0.45, 0.8), near: tuple | None = None, spread: float = 0.12) -> tuple:
    s = rng.uniform(*side)
    if near is None:
        return (rng.uniform(s / 2, 1 - s / 2), rng.uniform(s / 2, 1 - s / 2), s)
    cx = min(max(near[0] + rng.uniform(-spread, spread), s / 2), 1 - s / 2)
    cy = min(max(near[1] + rng.uniform(-spread, spread), s / 2), 1 - s / 2)
    return (cx, cy, s)


# --- training videos ----------------------------------------------------------------------------


def build_train_videos(cfg: CorpusConfig) -> dict[str, torch.Tensor]:
    """Pans and zooms over every photo not held out for the benchmark."""
    rng = random.Random(cfg.seed)
    videos = {}
    for name, photo in sorted(load_photos().items()):
        if name in BENCHMARK_PHOTOS:
            continue
        for k in range(cfg.train_videos_per_photo):
            videos[f"{name}-{k}"] = camera_path(photo, random_box(rng), random_box(rng), cfg.train_frames)
    return videos


# --- benchmark ----------------------------------------------------------------------------------


def _transformed_copy(frames: torch.Tensor, rng: random.Random, host: torch.Tensor | None = None) -> torch.Tensor:
    """A DS copy: strong view with a temporal edit (no crop to 224 yet: back to 256 px)."""
    import torchvision.transforms.v2.functional as TF

    view = augment.strong_view(frames, rng, augment.AugmentConfig(size=SHORT_SIDE, p_mixup=0.0)).frames
    if host is not None:  # picture-in-picture: the query shown inside another video
        view = augment.video_in_video(host[: view.shape[0]] if host.shape[0] >= view.shape[0]
                                      else host[torch.arange(view.shape[0]) % host.shape[0]], view, rng, (0.55, 0.7))
    return TF.resize(view, [SHORT_SIDE, SHORT_SIDE], antialias=True)


def build_benchmark(cfg: CorpusConfig) -> Benchmark:
    rng = random.Random(cfg.seed + 1)
    n = cfg.benchmark_frames
    bench = Benchmark()
    photos = load_photos()
    clips = {name: decode_video(path, fps=cfg.clip_fps) for name, path in clip_paths().items()}
    clips = {k: torch.nn.functional.interpolate(v.float(), size=(SHORT_SIDE, round(SHORT_SIDE * v.shape[-1] / v.shape[-2])),
                                                mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
             for k, v in clips.items()}

    def add(qid, level, vid, frames):
        bench.videos[vid] = frames
        bench.labels[qid][level].append(vid)

    def new_query(qid, frames):
        bench.videos[qid] = frames
        bench.queries.append(qid)
        bench.labels[qid] = {lv: [] for lv in LEVELS}

    hosts = []
    for name in BENCHMARK_PHOTOS:
        photo = photos[name]
        a0 = random_box(rng, (0.4, 0.55))
        a1 = random_box(rng, (0.4, 0.55), near=a0, spread=0.15)
        q = camera_path(photo, a0, a1, n)
        new_query(name, q)
        hosts.append(q)
        add(name, "DS", f"{name}-ds1", _transformed_copy(q, rng))
        for k in range(2):  # another camera path over the same part of the scene
            add(name, "CS", f"{name}-cs{k}", camera_path(photo, random_box(rng, (0.4, 0.6), near=a0),
                                                         random_box(rng, (0.4, 0.6), near=a1), n + rng.randint(-2, 4)))
        # the far side of the photo: same source, different scene
        far = (1 - a0[0], 1 - a0[1], 0.4)
        add(name, "IS", f"{name}-is0", camera_path(photo, far, random_box(rng, (0.35, 0.45), near=far, spread=0.05), n))
    for i, name in enumerate(BENCHMARK_PHOTOS):  # picture-in-picture copies, hosted by another query
        add(name, "DS", f"{name}-ds2", _transformed_copy(bench.videos[name], rng, host=hosts[(i + 1) % len(hosts)]))

    bikes = clips["bikes"]  # 10 s with scene cuts: the first shots are the query, the last ones IS
    new_query("bikes", bikes[:n])
    add("bikes", "DS", "bikes-ds1", _transformed_copy(bikes[:n], rng))
    add("bikes", "CS", "bikes-cs0", camera_path(bikes[:n], (0.3, 0.5, 0.7), (0.7, 0.5, 0.7), n))
    add("bikes", "IS", "bikes-is0", bikes[-n:])

    cp = clips["carphone_pristine"]
    new_query("carphone", cp[:n])
    add("carphone", "DS", "carphone-distorted", clips["carphone_distorted"][:n])  # a real degraded copy
    add("carphone", "DS", "carphone-ds1", _transformed_copy(cp[:n], rng))
    add("carphone", "CS", "carphone-cs0", camera_path(cp, (0.35, 0.4, 0.6), (0.6, 0.55, 0.75), n))

    for qid, other in (("v2", "v1"), ("v1", "v2")):  # two camera paths over the same skyline
        new_query(qid, clips[qid])
    add("v2", "DS", "v2s", clips["v2s"])  # v2 re-cut
    add("v1", "CS", "v2s", clips["v2s"])
    add("v2", "CS", "v1", clips["v1"])
    add("v1", "CS", "v2", clips["v2"])
    add("v1", "DS", "v1-ds1", _transformed_copy(clips["v1"], rng))
    add("v2", "DS", "v2-ds1", _transformed_copy(clips["v2"], rng))

    bunny = clips["bigbuckbunny"]
    new_query("bunny", bunny)
    add("bunny", "DS", "bunny-ds1", _transformed_copy(bunny, rng))
    add("bunny", "CS", "bunny-cs0", camera_path(bunny, (0.3, 0.45, 0.75), (0.65, 0.55, 0.6), bunny.shape[0]))
    return bench
