"""torchrun / DistributedDataParallel setup: gloo on CPU, NCCL on GPU; single process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: torch.device | None = None) -> DistInfo:
    """Joins the torchrun group if there is one. ``device``: where this process trains (None:
    CUDA when available); an unnumbered ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_cuda = device.type == "cuda"
    if use_cuda and device.index is None:
        device = torch.device("cuda", local if world > 1 else 0)
    if world > 1:
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        return DistInfo(dist.get_rank(), world, local, device)
    return DistInfo(device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    """Every rank waits for the others (and so for every pending collective, the backward
    all_gather of --gather-negatives included) before the group is destroyed: a rank that tore
    gloo down while a peer was still sending once aborted with "terminate called without an
    active exception" (CI, HAPVR_TEST_SEED=306247521)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abort() -> None:
    """On an error: leave the group (if any) without waiting for the others (they may be blocked
    in a collective this rank will never join; torchrun stops them when this rank exits non-zero)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(info: DistInfo, obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (itself in a single process)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
