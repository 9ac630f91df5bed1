"""A trained :class:`hapvr.models.VideoSimilarityModel` as an evaluation scorer, and loading of
checkpoints: hapvr's own and the published S2VS / HAP-VR state dicts."""

from __future__ import annotations

from pathlib import Path

import torch

from hapvr.evaluation.scorers import state_dict_digest

# Target names of hapvr's model, keyed by the parameter shapes that identify them in a foreign
# state dict (the comparator's layers have unique shapes; D is the feature size).
_COMPARATOR_SHAPES = {
    (32, 1, 3, 3): "comparator.conv1",
    (64, 32, 3, 3): "comparator.conv2",
    (128, 64, 3, 3): "comparator.conv3",
    (1, 128, 1, 1): "comparator.fconv",
}
PUBLISHED_PREFIXES = ("module.", "model.", "visil_head.", "comparator_module.")


class ModelScorer:
    """Adapts a video similarity model to the engine's scorer protocol."""

    def __init__(self, model, name: str = "model", precision: str = "fp32", device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.model.precision = precision
        self.min_frames = int(model.min_frames)
        self.name = name  # for messages; the cache keys on the weights themselves, not on where they came from
        self.precision = precision

    @torch.no_grad()
    def index(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.index_video(features.to(self.device))

    @torch.no_grad()
    def pairwise(self, queries, query_lengths, targets, target_lengths):
        return self.model(queries, targets, query_lengths, target_lengths, indexed=True).video

    def fingerprint(self) -> dict:
        """Digest of the current weights (computed on each call: cheap next to scoring, and never stale)."""
        return {"scorer": "hapvr-similarity-model", "weights": state_dict_digest(self.model),
                "settings": {"precision": self.precision, "k_s": float(self.model.k_s), "k_t": float(self.model.k_t)}}


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


def load_model(path: str | Path, backend: str = "auto"):
    """A :class:`VideoSimilarityModel` from hapvr's training checkpoint or a published state dict."""
    from hapvr.models import VideoSimilarityModel

    from hapvr.serialization import check_content_digest, load_torch_file

    path = Path(path)
    state = load_torch_file(path, "--checkpoint", allow_numpy=True)  # numpy: RNG state of format-1 checkpoints
    if isinstance(state, dict) and str(state.get("format", "")).startswith("hapvr-checkpoint"):
        check_content_digest(state, path, "--checkpoint")
        cfg = state.get("config", {})
        model = VideoSimilarityModel.from_config(cfg, backend=backend)
        model.load_state_dict(state["model"])
        return model
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict or hapvr checkpoint")
    state = _strip(state)
    dim = next((v.shape[0] for v in state.values() if isinstance(v, torch.Tensor) and v.dim() >= 2
                and v.shape[0] == v.shape[1] and v.shape[0] >= 64), 512)
    model = VideoSimilarityModel(dim, backend=backend)
    model.load_state_dict(convert_published_state_dict(state, dim))
    return model


def load_scorer(path: str | Path, backend: str = "auto", precision: str = "fp32",
                device: str | torch.device = "cpu") -> ModelScorer:
    model = load_model(path, backend)
    model.precision = precision
    return ModelScorer(model, name=str(path), precision=precision, device=device)
