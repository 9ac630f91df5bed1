"""Cached features of a pool of augmented views (the backbone is frozen, so compute them once).

For every training video, ``views_per_video`` views are drawn in pixel space (view 0 weak, the
others strong: crop, RandAugment, overlays, blur, video-in-video), and the backbone's region
descriptors (before PCA) and the teacher's frame vectors are stored. Temporal edits and clip
sampling happen later, on the cached features (they are frame-index operations). The built-in
benchmark's descriptors are cached the same way (:mod:`hapvr.evaluation.builtin`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from hapvr.data import augment

@dataclass
class ViewPool:
    """``desc [V, K, T, 9, Din]`` (fp16, pre-PCA), ``teacher [V, K, T, Dt]`` (fp16), ``lengths [V]``,
    ``mixed_with [V, K]`` (index of the pasted video, -1 if none), ``video_ids``. With ``siblings``
    the last view of each video is not a view of it but its sibling: the same scene seen by another
    camera (:func:`hapvr.data.corpus.build_train_corpus`), relevant to it at a coarser level."""

    video_ids: list[str]
    desc: torch.Tensor
    teacher: torch.Tensor
    lengths: torch.Tensor
    mixed_with: torch.Tensor
    siblings: bool = False

    def state(self) -> dict:
        return dict(video_ids=self.video_ids, desc=self.desc, teacher=self.teacher, lengths=self.lengths,
                    mixed_with=self.mixed_with, siblings=self.siblings)


def build_view_pool(videos: dict[str, torch.Tensor], extractor, teacher, views_per_video: int, pool_frames: int,
                    seed: int, aug: augment.AugmentConfig | None = None, progress=None,
                    group_of=None, teacher_on_all_views: bool = True,
                    siblings: dict[str, torch.Tensor] | None = None) -> ViewPool:
    """Draw the views of every video and run the backbone and the teacher on them once.

    ``group_of(video_id)`` names a video's source; a strong view only pastes in (video-in-video)
    a video of another source, so its extra positive is a true one.

    ``teacher_on_all_views=False`` runs the teacher on the weak view only and gives its vectors
    to the strong views too: every view of a video shows the same source frames at the same
    times (temporal edits come later, as index maps), and the pseudo-labels only say which
    source frames correspond. It halves the teacher's cost (the slowest part on a CPU).

    ``siblings[video_id]``: another camera's video of the same scene and times; a weak view of
    the same window is stored as view ``K`` (after the ``views_per_video`` views), drawn from its
    own random stream so the other views do not change.
    """
    aug = aug or augment.AugmentConfig()
    rng = random.Random(seed)
    ids = sorted(videos)
    group_of = group_of or (lambda v: v)
    clips, starts = {}, {}
    for vid in ids:
        v = videos[vid]
        starts[vid] = rng.randint(0, max(0, v.shape[0] - pool_frames))
        clips[vid] = v[starts[vid]:starts[vid] + pool_frames]
    if siblings is not None:
        missing = [v for v in ids if v not in siblings or siblings[v].shape[0] < videos[v].shape[0]]
        if missing:
            raise ValueError(f"siblings: no sibling as long as its video for {missing[:5]}")
    T = max(c.shape[0] for c in clips.values())
    V, K = len(ids), views_per_video
    KS = K + (siblings is not None)
    desc = torch.zeros(V, KS, T, 9, extractor.in_dim, dtype=torch.float16)
    tfeat = torch.zeros(V, KS, T, teacher.dim, dtype=torch.float16)
    lengths = torch.tensor([clips[v].shape[0] for v in ids])
    mixed = torch.full((V, KS), -1, dtype=torch.long)

    def store(i: int, k: int, x: torch.Tensor, needs_teacher: bool) -> None:
        n = x.shape[0]
        if needs_teacher and getattr(teacher, "extractor", None) is extractor:
            d, t = extractor.descriptors_and_frame_vectors(x)  # the cnn teacher: one backbone pass
            desc[i, k, :n], tfeat[i, k, :n] = d.half(), t.half()
        else:
            desc[i, k, :n] = extractor.descriptors(x).half()
            tfeat[i, k, :n] = teacher(x.float()).half() if needs_teacher else tfeat[i, 0, :n]
        if progress is not None:
            progress(n)

    for i, vid in enumerate(ids):
        clip = clips[vid]
        for k in range(K):
            if k == 0:
                x = augment.weak_view(clip, rng, aug)
            else:
                others = [j for j, o in enumerate(ids) if group_of(o) != group_of(vid)]
                j = rng.choice(others) if others else None
                sv = augment.strong_view(clip, rng, aug, guest=None if j is None else clips[ids[j]], guest_id=j,
                                         temporal=False)
                x = sv.frames
                if sv.mixed_with is not None:
                    mixed[i, k] = sv.mixed_with
            store(i, k, x, k == 0 or teacher_on_all_views)
    if siblings is not None:
        srng = random.Random(seed + 1)
        for i, vid in enumerate(ids):
            sib = siblings[vid][starts[vid]:starts[vid] + clips[vid].shape[0]]
            store(i, K, augment.weak_view(sib, srng, aug), True)
    return ViewPool(ids, desc, tfeat, lengths, mixed, siblings is not None)
