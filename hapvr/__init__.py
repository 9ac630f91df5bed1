"""hapvr: HAP-VR fine-grained video retrieval (ACM MM'24) with fused similarity and loss operators.

For your own videos: ``hapvr.load_model()`` and ``hapvr.compare_videos(a, b)`` (:mod:`hapvr.api`).
"""

import os
import sys

# The command-line tools (python -m hapvr.X: the package is imported while "-m" is still argv[0])
# let idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs a
# spinning thread takes a core from them and slows everything (README, "On a busy machine"). It must be
# set before torch loads its OpenMP runtime; Python users set OMP_WAIT_POLICY themselves.
if sys.argv[:1] == ["-m"]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hapvr import _ext  # noqa: E402, F401  (loads the compiled kernels, warns once if missing)
from hapvr import losses, metrics, ops

__version__ = "0.1.0"
__all__ = ["losses", "metrics", "ops", "load_model", "compare_videos", "VideoModel", "__version__"]


def __getattr__(name):  # the video-level API is imported on first use (it pulls in the feature extractor)
    if name in ("load_model", "compare_videos", "VideoModel"):
        from hapvr import api

        return getattr(api, name)
    raise AttributeError(f"module 'hapvr' has no attribute {name!r}")
