"""Training batches drawn from the cached view pool.

Each step takes ``B`` distinct videos and two clips of each: a window of the weak view and an
overlapping window of a strong view with one temporal edit (SPEC section 3), applied to the
cached features and teacher vectors alike. Edited clips are cut back to ``clip_frames`` (slow
motion and pauses would lengthen them), which bounds the all-pairs cost ``(2B)^2 T^2``. All randomness comes from one ``random.Random``
whose state is checkpointed, so a resumed run draws the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hapvr.data.augment import TEMPORAL_EDITS, positive_matrix, temporal_edit_indices


@dataclass
class Batch:
    features: torch.Tensor  # [2B, T, 9, D] whitened region features, 0 on padding
    teacher: torch.Tensor  # [2B, T, Dt]
    lengths: torch.Tensor  # [2B]
    positives: torch.Tensor  # [2B, 2B] bool
    video_index: torch.Tensor  # [2B] pool index of each clip's video
    guests: torch.Tensor | None = None  # [2B] pool index of a video pasted into the clip, -1 if none


class FeaturePool:
    """The view pool with PCA-whitened features, ready for batching."""

    def __init__(self, pool, whiten, chunk: int = 64):
        V, K, T, R, _ = pool.desc.shape
        feats = []
        with torch.no_grad():
            flat = pool.desc.reshape(V * K, T, R, -1)
            for s in range(0, flat.shape[0], chunk):
                feats.append(whiten(flat[s:s + chunk].float()))
        self.features = torch.cat(feats).view(V, K, T, R, -1)
        self.teacher = F.normalize(pool.teacher.float(), dim=-1)
        self.lengths = pool.lengths
        self.mixed_with = pool.mixed_with
        self.video_ids = pool.video_ids

    def __len__(self) -> int:
        return len(self.video_ids)


def draw_batch(pool: FeaturePool, rng: random.Random, batch_videos: int, clip_frames: int,
               edits: dict[str, float] | None = None, exclude: set[int] | None = None,
               max_shift: float = 0.25) -> Batch:
    """``max_shift``: the strong clip starts up to ``max_shift x clip length`` frames before or
    after the weak one (0 = the same window; 1 = windows may be disjoint)."""
    V, K = pool.features.shape[:2]
    choices = [v for v in range(V) if not exclude or v not in exclude]
    videos = rng.sample(choices, min(batch_videos, len(choices)))
    clips, teach, ids, mixed = [], [], [], []
    for v in videos:
        n = int(pool.lengths[v])
        L = min(clip_frames, n)
        a0 = rng.randint(0, n - L)
        reach = int(L * max_shift)
        shift = rng.randint(-reach, reach)
        b0 = min(max(a0 + shift, 0), n - L)
        kb = rng.randrange(1, K) if K > 1 else 0
        _, idx = temporal_edit_indices(L, rng, edits=edits or TEMPORAL_EDITS)
        idx = idx[:clip_frames] + b0  # slow motion / pauses are cut back to the clip length
        ia = torch.arange(a0, a0 + L)
        clips += [pool.features[v, 0, ia], pool.features[v, kb, idx]]
        teach += [pool.teacher[v, 0, ia], pool.teacher[v, kb, idx]]
        guest = int(pool.mixed_with[v, kb])
        ids += [v, v]
        mixed += [None, guest if guest >= 0 else None]
    lengths = torch.tensor([c.shape[0] for c in clips])
    T = int(lengths.max())
    feats = torch.zeros((len(clips), T) + clips[0].shape[1:])
    tvec = torch.zeros(len(clips), T, teach[0].shape[-1])
    for i, (c, t) in enumerate(zip(clips, teach)):
        feats[i, : c.shape[0]] = c
        tvec[i, : t.shape[0]] = t
    guests = torch.tensor([-1 if m is None else m for m in mixed])
    return Batch(feats, tvec, lengths, positive_matrix(ids, mixed), torch.tensor(ids), guests)
