"""Similarity models from files: hapvr's training checkpoints and the published S2VS / HAP-VR
state dicts (``visil_head.*`` / ``comparator_module.*``), matched to hapvr's layers by shape."""

from __future__ import annotations

from pathlib import Path

import torch

from hapvr.errors import InputError
from hapvr.io.checkpoint import ModelSpec, is_checkpoint
from hapvr.io.serialization import check_content_digest, load_torch_file
from hapvr.models.similarity import VideoSimilarityModel

# Target names of hapvr's model, keyed by the parameter shapes that identify them in a foreign
# state dict (the comparator's layers have unique shapes; D is the feature size).
_COMPARATOR_SHAPES = {
    (32, 1, 3, 3): "comparator.conv1",
    (64, 32, 3, 3): "comparator.conv2",
    (128, 64, 3, 3): "comparator.conv3",
    (1, 128, 1, 1): "comparator.fconv",
}
PUBLISHED_PREFIXES = ("module.", "model.", "visil_head.", "comparator_module.")


def convert_published_state_dict(state: dict[str, torch.Tensor], dim: int = 512) -> dict[str, torch.Tensor]:
    """Maps a published S2VS (``visil_head.*``) or HAP-VR (``comparator_module.*``) state dict onto
    hapvr's parameter names by the shapes of the layers (SPEC section 1), so it does not depend on
    the exact names under those prefixes. Raises ValueError naming what is missing."""
    out: dict[str, torch.Tensor] = {}
    conv_bias: dict[str, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = tuple(value.shape)
        if name in _COMPARATOR_SHAPES:
            target = _COMPARATOR_SHAPES[name]
            out[f"{target}.weight"] = value
            conv_bias[key.rsplit(".", 1)[0]] = target
    for key, value in state.items():  # biases sit beside their weights
        stem = key.rsplit(".", 1)[0]
        if key.endswith("bias") and stem in conv_bias:
            out[f"{conv_bias[stem]}.bias"] = value
    # Region attention: W (D x D, possibly a 1x1 conv) with its bias, and the context vector u.
    proj = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.numel() == dim * dim
            and v.shape[0] == dim and not k.endswith("bias")]
    if len(proj) == 1:
        w_key = proj[0]
        out["attention.proj.weight"] = state[w_key].reshape(dim, dim)
        bias_key = w_key.rsplit(".", 1)[0] + ".bias"
        if bias_key in state:
            out["attention.proj.bias"] = state[bias_key].reshape(dim)
        ctx = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.numel() == dim
               and k != bias_key and not k.endswith("bias") and k != w_key]
        if len(ctx) == 1:
            out["attention.context.weight"] = state[ctx[0]].reshape(1, dim)
    expected = [f"{t}.{p}" for t in _COMPARATOR_SHAPES.values() for p in ("weight", "bias")]
    expected += ["attention.proj.weight", "attention.proj.bias", "attention.context.weight"]
    missing = [k for k in expected if k not in out]
    if missing:
        raise ValueError(f"not a S2VS / HAP-VR similarity state dict for D={dim}: found no tensor for {missing}")
    return {k: v.float() for k, v in out.items()}


def _strip(state: dict, prefixes=PUBLISHED_PREFIXES) -> dict:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


def load_similarity_model(path: str | Path, backend: str = "auto") -> VideoSimilarityModel:
    """A :class:`VideoSimilarityModel` from hapvr's training checkpoint or a published state dict."""
    path = Path(path)
    state = load_torch_file(path, "--checkpoint", allow_numpy=True)  # numpy: RNG state of format-1 checkpoints
    if is_checkpoint(state):
        check_content_digest(state, path, "--checkpoint")
        spec = ModelSpec.from_settings(state.get("config", {}), pca=state.get("pca"), model=state["model"])
        return VideoSimilarityModel.from_spec(spec, backend=backend)
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict or hapvr checkpoint", "checkpoint")
    state = _strip(state)
    dim = next((v.shape[0] for v in state.values() if isinstance(v, torch.Tensor) and v.dim() >= 2
                and v.shape[0] == v.shape[1] and v.shape[0] >= 64), 512)
    model = VideoSimilarityModel(dim, backend=backend)
    model.load_state_dict(convert_published_state_dict(state, dim))
    return model
