"""Decoding videos (PyAV) or folders of frames into clips sampled at a fixed rate.

Frames come out as ``uint8`` tensors ``[T, 3, H, W]`` with the shorter side resized to 256
(SPEC section 1); :func:`center_crop` takes the evaluation crop of 224.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SHORT_SIDE = 256
CROP = 224


class VideoDecodeError(RuntimeError):
    """A video could not be decoded (corrupt, empty, no video stream)."""


def resize_short_side(img: Image.Image, size: int = SHORT_SIDE) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> ``uint8 [T, 3, H, W]``."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).contiguous()


def center_crop(frames: torch.Tensor, size: int = CROP) -> torch.Tensor:
    H, W = frames.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    return frames[..., top:top + size, left:left + size]


def decode_video(path: str, fps: float = 1.0, max_frames: int | None = None, short_side: int = SHORT_SIDE) -> torch.Tensor:
    """Frames of ``path`` at ``fps`` (the first frame at or after each ``k / fps`` seconds).

    Raises :class:`VideoDecodeError` for anything PyAV cannot read or a video without frames.
    """
    import av

    images: list[Image.Image] = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            next_t = 0.0
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else next_t
                if t + 1e-6 < next_t:
                    continue
                images.append(resize_short_side(frame.to_image(), short_side))
                next_t = (np.floor(t * fps + 1e-6) + 1) / fps
                if max_frames is not None and len(images) >= max_frames:
                    break
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV raises many error types for broken files
        raise VideoDecodeError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not images:
        raise VideoDecodeError(f"{path}: no decodable frames")
    return to_tensor(images)


def load_frame_folder(path: str, short_side: int = SHORT_SIDE) -> torch.Tensor:
    """A folder of pre-extracted frames (sorted by name) -> ``uint8 [T, 3, H, W]``."""
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise VideoDecodeError(f"{path}: no frames ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        images = [resize_short_side(Image.open(os.path.join(path, n)).convert("RGB"), short_side) for n in names]
    except Exception as exc:
        raise VideoDecodeError(f"{path}: {type(exc).__name__}: {exc}") from exc
    size = images[0].size
    return to_tensor([im if im.size == size else im.resize(size) for im in images])


def list_videos(root: str) -> list[str]:
    """Video files and frame folders under ``root`` (recursive), sorted."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data {root}: not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        frames = [f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
        if frames and dirpath != root:
            found.append(dirpath)
        found += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


@dataclass
class LoadReport:
    """What happened while loading a folder: loaded ids and skipped files with reasons."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.loaded)} videos loaded, {len(self.skipped)} skipped (corrupt, empty or unreadable)"


def load_folder(root: str, fps: float = 1.0, min_frames: int = 1, max_frames: int | None = None,
                log=print) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Decode every video under ``root``; unreadable ones are skipped with a warning and counted."""
    videos, report = {}, LoadReport()
    for path in list_videos(root):
        vid = os.path.relpath(path, root)
        try:
            frames = load_frame_folder(path) if os.path.isdir(path) else decode_video(path, fps, max_frames)
            if frames.shape[0] < min_frames:
                raise VideoDecodeError(f"{path}: {frames.shape[0]} frames at {fps} fps, fewer than {min_frames}")
        except VideoDecodeError as exc:
            log(f"warning: skipping {exc}")
            report.skipped.append((path, str(exc)))
            continue
        videos[vid] = frames
        report.loaded.append(vid)
    return videos, report
