import os

# Triton kernels run on CPU tensors through the interpreter; this must be set before any
# @triton.jit decorator runs.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh random inputs every run; the seed is printed (shown on failure) and can be pinned
    with HAPVR_TEST_SEED to reproduce a failure."""
    seed = int(os.environ.get("HAPVR_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"HAPVR_TEST_SEED={seed}")
    yield seed


@pytest.fixture(autouse=True)
def restore_threads():
    """Commands run in-process set torch's and faiss's thread counts from the machine's load:
    every test starts and ends with the session's own."""
    import faiss

    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(threads[0])
    faiss.omp_set_num_threads(threads[1])
