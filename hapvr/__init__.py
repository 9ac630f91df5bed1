"""hapvr: HAP-VR fine-grained video retrieval (ACM MM'24) with fused similarity and loss operators."""

from hapvr import _ext  # noqa: F401  (loads the compiled kernels, warns once if missing)
from hapvr import losses, metrics, ops

__version__ = "0.1.0"
__all__ = ["losses", "metrics", "ops", "__version__"]
