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

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts", ".ogv")
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


TRUNCATION_SLACK_S = 1.5  # frames may end this much before the declared duration without a warning


def declared_seconds(container, stream) -> float | None:
    """The video stream's duration as the file declares it: its duration or, for AVI, the larger
    of that and its frame count over its frame rate (an AVI cut short keeps the header's frame
    count while its duration is re-estimated from the file size); the container's duration if
    the stream has none. Other containers' frame counts are not used: a MOV / MP4 edit list
    (a re-cut such as perception's v2s.mov) keeps every sample in the file but shows only part."""
    found = []
    if stream.duration is not None and stream.time_base is not None:
        found.append(float(stream.duration * stream.time_base))
    is_avi = "avi" in (getattr(container.format, "name", "") or "").split(",")
    if stream.frames and stream.average_rate and (is_avi or not found):
        found.append(float(stream.frames / stream.average_rate))
    if found:
        return max(found)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return None


def decode_video(path: str, fps: float = 1.0, max_frames: int | None = None, short_side: int = SHORT_SIDE,
                 warnings: list[str] | None = None) -> torch.Tensor:
    """Frames of ``path`` at ``fps`` (the first frame at or after each ``k / fps`` seconds).

    Raises :class:`VideoDecodeError` for anything PyAV cannot read or a video without frames. A
    video whose decoding stops early (a decoder error after some frames, or frames ending more
    than a second and two sampling steps before the duration the container declares) keeps the
    frames decoded so far, and a sentence saying so is appended to ``warnings``.
    """
    images, _ = decode_samples(path, fps, max_frames=max_frames, short_side=short_side, warnings=warnings)
    return to_tensor(list(images.values()))


def decode_samples(path: str, fps: float = 1.0, keep=None, max_frames: int | None = None,
                   short_side: int = SHORT_SIDE, warnings: list[str] | None = None) -> tuple[dict[int, Image.Image], int]:
    """The sampling of :func:`decode_video`, keeping only some samples: ``(images, count)`` with
    ``images[k]`` the ``k``-th sample (resized) for every ``k`` in ``keep`` (``None``: all) and
    ``count`` the samples seen. Decoding stops after ``max_frames`` samples; samples outside
    ``keep`` are never converted or resized, so a window of a long video costs its decoding only.
    Errors and ``warnings`` as in :func:`decode_video`.
    """
    import av

    images: dict[int, Image.Image] = {}
    count = 0
    last_t = None
    declared = None
    stopped = None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = declared_seconds(container, stream)
            next_t = 0.0
            try:
                for frame in container.decode(stream):
                    t = frame.time if frame.time is not None else next_t
                    last_t = t
                    if t + 1e-6 < next_t:
                        continue
                    if keep is None or count in keep:
                        # one scaling thread: libswscale's slice threads have hung a forked DataLoader
                        # worker (waiting on threads it did not have); decoding keeps its own threads
                        images[count] = resize_short_side(frame.to_image(threads=1), short_side)
                    count += 1
                    next_t = (np.floor(t * fps + 1e-6) + 1) / fps
                    if max_frames is not None and count >= max_frames:
                        declared = None  # stopped on purpose
                        break
            except Exception as exc:  # PyAV raises many error types for broken files
                if not count:
                    raise
                stopped = f"{type(exc).__name__}: {exc}"
    except VideoDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not count:
        raise VideoDecodeError(f"{path}: no decodable frames")
    if warnings is not None:
        got = (last_t or 0.0)
        if stopped is not None:
            warnings.append(f"truncated: decoding stopped after {got:.1f} s ({count} frames) "
                            f"with {stopped}")
        elif declared is not None and declared - got > TRUNCATION_SLACK_S:
            warnings.append(f"truncated: frames end at {got:.1f} s of the {declared:.1f} s the file declares "
                            f"({count} frames kept)")
    return images, count


def expected_samples(path: str, fps: float = 1.0) -> int | None:
    """How many frames :func:`decode_video` should give at ``fps``, from the durations the file
    declares (no decoding); ``None`` when it declares none or cannot be opened. An estimate: a
    truncated or mislabelled file gives fewer."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            declared = declared_seconds(container, stream)
            rate = float(stream.average_rate) if stream.average_rate else 0.0
    except Exception:  # unreadable: the decoder says why
        return None
    if declared is None or declared <= 0:
        return None
    last = declared - (1 / rate if rate > 0 else 0.0)  # the last frame starts one frame before the end
    return int(np.floor(max(last, 0.0) * fps + 1e-6)) + 1


def frame_folder_names(path: str) -> list[str]:
    """The frame files of a folder of pre-extracted frames, in time (name) order."""
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise VideoDecodeError(f"{path} is a folder of frames, and it holds none (images {' '.join(IMAGE_EXTENSIONS)}); "
                               f"give a video file or a folder of frame images")
    return names


def load_frame_folder(path: str, short_side: int = SHORT_SIDE, indices: list[int] | None = None) -> torch.Tensor:
    """A folder of pre-extracted frames (sorted by name) -> ``uint8 [T, 3, H, W]``; only the
    frames at ``indices`` (positions in name order) when given."""
    names = frame_folder_names(path)
    if indices is not None:
        names = [names[i] for i in indices]
    try:
        images = [resize_short_side(Image.open(os.path.join(path, n)).convert("RGB"), short_side) for n in names]
    except Exception as exc:
        raise VideoDecodeError(f"{path}: {type(exc).__name__}: {exc}") from exc
    size = images[0].size
    return to_tensor([im if im.size == size else im.resize(size) for im in images])


def decode_frames(path: str, fps: float, max_frames: int | None = None, warnings: list[str] | None = None
                  ) -> torch.Tensor:
    """The frames of a video file or a folder of frames, sampled at ``fps`` (a folder's images are
    its frames), shorter side 256, not cropped: ``uint8 [T, 3, H, W]``."""
    return load_frame_folder(path) if os.path.isdir(path) else decode_video(path, fps, max_frames, warnings=warnings)


def load_frames(path: str, fps: float, max_frames: int | None = None, warnings: list[str] | None = None) -> torch.Tensor:
    """The evaluation frames of a video file or a folder of frames: sampled at ``fps`` (a folder's
    images are its frames), shorter side 256, centre crop 224 (SPEC section 1)."""
    return center_crop(decode_frames(path, fps, max_frames, warnings))


def list_videos(root: str) -> list[str]:
    """Video files and frame folders under ``root`` (recursive), sorted."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: not a directory")
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
    truncated: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.loaded)} videos loaded, {len(self.skipped)} skipped (corrupt, empty or unreadable)"
        if self.skipped:
            text += ": " + ", ".join(os.path.basename(p) for p, _ in self.skipped[:10]) + \
                (" ..." if len(self.skipped) > 10 else "")
        if self.truncated:
            text += f", {len(self.truncated)} truncated (kept: " + ", ".join(p for p, _ in self.truncated[:10]) + ")"
        return text


def load_folder(root: str, fps: float = 1.0, min_frames: int = 1, max_frames: int | None = None,
                log=print) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Decode every video under ``root``; unreadable ones are skipped with a warning and counted."""
    videos, report = {}, LoadReport()
    for path in list_videos(root):
        vid = os.path.relpath(path, root)
        try:
            warnings: list[str] = []
            frames = load_frame_folder(path) if os.path.isdir(path) else decode_video(path, fps, max_frames,
                                                                                      warnings=warnings)
            for w in warnings:
                log(f"warning: {path}: {w}")
                report.truncated.append((path, w))
            if frames.shape[0] < min_frames:
                raise VideoDecodeError(f"{path}: {frames.shape[0]} frames at {fps} fps, fewer than {min_frames}")
        except VideoDecodeError as exc:
            log(f"warning: skipping {exc}")
            report.skipped.append((path, str(exc)))
            continue
        videos[vid] = frames
        report.loaded.append(vid)
    return videos, report
