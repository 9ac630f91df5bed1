"""Build of hapvr's compiled kernels.

Always builds ``hapvr._C`` (op schemas + C++ CPU kernels, ``-O3 -fopenmp``). Builds
``hapvr._C_cuda`` (CUDA kernels) when a CUDA toolkit is usable and a GPU is visible, or when
``FORCE_CUDA=1``; ``HAPVR_NO_CUDA=1`` skips it. Without a GPU, set ``TORCH_CUDA_ARCH_LIST``
(defaults here to "8.0;9.0").
"""

import glob
import os
import shutil
import sys

from setuptools import setup


def _find_cuda_home():
    """The toolkit root (holding bin/nvcc and lib64/libcudart.so), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on PATH may be a wrapper script; the real binary tells the toolkit root.
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            with open(nvcc, "rb") as f:
                head = f.read(4096).decode("utf-8", "replace")
            for token in head.split():
                if token.endswith("/bin/nvcc"):
                    candidates.append(os.path.dirname(os.path.dirname(token.strip("\"'"))))
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")) and glob.glob(
            os.path.join(root, "lib64", "libcudart.so*")
        ):
            return root
    return None


def _log(msg):
    print(f"hapvr setup: {msg}", file=sys.stderr)


force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
no_cuda = os.environ.get("HAPVR_NO_CUDA", "0") == "1"
cuda_home = None if no_cuda else _find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # must be set before torch.utils.cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
csrc = os.path.join(here, "csrc")


def _rel(paths):
    return sorted(os.path.relpath(p, here) for p in paths)


cxx_flags = ["-O3", "-fopenmp"]
ext_modules = [
    CppExtension(
        "hapvr._C",
        _rel([os.path.join(csrc, "module.cpp")] + glob.glob(os.path.join(csrc, "ops", "*.cpp"))
             + glob.glob(os.path.join(csrc, "cpu", "*.cpp"))),
        include_dirs=[csrc],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
]

build_cuda = False
if no_cuda:
    _log("HAPVR_NO_CUDA=1: skipping the CUDA kernels.")
elif cuda_home is None:
    if force_cuda:
        raise SystemExit("hapvr setup: FORCE_CUDA=1 but no CUDA toolkit (bin/nvcc + lib64/libcudart.so) "
                         "was found; set CUDA_HOME to the toolkit root.")
    _log("no CUDA toolkit found: building the CPU kernels only.")
elif torch.version.cuda is None:
    _log(f"torch {torch.__version__} is a CPU-only build: skipping the CUDA kernels.")
elif force_cuda or torch.cuda.is_available():
    build_cuda = True
else:
    _log("no GPU visible: skipping the CUDA kernels (FORCE_CUDA=1 builds them anyway).")

if build_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    _log(f"building the CUDA kernels with {cuda_home} for TORCH_CUDA_ARCH_LIST="
         f"{os.environ['TORCH_CUDA_ARCH_LIST']}")
    ext_modules.append(
        CUDAExtension(
            "hapvr._C_cuda",
            _rel(glob.glob(os.path.join(csrc, "cuda", "*.cu"))
                 + glob.glob(os.path.join(csrc, "cuda", "*.cpp"))),
            include_dirs=[csrc],
            extra_compile_args={"cxx": ["-O3"],
                                "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
