"""Cross-rank negatives for DDP training (``--gather-negatives``).

Under torchrun each rank draws its own batch of N clips. With gathering, every rank compares its
clips with the clips of all ranks, so the video-level losses rank ``world * N`` targets per query
instead of N (the paper trains 128 clips on 2 GPUs; this is how the per-GPU half sees the whole
batch). The attended clip features (``index_video``) are all-gathered with autograd, so the
gradient of rank r's loss with respect to another rank's clips flows back to that rank; DDP then
averages the parameter gradients as usual, which gives the gradient of the mean of the ranks'
losses.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hapvr.models.similarity import SimilarityOutput


def all_gather_constant(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank, concatenated along dim 0 (no gradient: ids, lengths)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def max_over_ranks(values: list[int], device: torch.device) -> list[int]:
    t = torch.tensor(values, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


class GatheredSimilarity(nn.Module):
    """A :class:`~hapvr.models.VideoSimilarityModel` whose targets are the clips of every rank.

    ``forward(features [N, T, R, D], lengths [N]) -> SimilarityOutput`` with ``video [N, world*N]``
    and ``frame_maps [N, world*N, T*, T*]``; rank r's own clips are columns ``r*N .. r*N + N - 1``
    (:meth:`offset`). ``T*`` is the longest padded length over the ranks (all_gather needs one
    shape); the extra frames are padding, excluded through the lengths. Wrap this module, not the
    model, in DistributedDataParallel: the whole computation must run inside DDP's forward for
    its gradient hooks to fire.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @staticmethod
    def offset(n_local: int) -> int:
        return dist.get_rank() * n_local

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> SimilarityOutput:
        from torch.distributed.nn.functional import all_gather

        N, T = features.shape[:2]
        most, minus_fewest, T_all = max_over_ranks([N, -N, T], features.device)
        if most != N or -minus_fewest != N:
            raise ValueError(f"--gather-negatives needs the same number of clips on every rank (this rank has {N})")
        if T_all > T:
            features = F.pad(features, (0, 0, 0, 0, 0, T_all - T))
        q = self.model.index_video(features)
        with warnings.catch_warnings():
            # torch 2.14 deprecates this autograd all_gather in favour of a private module
            # (torch.distributed._functional_collectives); it still works, with gloo as with NCCL.
            warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")
            db = torch.cat(all_gather(q))
        lengths = lengths.to(features.device)
        return self.model(q, db, lengths, all_gather_constant(lengths), indexed=True)


def gathered_labels(positives: torch.Tensor, video_ids: torch.Tensor, guests: torch.Tensor) -> torch.Tensor:
    """Labels ``[N, world*N]`` (int8) of this rank's clips against the clips of all ranks.

    The local block, at this rank's offset, is ``positives`` (two views of one video, or a
    video-in-video mix and its guest). Another rank's clip is a negative unless it shows the same
    video (or mixes it in): ranks draw their videos independently, so that clip is neither a
    sure positive (its window may be elsewhere in the video) nor a negative; it is ignored (-1).
    """
    N = positives.shape[0]
    all_ids = all_gather_constant(video_ids)
    all_guests = all_gather_constant(guests)
    related = ((video_ids[:, None] == all_ids[None, :])
               | ((guests[:, None] >= 0) & (guests[:, None] == all_ids[None, :]))
               | ((all_guests[None, :] >= 0) & (all_guests[None, :] == video_ids[:, None])))
    labels = torch.where(related, -1, 0).to(torch.int8)
    offset = GatheredSimilarity.offset(N)
    labels[:, offset:offset + N] = positives.to(torch.int8)
    return labels
