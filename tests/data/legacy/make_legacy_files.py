"""Writes the files of ``tests/data/legacy/`` with the package as it was at commit e15dd4a
(2026-11-30), before the library and the commands were separated: a training checkpoint, an
index built with the default model, score caches, an extracted feature file and both PCA file
layouts. ``tests/test_compatibility.py`` checks that today's package reads each of them.

Run from a checkout of that commit with its editable install::

    git worktree add /tmp/hapvr-e15dd4a e15dd4a && cd /tmp/hapvr-e15dd4a
    python /path/to/tests/data/legacy/make_legacy_files.py /path/to/tests/data/legacy

It imports that commit's module paths (hapvr.training.checkpoint, hapvr.index, ...), which no
longer exist, so it is kept as the record of how the files were made, not run by the tests.
"""

import json
import random
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
g = np.random.default_rng(0)


def unit(*shape):
    x = g.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# 1. a training checkpoint (format hapvr-checkpoint-2), step 0, tiny PCA (1752 -> 16), residual head
from hapvr.features.pca import PCAWhitening
from hapvr.models import VideoSimilarityModel
from hapvr.training.checkpoint import save_checkpoint
from hapvr.training.config import TrainConfig
import dataclasses

cfg = dataclasses.replace(TrainConfig(), pca_dim=16, out=str(out))
pca = PCAWhitening(1752, 16).fit(torch.from_numpy(unit(400, 1752)))
model = VideoSimilarityModel(16, cfg.k_s, cfg.k_t, head=cfg.head)
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.01 * torch.randn_like(p))
opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
save_checkpoint(str(out / "checkpoint.pt"), step=0, model=model, pca=pca, optimizer=opt, scheduler=sched,
                sampler=random.Random(0), config=dataclasses.asdict(cfg), extra={"pipeline": "cached"})
frames = torch.from_numpy(unit(3, 9, 1752))
torch.save({"descriptors": frames, "features": pca(frames), "similarity": torch.tensor(
    model.similarity(pca(frames), pca(frames.flip(0))))}, out / "checkpoint_expected.pt")

# 2. an index built with the default model (two videos of unit features)
from hapvr.api import load_model
from hapvr.index import model_space
from hapvr.retrieval.index_store import IndexStore

default = load_model(device="cpu")
videos = {"alpha": unit(6, 9, 512), "beta": unit(5, 9, 512)}
with IndexStore.create(out / "default.index", model_space(default), (9, 512)) as store:
    for vid, x in videos.items():
        store.add(vid, x)

# 3. score caches of the evaluation engine: the baseline (D = 8) and the default model (D = 512)
from hapvr.evaluation.engine import compute_scores
from hapvr.evaluation.feature_store import write_features
from hapvr.evaluation.scorers import ChamferBaseline

small = {f"v{i}": unit(4 + i, 9, 8) for i in range(4)}
write_features(out / "small.hdf5", small)
from hapvr.evaluation.feature_store import FeatureStore

with FeatureStore(out / "small.hdf5") as fs:
    scores = compute_scores(ChamferBaseline(), fs, ["v0", "v1"], ["v2", "v3"], cache_dir=out / "cache-baseline",
                            progress=False)
with h5py.File(out / "default.hdf5", "w") as f:
    for vid, x in videos.items():
        f.create_dataset(vid, data=x.astype(np.float16))
with FeatureStore(out / "default.hdf5") as fs:
    model_scores = compute_scores(default.scorer(), fs, ["alpha"], ["alpha", "beta"], cache_dir=out / "cache-default",
                                  progress=False)
(out / "scores.json").write_text(json.dumps({"baseline": scores, "default": model_scores}, indent=1, sort_keys=True))

# 4. PCA files: python -m hapvr.pca's layout and python -m hapvr.extract --fit-pca's (a bare state dict)
from hapvr.pca import FORMAT, learn_pca

with h5py.File(out / "raw.hdf5", "w") as f:
    f.attrs["hapvr_space"] = "raw"
    f.attrs["backbone"] = "efficientnet_lite0"
    for i in range(3):
        f.create_dataset(f"r{i}", data=unit(20, 9, 1752))
content = learn_pca(str(out / "raw.hdf5"), dim=16, progress=False)
torch.save(content, out / "pca_hapvr_pca.pt")
torch.save({k: v for k, v in pca.state_dict().items()}, out / "pca_fit_pca.pt")
(out / "raw.hdf5").unlink()
print("wrote", sorted(p.name for p in out.iterdir()))

# 5. a feature file of python -m hapvr.extract (the checkpoint's backbone and PCA), one packaged clip
import hapvr.data.media as media
from hapvr.extract import main as extract_main

clip = media.clip_paths()["v1"]
assert extract_main(["--videos", clip, "--output", str(out / "extracted.hdf5"), "--checkpoint",
                     str(out / "checkpoint.pt"), "--no-progress"]) == 0
print("wrote extracted.hdf5")
