"""The video comparator psi of ViSiL (HAP-VR section 3.2), a small CNN on frame-similarity maps.

Layout (SPEC section 1): pad 1 -> Conv 1->32 3x3 -> ReLU -> MaxPool 2 -> pad 1 ->
Conv 32->64 3x3 -> ReLU -> MaxPool 2 -> pad 1 -> Conv 64->128 3x3 -> ReLU -> Conv 128->1 1x1.
A ``[T, T']`` map becomes ``[floor(T/4), floor(T'/4)]``.

Padding of a batch is handled with masks so that a padded map gives exactly the output of the
same map alone: padded cells are zeroed before every convolution (they then act like the
convolution's own zero padding), and a pooled cell is valid only when its whole 2x2 window is
valid (the floor rule of an unpadded max-pool).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_FRAMES = 4  # two 2x2 max-pools: shorter maps would vanish


#: transient bytes per map cell of an inference chunk, above what the stages hold: the 32-channel
#: first stage at full resolution in fp32 (128 B), its pooled output and the 64-channel second
#: stage at a quarter of the cells (32 + 64 B), the input and masks (~16 B), rounded up
BYTES_PER_CELL = 256
#: share of a GPU's memory one inference chunk may take
GPU_MEMORY_SHARE = 16


def gpu_chunk_cells(device: torch.device, total_memory: int | None = None) -> int:
    """Map cells per comparator chunk on a GPU: a sixteenth of its memory at ``BYTES_PER_CELL`` (an
    H100's 80 GB: 20M cells, twenty 1024 x 1024 maps, one launch sequence where 2^18 cells took 80).
    ``total_memory`` stands in for the device's (tests)."""
    if total_memory is None:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    return max(1 << 18, int(total_memory) // GPU_MEMORY_SHARE // BYTES_PER_CELL)


def _pool_mask(mask: torch.Tensor) -> torch.Tensor:
    # min-pool: valid only if all four cells are valid
    return -F.max_pool2d(-mask, 2)


class FrameComparator(nn.Module):
    """psi: ``[B, T, T']`` frame-similarity maps -> ``[B, floor(T/4), floor(T'/4)]`` raw scores."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.fconv = nn.Conv2d(128, 1, 1)
        for conv in (self.conv1, self.conv2, self.conv3, self.fconv):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, sim: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: ``sim [B, T, T']``; ``mask [B, T, T']`` (1 = valid) or None.

        Returns ``(out [B, T/4, T'/4], out_mask)`` with padded output cells set to 0.
        """
        if sim.dim() != 3:
            raise ValueError(f"sim must be [B, T, T'] frame-similarity maps, got shape {tuple(sim.shape)}")
        if mask is not None and mask.shape != sim.shape:
            raise ValueError(f"mask must have the shape of sim {tuple(sim.shape)}, got {tuple(mask.shape)}")
        chunk = self._chunk(sim)
        if chunk >= sim.shape[0]:
            return self._forward(sim, mask)
        outs = [self._forward(sim[s:s + chunk], None if mask is None else mask[s:s + chunk])
                for s in range(0, sim.shape[0], chunk)]
        return torch.cat([o for o, _ in outs]), torch.cat([m for _, m in outs])

    #: maps per chunk when no gradient is needed hold at most this many cells on the CPU (keeps
    #: the 32-channel first stage, ~33 MB at this size, in cache and bounds inference memory);
    #: on a GPU the bound comes from its memory (:func:`gpu_chunk_cells`)
    chunk_cells = 1 << 18

    def _chunk(self, sim: torch.Tensor) -> int:
        if torch.is_grad_enabled() and (sim.requires_grad or any(p.requires_grad for p in self.parameters())):
            return sim.shape[0]  # training: autograd keeps every activation anyway
        cells = gpu_chunk_cells(sim.device) if sim.device.type == "cuda" else self.chunk_cells
        return max(1, cells // max(1, sim.shape[1] * sim.shape[2]))

    def _forward(self, sim: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # ReLU and the 2x2 max-pool commute, and a pooled cell is kept only when its whole window
        # is valid, so relu(pool(conv(x))) * pooled_mask equals pool(relu(conv(x)) * mask) exactly
        # while touching the full-resolution 32- / 64-channel maps once instead of three times.
        x = sim.unsqueeze(1)
        m = None if mask is None else mask.unsqueeze(1).to(x.dtype)
        if m is not None:
            x = x * m
        x = F.max_pool2d(self.conv1(F.pad(x, (1, 1, 1, 1))), 2)
        m = _pool_mask(torch.ones_like(sim.unsqueeze(1)) if m is None else m)
        x = F.relu(x) * m
        x = F.max_pool2d(self.conv2(F.pad(x, (1, 1, 1, 1))), 2)
        m = _pool_mask(m)
        x = F.relu(x) * m
        x = F.relu(self.conv3(F.pad(x, (1, 1, 1, 1)))) * m
        x = self.fconv(x) * m
        return x.squeeze(1), m.squeeze(1)


def comparator_reference(psi: FrameComparator, sim: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layout of SPEC section 1 written out layer by layer (ReLU before each pool, padded cells
    zeroed before every convolution, a pooled cell valid only when its whole 2x2 window is): the
    oracle :meth:`FrameComparator.forward` is tested and benchmarked against."""
    x, m = sim[:, None], mask[:, None].to(sim.dtype)
    x = F.relu(psi.conv1(F.pad(x * m, (1, 1, 1, 1)))) * m
    x, m = F.max_pool2d(x, 2), _pool_mask(m)
    x = F.relu(psi.conv2(F.pad(x * m, (1, 1, 1, 1)))) * m
    x, m = F.max_pool2d(x, 2), _pool_mask(m)
    x = F.relu(psi.conv3(F.pad(x * m, (1, 1, 1, 1)))) * m
    return (psi.fconv(x) * m)[:, 0], m[:, 0]

