"""Weak and strong views of a clip (SPEC section 3; paper appendix B.3).

Clips are ``uint8 [T, 3, H, W]``. Every random choice comes from a ``random.Random`` passed in,
so a view is reproducible from a seed. Temporal edits are index maps (``frames[idx]``), which
lets the trainer apply them to cached per-frame features as well as to pixels.
"""

from __future__ import annotations

import math
import os
import random
import string
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from hapvr.data.video import CROP

# paper: one temporal edit per clip
TEMPORAL_EDITS = {"shuffle_dropout": 0.5, "fast_forward": 0.1, "slow_motion": 0.1, "reverse": 0.1,
                  "pause": 0.1, "none": 0.1}


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the views (paper defaults)."""

    size: int = CROP
    weak_scale: tuple[float, float] = (0.8, 1.0)
    strong_scale: tuple[float, float] = (0.5, 1.0)
    randaug_ops: int = 2
    randaug_magnitude: int = 9
    p_text: float = 0.3
    p_emoji: float = 0.3
    p_blur: float = 0.5
    p_mixup: float = 0.3
    mixup_scale: tuple[float, float] = (0.3, 0.5)  # side of the pasted clip, fraction of the host
    temporal_edits: dict[str, float] = field(default_factory=lambda: dict(TEMPORAL_EDITS))


# --- temporal edits ---------------------------------------------------------------------------


def temporal_edit_indices(T: int, rng: random.Random, edit: str | None = None,
                          edits: dict[str, float] | None = None) -> tuple[str, torch.Tensor]:
    """Pick an edit (or use ``edit``) and return ``(name, idx)`` with ``frames[idx]`` the edited clip.

    shuffle_dropout: split into 2-4 segments, then shuffle them or drop one; fast_forward: every
    2nd frame; slow_motion: each frame twice; reverse; pause: one frame held 2-4 extra times.
    Edited clips keep at least one frame.
    """
    edits = edits or TEMPORAL_EDITS
    if edit is None:
        names, weights = zip(*edits.items())
        edit = rng.choices(names, weights)[0]
    idx = list(range(T))
    if edit == "shuffle_dropout" and T >= 2:
        n = rng.randint(2, min(4, T))
        cuts = sorted(rng.sample(range(1, T), n - 1))
        segments = [idx[a:b] for a, b in zip([0] + cuts, cuts + [T])]
        if rng.random() < 0.5:
            rng.shuffle(segments)
        else:
            segments.pop(rng.randrange(len(segments)))
        idx = [i for s in segments for i in s]
    elif edit == "fast_forward":
        idx = idx[:: 2]
    elif edit == "slow_motion":
        idx = [i for i in idx for _ in range(2)]
    elif edit == "reverse":
        idx = idx[::-1]
    elif edit == "pause":
        at = rng.randrange(T)
        idx = idx[:at] + [at] * rng.randint(2, 4) + idx[at:]
    elif edit not in ("none", "shuffle_dropout"):
        raise ValueError(f"unknown temporal edit {edit!r}; choose from {', '.join(TEMPORAL_EDITS)}")
    return edit, torch.tensor(idx, dtype=torch.long)


# --- spatial ------------------------------------------------------------------------------------


def random_resized_crop_flip(frames: torch.Tensor, rng: random.Random, scale=(0.8, 1.0), size: int = CROP,
                             ratio=(3 / 4, 4 / 3), flip_p: float = 0.5) -> torch.Tensor:
    """One RandomResizedCrop + horizontal flip shared by every frame of the clip."""
    import torchvision.transforms.v2.functional as TF

    H, W = frames.shape[-2:]
    area = H * W
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(a * r)), round(math.sqrt(a / r))
        if 0 < w <= W and 0 < h <= H:
            top, left = rng.randint(0, H - h), rng.randint(0, W - w)
            break
    else:
        h = w = min(H, W)
        top, left = (H - h) // 2, (W - w) // 2
    out = TF.resized_crop(frames, top, left, h, w, [size, size], antialias=True)
    return TF.horizontal_flip(out) if rng.random() < flip_p else out


def rand_augment(frames: torch.Tensor, rng: random.Random, ops: int = 2, magnitude: int = 9) -> torch.Tensor:
    """torchvision RandAugment(ops, magnitude) with one draw for the whole clip."""
    from torchvision.transforms import v2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.randrange(2**31))
        return v2.RandAugment(num_ops=ops, magnitude=magnitude)(frames)


# --- per-frame overlays -------------------------------------------------------------------------

_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts")
_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
_EMOJI = "😀😂😍🔥👍🎉🐶🌈⚽🚗🍕⭐💯🎵"


def _find_font() -> str | None:
    for d in _FONT_DIRS:
        for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    return None


_FONT_PATH = _find_font()


def overlay_font(size: int):
    if _FONT_PATH:
        return ImageFont.truetype(_FONT_PATH, size)
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no system font needed


def _to_pil(frame: torch.Tensor) -> Image.Image:
    return Image.fromarray(frame.permute(1, 2, 0).numpy())


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


def overlay_text(img: Image.Image, rng: random.Random) -> Image.Image:
    """Random caption (letters, digits) in a random colour, size and place."""
    W, H = img.size
    text = "".join(rng.choice(string.ascii_letters + string.digits + " ") for _ in range(rng.randint(4, 14)))
    draw = ImageDraw.Draw(img)
    font = overlay_font(rng.randint(H // 14, H // 6))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    xy = (rng.randint(-x0, max(-x0, W - x1)), rng.randint(-y0, max(-y0, H - y1)))
    colour = tuple(rng.randrange(256) for _ in range(3))
    draw.text(xy, text, font=font, fill=colour, stroke_width=rng.choice((0, 1, 2)), stroke_fill=(0, 0, 0))
    return img


def _emoji_image(rng: random.Random, size: int) -> Image.Image:
    if os.path.isfile(_EMOJI_FONT):
        font = ImageFont.truetype(_EMOJI_FONT, 109)  # the only size Noto Color Emoji renders
        tile = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((0, 0), rng.choice(_EMOJI), font=font, embedded_color=True)
        return tile.resize((size, size), Image.BILINEAR)
    # no emoji font: a drawn face sticker in a random colour
    tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(tile)
    colour = tuple(rng.randrange(256) for _ in range(3)) + (255,)
    d.ellipse((0, 0, size - 1, size - 1), fill=colour, outline=(0, 0, 0, 255), width=max(1, size // 20))
    e = size // 8
    d.ellipse((size // 3 - e, size // 3 - e, size // 3 + e, size // 3 + e), fill=(0, 0, 0, 255))
    d.ellipse((2 * size // 3 - e, size // 3 - e, 2 * size // 3 + e, size // 3 + e), fill=(0, 0, 0, 255))
    d.arc((size // 4, size // 3, 3 * size // 4, 3 * size // 4), 20, 160, fill=(0, 0, 0, 255), width=max(1, size // 16))
    return tile


def overlay_emoji(img: Image.Image, rng: random.Random) -> Image.Image:
    W, H = img.size
    size = rng.randint(min(W, H) // 8, min(W, H) // 3)
    tile = _emoji_image(rng, size)
    img.paste(tile, (rng.randint(0, W - size), rng.randint(0, H - size)), tile)
    return img


def gaussian_blur(img: Image.Image, rng: random.Random) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))


def per_frame_overlays(frames: torch.Tensor, rng: random.Random, cfg: AugmentConfig) -> torch.Tensor:
    """Text (p_text), emoji (p_emoji) and Gaussian blur (p_blur), drawn independently per frame."""
    out = []
    for frame in frames:
        img = _to_pil(frame)
        if rng.random() < cfg.p_text:
            img = overlay_text(img, rng)
        if rng.random() < cfg.p_emoji:
            img = overlay_emoji(img, rng)
        if rng.random() < cfg.p_blur:
            img = gaussian_blur(img, rng)
        out.append(_from_pil(img))
    return torch.stack(out)


def video_in_video(host: torch.Tensor, guest: torch.Tensor, rng: random.Random, scale=(0.3, 0.5)) -> torch.Tensor:
    """Paste a downscaled ``guest`` clip into ``host`` (same place in every frame).

    The guest is looped or cut to the host's length. The result is a positive of both videos.
    """
    import torchvision.transforms.v2.functional as TF

    T, _, H, W = host.shape
    s = rng.uniform(*scale)
    h, w = max(8, round(H * s)), max(8, round(W * s))
    small = TF.resize(guest, [h, w], antialias=True)
    small = small[torch.arange(T) % small.shape[0]]
    top, left = rng.randint(0, H - h), rng.randint(0, W - w)
    out = host.clone()
    out[:, :, top:top + h, left:left + w] = small
    return out


# --- views --------------------------------------------------------------------------------------


def weak_view(frames: torch.Tensor, rng: random.Random, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """RandomResizedCrop(224, scale 0.8-1) + flip."""
    return random_resized_crop_flip(frames, rng, cfg.weak_scale, cfg.size)


@dataclass
class StrongView:
    """A strong view: its frames, the temporal edit applied and the id of a pasted guest video."""

    frames: torch.Tensor
    edit: str
    mixed_with: object | None = None


def strong_view(frames: torch.Tensor, rng: random.Random, cfg: AugmentConfig = AugmentConfig(),
                guest: torch.Tensor | None = None, guest_id=None, temporal: bool = True) -> StrongView:
    """Temporal edit, RandomResizedCrop(224, 0.5-1) + flip, RandAugment(2, 9), per-frame text /
    emoji / blur, and with probability ``p_mixup`` the ``guest`` clip pasted in (video-in-video).

    ``temporal=False`` leaves time untouched (the trainer then edits cached features instead).
    """
    edit = "none"
    if temporal:
        edit, idx = temporal_edit_indices(frames.shape[0], rng, edits=cfg.temporal_edits)
        frames = frames[idx]
    x = random_resized_crop_flip(frames, rng, cfg.strong_scale, cfg.size)
    x = rand_augment(x, rng, cfg.randaug_ops, cfg.randaug_magnitude)
    x = per_frame_overlays(x, rng, cfg)
    mixed = None
    if guest is not None and rng.random() < cfg.p_mixup:
        x = video_in_video(x, random_resized_crop_flip(guest, rng, cfg.weak_scale, cfg.size), rng, cfg.mixup_scale)
        mixed = guest_id
    return StrongView(x, edit, mixed)


def positive_matrix(video_ids: list, mixed_with: list) -> torch.Tensor:
    """``[N, N]`` positives of a batch of views: same video id, or one view has the other's video
    pasted in (video-in-video makes the mixed view a positive of both its host and its guest)."""
    n = len(video_ids)
    pos = torch.zeros(n, n, dtype=torch.bool)
    for a in range(n):
        for b in range(n):
            pos[a, b] = (video_ids[a] == video_ids[b] or (mixed_with[a] is not None and mixed_with[a] == video_ids[b])
                         or (mixed_with[b] is not None and mixed_with[b] == video_ids[a]))
    return pos
