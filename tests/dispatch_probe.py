"""A dispatcher-level log of the ATen ops a piece of code runs, for tests that count host reads
or check the dtypes of GEMMs on CPU tensors. The dispatcher sees the calls a CUDA run would
make, with two limits: a value made on the host and copied to a device shows only as
``aten::lift_fresh`` (``host_copies``), and code that takes a CPU-only branch (read in place with
numpy) is not the CUDA branch.

hapvr's ops written in Python (``torch.library.custom_op``) are opened: their implementation
runs under the log, so the ATen calls inside them are seen too. Compiled kernels (C++) are one
opaque call.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch._library import custom_ops
from torch.utils._python_dispatch import TorchDispatchMode

# Calls whose result the host must wait for: on CUDA each one is a device synchronisation.
HOST_READS = frozenset({"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero",
                        "aten::masked_select", "aten::unique", "aten::_unique2", "aten::tolist"})
GEMMS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                   "aten::_addmm_activation"})


class OpLog(TorchDispatchMode):
    """``with OpLog() as log: ...``, then ``log.calls`` ([(op name, [dtypes of tensor args])]),
    ``log.host_reads()`` and ``log.gemm_dtypes()``. ``Tensor.tolist`` (which reads memory without
    a dispatcher call) is recorded as ``aten::tolist`` while the log is active."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, list[torch.dtype]]] = []
        self._tolist = None
        self._paused = 0

    @contextmanager
    def paused(self):
        """Calls made inside are not logged (e.g. a library's reads of its own host-side state)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __enter__(self):
        if self._tolist is None:
            original, log = torch.Tensor.tolist, self

            def tolist(t):
                if not log._paused:
                    log.calls.append(("aten::tolist", [t.dtype]))
                return original(t)

            self._tolist = original
            torch.Tensor.tolist = tolist
            self._depth = 0
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            torch.Tensor.tolist, self._tolist = self._tolist, None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if not self._paused:
            self.calls.append((name, [a.dtype for a in args if isinstance(a, torch.Tensor)]))
        opdef = custom_ops.OPDEFS.get(name)
        if opdef is not None:  # a hapvr op written in Python: log what it runs
            with self:
                return opdef._init_fn(*args, **kwargs)
        return func(*args, **kwargs)

    def host_reads(self) -> list[str]:
        return [name for name, _ in self.calls if name in HOST_READS]

    def host_copies(self) -> list[str]:
        """Tensors made from host values (``torch.tensor(...)``): on a GPU each is a copy to the
        device, which waits for its queue."""
        return [name for name, _ in self.calls if name == "aten::lift_fresh"]

    def gemm_dtypes(self) -> list[tuple[str, list[torch.dtype]]]:
        return [(name, dtypes) for name, dtypes in self.calls if name in GEMMS]
