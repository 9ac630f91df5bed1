"""The built-in default corpus: unlabelled training videos and a held-out benchmark.

Training videos are pans and zooms of a virtual camera over real photos. The benchmark is
built from *other* media (the real clips and other photos) and has three relevance levels in
the spirit of FIVR (SPEC section 4):

- ``DS`` (duplicate scene): the query's own footage re-edited (temporal edit, crop, colour,
  captions / emoji, blur, picture-in-picture), or a real re-encoding / re-cut shipped with the
  clip (``carphone_distorted``, ``v2s``);
- ``CS`` (complementary scene): the same scene filmed by another camera (a pan / zoom pointed
  beside the query's view, overlapping it partly, with another white balance, gamma and noise;
  another path over the footage of a clip; the two skyline clips ``v1`` / ``v2``);
- ``IS`` (incident scene): the same source, a different scene (a disjoint part of the photo, the
  other shots of ``bikes``).

DSVR positives are DS; CSVR DS+CS; ISVR DS+CS+IS. Everything else is a negative.

The benchmark also holds **partial copies** for localisation (:func:`build_partial_copies`):
targets made of unrelated footage with one or two segments of a query inside, played at 1x,
2x or 0.5x and lightly re-edited (crop, colour), each with its known spans. They are kept apart
from the retrieval database, so the mAP / uAP figures do not depend on them. Spans are in
frames, which hapvr reads as seconds (its extraction samples 1 frame per second).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from hapvr.data import augment
from hapvr.data.media import clip_paths, load_photos
from hapvr.data.renders import make_world, render
from hapvr.data.video import SHORT_SIDE, center_crop, decode_video

# held out from training: used only by the benchmark
BENCHMARK_PHOTOS = ("sklearn-china", "sklearn-flower", "skimage-astronaut", "skimage-rocket", "skimage-coffee",
                    "skimage-chelsea")
# held out from training and test: photo queries of the validation benchmark (natural photos, like
# the test's; Wikimedia Commons, shipped by perception)
VALIDATION_PHOTOS = ("perception-image2", "perception-image3", "perception-image5", "perception-image7",
                     "perception-image9", "perception-image4")
LEVELS = ("DS", "CS", "IS")


@dataclass
class CorpusConfig:
    """Sizes of the built-in corpus (kept small: it must build and train in minutes on 2 cores)."""

    train_videos_per_photo: int = 1
    train_frames: int = 24
    benchmark_frames: int = 24
    clip_fps: float = 3.0  # the bundled clips last 4-10 s: sample 3 frames per second
    seed: int = 0


@dataclass
class BenchmarkVideos:
    """Videos (``uint8 [T, 3, 256, 256]``), queries and per-level labels ``{qid: {level: [ids]}}``."""

    videos: dict[str, torch.Tensor] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    labels: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    partial_videos: dict[str, torch.Tensor] = field(default_factory=dict)
    partial: list["PartialCopy"] = field(default_factory=list)
    copies: list["CopyTruth"] = field(default_factory=list)  # where each DS copy's frames come from

    def add_truth(self, query: str, target: str, kind: str, matches) -> None:
        self.copies.append(CopyTruth(query, target, kind, tuple((int(q), int(t)) for q, t in matches)))


# How a DS copy was made (the localisation table of python -m hapvr.train has a row per kind).
COPY_KINDS = ("re-edit", "picture-in-picture", "host of picture-in-picture", "speed change", "re-encoding",
              "re-cut", "partial copy")


@dataclass(frozen=True)
class CopyTruth:
    """Where the frames of copy ``target`` come from in ``query``: ``matches`` lists ``(query
    frame, target frame)`` pairs, one per target frame that shows the query; ``kind`` is one of
    :data:`COPY_KINDS`."""

    query: str
    target: str
    kind: str
    matches: tuple[tuple[int, int], ...]

    def spans(self) -> list[tuple[int, int, int, int]]:
        """The copied segments as boxes ``(query_start, query_end, target_start, target_end)`` in
        frames (ends exclusive): maximal runs of target frames whose query frames move one way
        (forward or backward) by at most 2 frames a step; a cut, a shuffle or a turn starts a new one."""
        out, run = [], []
        for m in sorted(self.matches, key=lambda m: m[1]):
            if run:
                step = m[0] - run[-1][0]
                turned = len(run) > 1 and (run[-1][0] - run[-2][0]) * step < 0
                if abs(step) > 2 or m[1] - run[-1][1] > 1 or turned:
                    out.append(run)
                    run = []
            run.append(m)
        if run:
            out.append(run)
        return [(min(q for q, _ in r), max(q for q, _ in r) + 1, min(t for _, t in r), max(t for _, t in r) + 1)
                for r in out]


@dataclass(frozen=True)
class PartialCopy:
    """Target ``target`` (in ``BenchmarkVideos.partial_videos``) holds copies of parts of query
    ``query``: each span ``(query_start, query_end, target_start, target_end)`` in frames, ends
    exclusive, at playback ``speeds`` (target frames per query frame: 2.0 is a 0.5x slow-down)."""

    query: str
    target: str
    spans: tuple[tuple[int, int, int, int], ...]
    speeds: tuple[float, ...]
    host: str = ""  # the query whose footage surrounds the copies

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


def beside_box(rng: random.Random, box: tuple, shift=(0.45, 0.65)) -> tuple:
    """A box of similar size whose centre is moved by ``shift`` x its side in a random direction:
    it overlaps ``box`` partly (another viewpoint on the same scene, not a re-crop of it)."""
    s = box[2] * rng.uniform(0.85, 1.15)
    angle = rng.uniform(0, 2 * np.pi)
    d = rng.uniform(*shift) * box[2]
    cx = min(max(box[0] + d * np.cos(angle), s / 2), 1 - s / 2)
    cy = min(max(box[1] + d * np.sin(angle), s / 2), 1 - s / 2)
    return (cx, cy, s)


# --- training videos ----------------------------------------------------------------------------


def build_train_videos(cfg: CorpusConfig, renders: int = 0) -> dict[str, torch.Tensor]:
    """Pans and zooms over every photo not held out for the benchmarks, and ``renders`` videos of
    rendered worlds (training seeds, disjoint from the benchmarks'), each one camera path over a
    span of the world's time."""
    return build_train_corpus(cfg, renders)[0]


def build_train_corpus(cfg: CorpusConfig, renders: int = 0, siblings: bool = False
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(videos, siblings)``: the training videos of :func:`build_train_videos` and, with
    ``siblings``, for each one the same scene filmed by another camera beside it (a path whose
    boxes are moved by about half their side, with another camera look: the benchmarks' CS
    level). Siblings draw from their own random stream, so the videos are the same either way."""
    rng = random.Random(cfg.seed)
    srng = random.Random(cfg.seed + 7)
    videos, sib = {}, {}
    for name, photo in sorted(load_photos().items()):
        if name in BENCHMARK_PHOTOS or name in VALIDATION_PHOTOS:
            continue
        for k in range(cfg.train_videos_per_photo):
            a0, a1 = random_box(rng), random_box(rng)
            videos[f"{name}-{k}"] = camera_path(photo, a0, a1, cfg.train_frames)
            if siblings:
                sib[f"{name}-{k}"] = _other_camera(camera_path(photo, beside_box(srng, a0), beside_box(srng, a1),
                                                               cfg.train_frames), srng)
    if renders:
        for i in range(renders):
            world = make_world(RENDER_SEEDS["train"] + i)
            t0 = rng.uniform(0, 40)
            a0 = random_box(rng, (0.45, 0.7))
            a1 = random_box(rng, (0.45, 0.7), near=a0, spread=0.2)
            times = [t0 + k for k in range(cfg.train_frames)]
            vid = f"render{RENDER_SEEDS['train'] + i}-0"
            videos[vid] = render(world, times, a0, a1)
            if siblings:
                sib[vid] = _other_camera(render(world, times, beside_box(srng, a0), beside_box(srng, a1)), srng)
    return videos, sib


# --- benchmark ----------------------------------------------------------------------------------


def _copy_edit(frames: torch.Tensor, rng: random.Random,
               host: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A DS copy: the same footage re-edited as copies are in practice: one temporal edit, a crop
    (70-100 % of the area), a colour change, captions / emoji, a little blur; optionally shown
    picture-in-picture inside ``host``. Returns 256x256 frames and, per copy frame, the source
    frame it shows (the host's frame ``j`` is shown at copy frame ``j mod len(host)``)."""
    import torchvision.transforms.v2.functional as TF

    _, idx = augment.temporal_edit_indices(frames.shape[0], rng)
    x = augment.random_resized_crop_flip(frames[idx], rng, (0.7, 1.0), SHORT_SIDE, flip_p=0.3)
    x = TF.adjust_brightness(x, rng.uniform(0.75, 1.25))
    x = TF.adjust_contrast(x, rng.uniform(0.75, 1.25))
    x = TF.adjust_saturation(x, rng.uniform(0.6, 1.4))
    x = augment.per_frame_overlays(x, rng, augment.AugmentConfig(p_text=0.5, p_emoji=0.4, p_blur=0.3))
    if host is not None:  # picture-in-picture: the copy shown inside another video
        host = host[torch.arange(x.shape[0]) % host.shape[0]]
        x = augment.video_in_video(host, x, rng, (0.55, 0.7))
    return x, idx


def _truth_of_edit(bench: BenchmarkVideos, query: str, target: str, idx: torch.Tensor, host: str | None = None,
                   host_frames: int | None = None) -> None:
    """The truth of a :func:`_copy_edit` copy: copy frame ``j`` shows query frame ``idx[j]``; in a
    picture-in-picture copy it also shows its host's frame ``j mod len(host)`` around the inset."""
    bench.add_truth(query, target, "re-edit" if host is None else "picture-in-picture",
                    [(int(q), j) for j, q in enumerate(idx)])
    if host is not None:
        bench.add_truth(host, target, "host of picture-in-picture", [(j % host_frames, j) for j in range(len(idx))])


def _add_edit(bench: BenchmarkVideos, query: str, target: str, frames: torch.Tensor, rng: random.Random) -> None:
    """A re-edited DS copy of ``frames`` (query ``query``) with its truth."""
    bench.videos[target], idx = _copy_edit(frames, rng)
    bench.labels[query]["DS"].append(target)
    _truth_of_edit(bench, query, target, idx)


def _recut_matches(source_frames: int, recut_frames: int, fps: float) -> list[tuple[int, int]]:
    """``v2s`` is a re-cut of ``v2`` (perception's test data): its first 1.75 s are v2's first
    1.75 s, the rest is v2's last seconds."""
    head = min(math.ceil(1.75 * fps), recut_frames)
    tail = recut_frames - head
    return [(j, j) for j in range(head)] + [(source_frames - tail + k, head + k) for k in range(tail)]


def _other_camera(frames: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """The look of another camera: white balance, gamma, contrast and sensor noise."""
    x = frames.float() / 255
    x = x * torch.tensor([rng.uniform(0.85, 1.15) for _ in range(3)]).view(1, 3, 1, 1)
    x = x.clamp(0, 1) ** rng.uniform(0.75, 1.3)
    x = (x - 0.5) * rng.uniform(0.8, 1.2) + 0.5
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x = x + torch.randn(x.shape, generator=g) * rng.uniform(0.0, 0.03)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def build_benchmark(cfg: CorpusConfig, split: str = "builtin") -> BenchmarkVideos:
    """The held-out benchmark. ``split``:

    - ``builtin`` (the default run's): 11 queries from the packaged clips and held-out photos,
      with their partial copies;
    - ``test``: those and :data:`RENDER_QUERIES` more from rendered worlds (test seeds);
    - ``validation``: :data:`VALIDATION_QUERIES` queries from rendered worlds (other seeds) and
      one per :data:`VALIDATION_PHOTOS` photo, built like the test's photo queries, each with a
      partial copy hosted by an unrelated query (for choosing settings; never report it).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "validation":
        bench = BenchmarkVideos()
        add_render_queries(bench, VALIDATION_QUERIES, RENDER_SEEDS["validation"], random.Random(cfg.seed + 3))
        add_photo_queries(bench, load_photos(), VALIDATION_PHOTOS, random.Random(cfg.seed + 5), cfg.benchmark_frames)
        build_partial_copies(bench, random.Random(cfg.seed + 6), unrelated_hosts(bench))
        return bench
    bench = _builtin_benchmark(cfg)
    if split == "test":
        add_render_queries(bench, RENDER_QUERIES, RENDER_SEEDS["test"], random.Random(cfg.seed + 4))
    return bench


SPLITS = ("builtin", "test", "validation")
RENDER_SEEDS = {"train": 0, "test": 10_000, "validation": 20_000}  # disjoint world seeds per use
RENDER_QUERIES = 50  # test: 11 built-in + 50 rendered queries
VALIDATION_QUERIES = 60
RENDER_FRAMES = 8


def add_render_queries(bench: BenchmarkVideos, n: int, seed0: int, rng: random.Random) -> None:
    """``n`` queries from rendered worlds (:mod:`hapvr.data.renders`), each with moving content:

    - DS: the query's frames re-edited (temporal edit, crop, colour, overlays; every third one
      shown picture-in-picture inside the previous world's query); and the same event re-rendered
      at 0.5x (slow motion, frames at half time steps) or 2x (every second time step, twice as
      long a span), lightly cropped and recoloured;
    - CS: the same event through another camera beside the query's, with another camera look;
    - IS: the same world later on, elsewhere.
    """
    n_frames = RENDER_FRAMES
    previous, previous_id = None, None
    for i in range(n):
        world = make_world(seed0 + i)
        qid = f"render{seed0 + i}"
        t0 = rng.uniform(0, 20)
        a0 = random_box(rng, (0.45, 0.65))
        a1 = random_box(rng, (0.45, 0.65), near=a0, spread=0.1)
        q = render(world, [t0 + k for k in range(n_frames)], a0, a1)
        bench.videos[qid] = q
        bench.queries.append(qid)
        bench.labels[qid] = {lv: [] for lv in LEVELS}
        host = previous if (i % 3 == 2 and previous is not None) else None
        bench.videos[f"{qid}-ds1"], idx = _copy_edit(q, rng, host=host)
        bench.labels[qid]["DS"].append(f"{qid}-ds1")
        _truth_of_edit(bench, qid, f"{qid}-ds1", idx, previous_id if host is not None else None,
                       None if host is None else host.shape[0])
        speed = 0.5 if i % 2 == 0 else 2.0
        m = n_frames * 2 if speed == 0.5 else n_frames
        times = [t0 + k * speed for k in range(m)] if speed == 0.5 else [t0 + 2 * k for k in range(m)]
        ends = (a0, a1) if speed == 0.5 else (a0, tuple(2 * e - s for s, e in zip(a0, a1)))  # the same camera move
        ends = tuple(tuple(min(max(x, 0.05), 0.95) for x in box) for box in ends)
        bench.videos[f"{qid}-ds2"] = _light_edit(render(world, times, *ends), rng)
        bench.labels[qid]["DS"].append(f"{qid}-ds2")
        # the re-render's time k * speed (0.5x) or 2k (2x) is the query's frame at that time, where it has one
        bench.add_truth(qid, f"{qid}-ds2", "speed change",
                        [(k // 2, k) for k in range(m)] if speed == 0.5 else [(2 * k, k) for k in range(m) if 2 * k < n_frames])
        cs = _other_camera(render(world, [t0 + k for k in range(n_frames)], beside_box(rng, a0), beside_box(rng, a1)), rng)
        bench.videos[f"{qid}-cs0"] = cs
        bench.labels[qid]["CS"].append(f"{qid}-cs0")
        later = t0 + rng.uniform(40, 80)
        far = (1 - a0[0], 1 - a0[1], rng.uniform(0.4, 0.6))
        bench.videos[f"{qid}-is0"] = render(world, [later + k for k in range(n_frames)], far,
                                            random_box(rng, (0.4, 0.6), near=far, spread=0.1))
        bench.labels[qid]["IS"].append(f"{qid}-is0")
        if host is not None:  # the picture-in-picture copy shows the host's footage too
            bench.labels[previous_id]["DS"].append(f"{qid}-ds1")
        previous, previous_id = q, qid


def add_photo_queries(bench: BenchmarkVideos, photos: dict[str, np.ndarray], names, rng: random.Random, n: int) -> None:
    """One query per photo of ``names``, a camera path over it, with its levels:

    - DS: the query re-edited (:func:`_copy_edit`), and a picture-in-picture copy of it inside the
      next photo's query (a DS copy of both);
    - CS: two other cameras beside the query's, with another camera look;
    - IS: a camera path over the far side of the photo.
    """
    def add(qid, level, vid, frames):
        bench.videos[vid] = frames
        bench.labels[qid][level].append(vid)

    hosts = []
    for name in names:
        photo = photos[name]
        a0 = random_box(rng, (0.4, 0.55))
        a1 = random_box(rng, (0.4, 0.55), near=a0, spread=0.15)
        q = camera_path(photo, a0, a1, n)
        bench.videos[name] = q
        bench.queries.append(name)
        bench.labels[name] = {lv: [] for lv in LEVELS}
        hosts.append(q)
        copy, idx = _copy_edit(q, rng)
        add(name, "DS", f"{name}-ds1", copy)
        _truth_of_edit(bench, name, f"{name}-ds1", idx)
        for k in range(2):  # another camera pointed at the same scene from beside the query's
            path = camera_path(photo, beside_box(rng, a0), beside_box(rng, a1), n + rng.randint(-2, 4))
            add(name, "CS", f"{name}-cs{k}", _other_camera(path, rng))
        # the far side of the photo: same source, different scene
        far = (1 - a0[0], 1 - a0[1], 0.4)
        add(name, "IS", f"{name}-is0", camera_path(photo, far, random_box(rng, (0.35, 0.45), near=far, spread=0.05), n))
    for i, name in enumerate(names):  # picture-in-picture copies, hosted by another query
        host = names[(i + 1) % len(names)]
        copy, idx = _copy_edit(bench.videos[name], rng, host=hosts[(i + 1) % len(hosts)])
        add(name, "DS", f"{name}-ds2", copy)
        bench.labels[host]["DS"].append(f"{name}-ds2")  # it shows the host's footage too
        _truth_of_edit(bench, name, f"{name}-ds2", idx, host, hosts[(i + 1) % len(hosts)].shape[0])


def _builtin_benchmark(cfg: CorpusConfig) -> BenchmarkVideos:
    rng = random.Random(cfg.seed + 1)
    n = cfg.benchmark_frames
    bench = BenchmarkVideos()
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

    add_photo_queries(bench, photos, BENCHMARK_PHOTOS, rng, n)

    bikes = clips["bikes"]  # 10 s with scene cuts: the first shots are the query, the last ones IS
    h = min(n, bikes.shape[0] // 2)
    new_query("bikes", bikes[:h])
    _add_edit(bench, "bikes", "bikes-ds1", bikes[:h], rng)
    add("bikes", "CS", "bikes-cs0", _other_camera(camera_path(bikes[:h], (0.3, 0.5, 0.7), (0.7, 0.5, 0.7), h), rng))
    add("bikes", "IS", "bikes-is0", bikes[-h:])

    cp = clips["carphone_pristine"]
    new_query("carphone", cp[:n])
    add("carphone", "DS", "carphone-distorted", clips["carphone_distorted"][:n])  # a real degraded copy
    bench.add_truth("carphone", "carphone-distorted", "re-encoding",
                    [(j, j) for j in range(min(n, cp.shape[0], clips["carphone_distorted"].shape[0]))])
    _add_edit(bench, "carphone", "carphone-ds1", cp[:n], rng)
    add("carphone", "CS", "carphone-cs0", _other_camera(camera_path(cp, (0.35, 0.4, 0.6), (0.6, 0.55, 0.75), n), rng))

    for qid, other in (("v2", "v1"), ("v1", "v2")):  # two camera paths over the same skyline
        new_query(qid, clips[qid])
    add("v2", "DS", "v2s", clips["v2s"])  # v2 re-cut
    bench.add_truth("v2", "v2s", "re-cut", _recut_matches(clips["v2"].shape[0], clips["v2s"].shape[0], cfg.clip_fps))
    add("v1", "CS", "v2s", clips["v2s"])
    add("v2", "CS", "v1", clips["v1"])
    add("v1", "CS", "v2", clips["v2"])
    _add_edit(bench, "v1", "v1-ds1", clips["v1"], rng)
    _add_edit(bench, "v2", "v2-ds1", clips["v2"], rng)
    bench.labels["v2"]["CS"].append("v1-ds1")  # copies of the other camera path
    bench.labels["v1"]["CS"].append("v2-ds1")

    bunny = clips["bigbuckbunny"]
    new_query("bunny", bunny)
    _add_edit(bench, "bunny", "bunny-ds1", bunny, rng)
    add("bunny", "CS", "bunny-cs0", _other_camera(camera_path(bunny, (0.3, 0.45, 0.75), (0.65, 0.55, 0.6), bunny.shape[0]), rng))
    build_partial_copies(bench, random.Random(cfg.seed + 2))
    return bench


# --- partial copies (localisation) --------------------------------------------------------------

# query -> the query whose footage hosts its copies (unrelated to it at every level)
PARTIAL_HOSTS = {"sklearn-china": "bikes", "sklearn-flower": "bunny", "skimage-astronaut": "v1",
                 "skimage-rocket": "carphone", "skimage-coffee": "bikes", "skimage-chelsea": "bunny",
                 "bunny": "skimage-rocket", "v1": "sklearn-flower", "v2": "skimage-chelsea",
                 "bikes": "skimage-astronaut", "carphone": "sklearn-china"}
SPEEDS = (1.0, 0.5, 2.0)  # target frames per query frame: normal, 2x fast, 0.5x slow


def _light_edit(frames: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A copy's re-edit without temporal change: crop (80-100 % of the area) and colour."""
    import torchvision.transforms.v2.functional as TF

    x = augment.random_resized_crop_flip(frames, rng, (0.8, 1.0), SHORT_SIDE, flip_p=0.0)
    x = TF.adjust_brightness(x, rng.uniform(0.8, 1.2))
    return TF.adjust_contrast(x, rng.uniform(0.8, 1.2))


def _square(frames: torch.Tensor) -> torch.Tensor:
    return center_crop(frames, SHORT_SIDE)


def _played(segment: torch.Tensor, speed: float) -> torch.Tensor:
    """``segment`` played at ``1 / speed`` (``speed`` target frames per source frame)."""
    n = max(1, round(segment.shape[0] * speed))
    idx = torch.clamp((torch.arange(n) / speed).long(), max=segment.shape[0] - 1)
    return segment[idx]


def unrelated_hosts(bench: BenchmarkVideos) -> dict[str, str]:
    """For each query, a later query unrelated to it at every level (either way): the host of its
    partial copies in the validation benchmark."""
    def related(a, b):
        return b in {v for vs in bench.labels[a].values() for v in vs} or a in {v for vs in bench.labels[b].values()
                                                                               for v in vs}
    n, out = len(bench.queries), {}
    for i, q in enumerate(bench.queries):
        out[q] = next(h for j in range(2, n + 2) if not related(q, h := bench.queries[(i + j) % n]) and h != q)
    return out


def build_partial_copies(bench: BenchmarkVideos, rng: random.Random, hosts: dict[str, str] | None = None) -> None:
    """Adds one partial-copy target per query (two copies in one target for every third query),
    cycling through the playback speeds of ``SPEEDS``: unrelated footage (the host query's:
    ``hosts``, default :data:`PARTIAL_HOSTS`), then a segment of the query played at that speed,
    then more unrelated footage. Filled into ``bench.partial_videos`` and ``bench.partial``."""
    hosts = hosts or PARTIAL_HOSTS
    k = 0
    for i, qid in enumerate(bench.queries):
        query = _square(bench.videos[qid])
        host = _square(bench.videos[hosts[qid]])
        n_copies = 2 if i % 3 == 2 else 1
        parts, spans, speeds, t = [], [], [], 0

        def filler(m):
            s = rng.randrange(0, max(1, host.shape[0] - m))
            return host[torch.arange(s, s + m) % host.shape[0]]

        for c in range(n_copies):
            speed = SPEEDS[k % len(SPEEDS)]
            k += 1
            gap = filler(rng.randint(6, 10))  # more than the localiser's max_gap: copies stay apart
            parts.append(gap)
            t += gap.shape[0]
            T = query.shape[0]
            length = min(T, rng.randint(8, 12)) if n_copies == 1 else min(T // 2, rng.randint(7, 9))
            lo = 0 if n_copies == 1 else c * (T // 2)
            start = rng.randint(lo, lo + (T if n_copies == 1 else T // 2) - length)
            copy = _light_edit(_played(query[start:start + length], speed), rng)
            parts.append(copy)
            spans.append((start, start + length, t, t + copy.shape[0]))
            speeds.append(speed)
            t += copy.shape[0]
        parts.append(filler(rng.randint(6, 10)))
        vid = f"{qid}-partial"
        bench.partial_videos[vid] = torch.cat(parts)
        bench.partial.append(PartialCopy(qid, vid, tuple(spans), tuple(speeds), hosts[qid]))
