"""Where a process runs: its device, its threads and cores, its place in a torchrun job, and the
cache folder.

torchrun describes a job in environment variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``); :func:`job` reads them in one place. Training, evaluation and a sharded
index build join the job's process group with :func:`join_group` (gloo on the CPU, NCCL on
GPUs) and leave it with :func:`leave_group`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

CACHE_ENV = "HAPVR_CACHE"


def default_cache_dir() -> str:
    """``$HAPVR_CACHE``, else ``~/.cache/hapvr``: the built-in corpus, cached features, exported backbones."""
    return os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "hapvr"))


# --- devices ------------------------------------------------------------------------------------

def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU. Refuses a device that is not there."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA device is visible (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices are visible")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


def process_device(device: str | None) -> torch.device:
    """:func:`resolve_device` for one process of a torchrun job: an unnumbered ``cuda`` (or
    ``auto`` on a CUDA machine) becomes ``cuda:LOCAL_RANK``, so the ranks share the GPUs (more
    ranks than GPUs: rank ``r`` on GPU ``r mod count``)."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and job().world > 1:
        dev = torch.device("cuda", job().local_rank % torch.cuda.device_count())
    return dev


# --- cores and threads --------------------------------------------------------------------------

def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform
        return os.cpu_count() or 1


def set_threads(threads: int) -> None:
    """Sets torch's intra-op threads and faiss's OpenMP threads: a command's arithmetic runs in
    both (the scorer and the flat coarse GEMMs in torch, an IVF search in faiss)."""
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's container in cores (cgroup v2 ``cpu.max``, or v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``), or None where there is none."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process can really use: its affinity mask, capped by its container's CPU quota."""
    cores = cpu_cores()
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else cores


def others_running() -> int:
    """Threads of other processes running or ready to run at this moment (the runnable tasks of
    ``/proc/loadavg``, less the reader itself); 0 where the kernel does not say."""
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, runnable - 1)


def default_threads(cores: int | None = None) -> int:
    """Threads of a command that was not given ``--threads``: its usable cores (``cores``, default
    :func:`available_cores`) less those other processes keep busy now, at least one. On a shared
    machine a thread more than the idle cores waits for a core at every parallel step."""
    cores = available_cores() if cores is None else cores
    return max(1, min(cores, cores - others_running()))


def cores_per_rank() -> int:
    """This rank's share of the usable cores (all of them outside torchrun)."""
    return max(1, available_cores() // max(1, job().local_world))


# --- the torchrun job ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


def job() -> Job:
    """The torchrun job this process belongs to, from torchrun's environment variables."""
    env = os.environ
    return Job(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")),
               int(env.get("LOCAL_WORLD_SIZE", "1")))


def join_group(backend: str = "gloo", timeout: timedelta | None = None) -> None:
    """Joins the job's process group (``backend``: gloo on the CPU, nccl on GPUs)."""
    if timeout is None:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, timeout=timeout)


def leave_group(wait: bool = True) -> None:
    """Leaves the process group, if any. With ``wait`` every rank first waits for the others (and
    so for every pending collective, the backward all_gather of --gather-negatives included): a
    rank that tore gloo down while a peer was still sending once aborted with "terminate called
    without an active exception". On an error (``wait=False``) the rank leaves at once: the
    others may be blocked in a collective it will never join, and torchrun stops them when it
    exits non-zero."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@dataclass
class DistInfo:
    """A training process: its rank in the job and its device."""

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


def setup_training(device: torch.device | None = None) -> DistInfo:
    """Joins the torchrun group if there is one (NCCL on CUDA, gloo on the CPU). ``device``: where
    this process trains (None: CUDA when available); an unnumbered ``cuda`` becomes
    ``cuda:LOCAL_RANK``."""
    here = job()
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_cuda = device.type == "cuda"
    if use_cuda and device.index is None:
        device = torch.device("cuda", here.local_rank if here.world > 1 else 0)
    if here.world > 1:
        if use_cuda:
            torch.cuda.set_device(device)
        join_group("nccl" if use_cuda else "gloo")
        return DistInfo(dist.get_rank(), here.world, here.local_rank, device)
    return DistInfo(device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(info: DistInfo, obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (itself in a single process)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
