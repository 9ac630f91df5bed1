"""How videos of different lengths become batches: the one place for padding, chunking of long
videos and repetition of short ones. The model's ``similarity``, the evaluation engine, the
built-in benchmark and search all use these.

- :func:`pad_stack`: videos ``[T_i, ...]`` -> a zero-padded batch ``[B, max T, ...]`` and lengths.
- :func:`split_chunks`: a long video's frame range cut into chunks of at most ``chunk_frames``
  (a target longer than :data:`CHUNK_FRAMES` is scored chunk by chunk and the scores averaged,
  which bounds the ``[T, T']`` frame map).
- :func:`repeat_to` / :func:`repeat_to_min_length`: a video shorter than a model's minimum length
  (the comparator's pooling needs 4 frames) is concatenated with itself until it is long enough
  (the predecessors' rule), one video or a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK_FRAMES = 2048  # frames per target chunk when scoring (bounds the [T, T'] map)


@dataclass(frozen=True)
class Chunk:
    """Frames ``[start, end)`` of video ``vid``."""

    vid: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def key(self) -> str:
        return f"{self.vid}\t{self.start}\t{self.end}"


def split_chunks(vid: str, length: int, chunk_frames: int = CHUNK_FRAMES) -> list[Chunk]:
    """``[0, length)`` cut into chunks of ``chunk_frames`` (the last one shorter); none for 0."""
    if length <= 0:
        return []
    return [Chunk(vid, s, min(s + chunk_frames, length)) for s in range(0, length, chunk_frames)]


def repeat_to(x: torch.Tensor, min_frames: int) -> torch.Tensor:
    """One video ``[T, ...]`` self-concatenated until it has at least ``min_frames`` frames."""
    if x.shape[0] >= min_frames or x.shape[0] == 0:
        return x
    reps = -(-min_frames // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))


def pad_stack(videos: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch [B, max T, ...] zero-padded, lengths [B] int64)``."""
    sizes = [v.shape[0] for v in videos]
    out = videos[0].new_zeros((len(videos), max(sizes), *videos[0].shape[1:]))
    for i, v in enumerate(videos):
        out[i, : v.shape[0]] = v
    return out, torch.tensor(sizes, dtype=torch.int64)


def repeated_length_bound(T: int, min_frames: int) -> int:
    """The longest a video of at most ``T`` frames becomes under :func:`repeat_to` (``T`` itself
    when it is long enough): ``max(T, max over 0 < L < min_frames, L <= T of ceil(min_frames / L) L)``.
    A bound from the shapes alone, so a batch on a GPU is repeated without reading its lengths."""
    longest = T
    for L in range(1, min(T, min_frames - 1) + 1):
        longest = max(longest, -(-min_frames // L) * L)
    return longest


def repeat_to_min_length(x: torch.Tensor, lengths: torch.Tensor, min_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`repeat_to` on every video of a padded batch ``x [B, T, ...]`` with ``lengths [B]``:
    a video of length ``0 < L < min_frames`` becomes ``ceil(min_frames / L)`` copies of itself.
    Returns the new batch (padding zeroed) and lengths.

    No value is read back from a device: lengths on the CPU are read in place (numpy), so the
    batch is only as long as its longest repeated video and is returned as it is when no video
    is short; lengths on another device give a batch of :func:`repeated_length_bound` frames
    (extra frames are padding), whatever the values."""
    lengths = lengths.to(torch.int64)
    T = x.shape[1]
    if lengths.device.type == "cpu":
        host = lengths.numpy()
        short_host = (host > 0) & (host < min_frames)
        if not short_host.any():
            return x, lengths
        safe_host = host.clip(min=1)
        T_new = max(T, int((-(-min_frames // safe_host) * safe_host)[short_host].max()))
    else:
        T_new = repeated_length_bound(T, min_frames)
    short = (lengths > 0) & (lengths < min_frames)
    safe = lengths.clamp(min=1)
    reps = torch.where(short, (min_frames + safe - 1) // safe, torch.ones_like(safe))
    new_lengths = torch.where(short, safe * reps, lengths)
    t = torch.arange(T_new, device=x.device)[None, :]
    idx = torch.where(short[:, None], t % safe[:, None], t.clamp(max=max(T - 1, 0)))
    idx = idx.view(idx.shape + (1,) * (x.dim() - 2)).expand((x.shape[0], T_new) + x.shape[2:])
    out = torch.gather(x, 1, idx)
    valid = (t < new_lengths[:, None]).view((x.shape[0], T_new) + (1,) * (x.dim() - 2))
    return out * valid.to(out.dtype), new_lengths
