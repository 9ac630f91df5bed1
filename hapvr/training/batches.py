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
from hapvr.models.padding import pad_stack


@dataclass
class Batch:
    features: torch.Tensor  # [2B, T, 9, D] whitened region features, 0 on padding
    teacher: torch.Tensor  # [2B, T, Dt]
    lengths: torch.Tensor  # [2B]
    positives: torch.Tensor  # [2B, 2B] bool
    video_index: torch.Tensor  # [2B] pool index of each clip's video
    guests: torch.Tensor | None = None  # [2B] pool index of a video pasted into the clip, -1 if none
    related: torch.Tensor | None = None  # [N, N] bool: sibling pairs, relevant at the coarser level only


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
        self.siblings = bool(getattr(pool, "siblings", False))  # the last view is each video's sibling

    def __len__(self) -> int:
        return len(self.video_ids)


def draw_batch(pool: FeaturePool, rng: random.Random, batch_videos: int, clip_frames: int,
               edits: dict[str, float] | None = None, exclude: set[int] | None = None,
               max_shift: float = 0.25, siblings: int = 0, guests: bool = False) -> Batch:
    """``max_shift``: the strong clip starts up to ``max_shift x clip length`` frames before or
    after the weak one (0 = the same window; 1 = windows may be disjoint).

    ``siblings``: the first ``siblings`` videos of the batch also bring a clip of their sibling
    (another camera on the same scene, the pool's last view; needs a pool built with siblings),
    a window anywhere in it. It is a positive of itself only; ``Batch.related``
    marks it against its video's clips (and the clips that show that video pasted in), so the
    objective can rank it below the copies and above the other videos.

    ``guests``: a strong clip whose view has another video pasted in (``pool.mixed_with``) brings
    that video into the step, in the last slot not yet drawn (a slot kept for an earlier clip's
    guest is never given away), so the clip is a positive of two videos of the step; without it
    the guest is in the step only by chance. The draws are the same either way; only later slots'
    videos change (``--pip-guests``).
    """
    V, K = pool.features.shape[:2]
    if siblings and not getattr(pool, "siblings", False):
        raise ValueError("siblings > 0 needs a view pool built with siblings")
    K -= bool(getattr(pool, "siblings", False))  # the sibling view is never drawn as a copy
    choices = [v for v in range(V) if not exclude or v not in exclude]
    videos = rng.sample(choices, min(batch_videos, len(choices)))
    allowed, placed = set(choices), set()
    clips, teach, ids, mixed = [], [], [], []
    for i in range(len(videos)):
        v = videos[i]
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
        if guests and guest in videos:
            placed.add(videos.index(guest))  # already in the step: it keeps its slot
        elif guests and guest in allowed:
            # the pasted video joins the step (in the last slot not yet drawn nor kept), so the
            # mixed clip is a positive of two videos of the step, not of its host alone
            free = [j for j in range(len(videos) - 1, i, -1) if j not in placed]
            if free:
                videos[free[0]] = guest
                placed.add(free[0])
        ids += [v, v]
        mixed += [None, guest if guest >= 0 else None]
    n_copies = len(clips)
    for v in videos[:siblings]:
        n = int(pool.lengths[v])
        L = min(clip_frames, n)
        s0 = rng.randint(0, n - L)
        ia = torch.arange(s0, s0 + L)
        clips.append(pool.features[v, -1, ia])
        teach.append(pool.teacher[v, -1, ia])
    feats, lengths = pad_stack(clips)
    tvec, _ = pad_stack(teach)
    sib_ids = list(videos[:siblings])
    n_sib = len(sib_ids)
    copy_pos = positive_matrix(ids, mixed)
    positives = torch.eye(n_copies + n_sib, dtype=torch.bool)
    positives[:n_copies, :n_copies] = copy_pos
    related = None
    if n_sib:
        related = torch.zeros_like(positives)
        for k, v in enumerate(sib_ids):
            rows = copy_pos[2 * videos.index(v)]  # the clips that are positives of the video's weak clip
            related[n_copies + k, :n_copies] = rows
            related[:n_copies, n_copies + k] = rows
    guests = torch.tensor([-1 if m is None else m for m in mixed] + [-1] * n_sib)
    return Batch(feats, tvec, lengths, positives, torch.tensor(ids + sib_ids), guests, related)
