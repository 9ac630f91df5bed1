"""HAP-VR's video similarity model (paper section 3.2, eqs. 3-5).

features ``[T, 9, 512]`` -> region attention -> spatial TopK-Chamfer (eq. 3) -> frame map
``m_s [T, T']`` -> comparator psi -> Hardtanh -> temporal TopK-Chamfer (eq. 5) -> similarity.
Only the attention and psi are trainable. Turning both off gives the features-only Chamfer
baseline.

Two heads:

- ``visil`` (the paper's): ``video = TopK-Chamfer_t(Hardtanh(psi(m_s)))`` over psi's
  ``[T/4, T'/4]`` output.
- ``residual`` (hapvr's, the CPU preset's): psi corrects the map instead of replacing it,
  ``r = m_s + up4(psi(m_s))`` with ``up4`` the nearest-neighbour upsampling back to ``[T, T']``
  (the ``T mod 4`` last rows and columns get no correction), then ``video =
  TopK-Chamfer_t(Hardtanh(r))`` over the full map. psi's last layer and the attention's context
  vector start at 0 (and the attention weights are ``2 sigmoid``), so the untrained model *is*
  the features-only Chamfer baseline: training starts from the baseline and weight decay pulls
  back toward it.
- ``attention`` (hapvr's, the CPU preset's): the residual head without psi, ``video =
  TopK-Chamfer_t(m_s)``: only the region attention is learnt (it starts as the identity, so the
  untrained model is the baseline too). The frame map is the features' Chamfer map of the
  attended regions, so localisation and scores keep the Chamfer scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hapvr.io.checkpoint import ModelSpec
from hapvr.models.attention import RegionAttention
from hapvr.models.comparator import MIN_FRAMES, FrameComparator
from hapvr.models.padding import CHUNK_FRAMES, repeat_to_min_length, split_chunks
from hapvr.ops import spatial_topk_chamfer, temporal_topk_chamfer, topk_count
from hapvr.precision import check_precision, precision_dtype, resolve_precision

HEADS = ("visil", "residual", "attention")
MAX_TARGET_CHUNK = CHUNK_FRAMES  # frames per target chunk in similarity() (hapvr.models.padding)


@dataclass
class SimilarityOutput:
    """All-pairs outputs of :meth:`VideoSimilarityModel.forward` (``Bq`` queries, ``Bt`` targets).

    video: ``[Bq, Bt]`` similarities in [-1, 1] (eq. 5).
    frame_maps: ``[Bq, Bt, T, T']`` spatial TopK-Chamfer maps ``m_s`` (eq. 3), 0 on padding.
    raw: ``[Bq, Bt, T/4, T'/4]`` comparator output before Hardtanh (None without comparator).
    raw_mask: validity of ``raw`` cells (None without comparator).
    query_lengths, target_lengths: valid frames after the minimum-length rule.
    """

    video: torch.Tensor
    frame_maps: torch.Tensor
    raw: torch.Tensor | None
    raw_mask: torch.Tensor | None
    query_lengths: torch.Tensor
    target_lengths: torch.Tensor

    def cpu(self) -> "SimilarityOutput":
        """The same outputs on the CPU, in float32 (for plotting and reports)."""
        def move(x):
            return None if x is None else (x.float() if x.is_floating_point() else x).cpu()

        return SimilarityOutput(*(move(getattr(self, f)) for f in
                                  ("video", "frame_maps", "raw", "raw_mask", "query_lengths", "target_lengths")))


class VideoSimilarityModel(nn.Module):
    """HAP-VR similarity head over frozen region features.

    Args:
        dim: region feature size D.
        k_s: spatial top-k rate (``K = max(round(k_s R), 1)``; 0.1 with R=9 is Chamfer).
        k_t: temporal top-k rate over comparator steps.
        attention, comparator: switch the trainable parts (both off = features-only baseline).
        backend: backend of ``spatial_topk_chamfer``.
        precision: dtype of the spatial similarity GEMMs at inference (in eval mode), ``auto``
            (bf16 on CUDA, fp32 on most CPUs: :func:`hapvr.precision.resolve_precision`, per call on
            the inputs' device), ``fp32``, ``bf16`` or ``fp16``; the maps and everything after are
            fp32. In training mode the GEMMs run in the inputs' dtype (``torch.autocast`` lowers them).
        head: ``visil`` (the paper's comparator) or ``residual`` (psi corrects the Chamfer map;
            the untrained model equals the baseline). See the module's docstring.
    """

    def __init__(self, dim: int = 512, k_s: float = 0.1, k_t: float = 0.03, attention: bool = True,
                 comparator: bool = True, backend: str = "auto", precision: str = "auto", head: str = "visil"):
        super().__init__()
        check_precision(precision)  # one clear error for a bad name
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.dim = dim
        self.k_s = k_s
        self.k_t = k_t
        self.backend = backend
        self.precision = precision
        self.head = head
        # Follows .to(device) like a weight, so a parameter-free model (the baseline) still says
        # where it runs (hapvr.evaluation.levels.device_of); not saved in the state dict.
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)
        residual = head in ("residual", "attention")
        self.attention = RegionAttention(dim, identity_init=residual) if attention else None
        self.comparator = FrameComparator() if comparator and head != "attention" else None
        if residual and self.comparator is not None:
            torch.nn.init.zeros_(self.comparator.fconv.weight)

    @classmethod
    def from_spec(cls, spec: ModelSpec, **kwargs) -> "VideoSimilarityModel":
        """The trained model a model file describes (:class:`~hapvr.io.checkpoint.ModelSpec`),
        with its weights; the features-only baseline over the same features when its ``kind`` is
        ``baseline``."""
        if spec.kind == "baseline" or spec.model is None:
            return cls.baseline(spec.pca_dim, spec.k_s, spec.k_t, **kwargs)
        model = cls(spec.pca_dim, spec.k_s, spec.k_t, head=spec.head, **kwargs)
        model.load_state_dict(spec.model)
        return model

    @classmethod
    def baseline(cls, dim: int = 512, k_s: float = 0.1, k_t: float = 0.03, **kwargs) -> "VideoSimilarityModel":
        """The features-only Chamfer baseline: no region attention, no comparator."""
        return cls(dim, k_s, k_t, attention=False, comparator=False, **kwargs)

    @property
    def is_baseline(self) -> bool:
        return self.attention is None and self.comparator is None

    @property
    def raw_frames_per_cell(self) -> int:
        """Frames per cell of :attr:`SimilarityOutput.raw` on each axis (4 for the paper's head)."""
        return 4 if self.head == "visil" else 1

    @property
    def min_frames(self) -> int:
        return MIN_FRAMES if self.comparator is not None else 1

    def index_video(self, features: torch.Tensor) -> torch.Tensor:
        """Region features ``[T, R, D]`` (or batched ``[B, T, R, D]``) -> attended features.

        Index a database once with this and compare with ``similarity(..., indexed=True)``.
        """
        if features.dim() not in (3, 4) or features.shape[-1] != self.dim:
            raise ValueError(f"features must be [T, R, {self.dim}] or [B, T, R, {self.dim}], "
                             f"got {tuple(features.shape)}")
        x = F.normalize(features.float(), dim=-1)
        return self.attention(x) if self.attention is not None else x

    def forward(self, query: torch.Tensor, target: torch.Tensor | None = None,
                query_lengths: torch.Tensor | None = None, target_lengths: torch.Tensor | None = None,
                indexed: bool = False) -> SimilarityOutput:
        """All-pairs similarities of padded batches ``query [Bq, T, R, D]``, ``target [Bt, T', R, D]``.

        ``target=None`` compares the batch with itself (training's ``N x N`` matrix).
        """
        if target is None:
            target, target_lengths = query, query_lengths
            same = True
        else:
            same = False
        dev = query.device
        ql = torch.full((query.shape[0],), query.shape[1], device=dev) if query_lengths is None \
            else torch.as_tensor(query_lengths, device=dev)
        tl = torch.full((target.shape[0],), target.shape[1], device=dev) if target_lengths is None \
            else torch.as_tensor(target_lengths, device=dev)
        q = query if indexed else self.index_video(query)
        t = q if (same and not indexed) else (target if indexed else self.index_video(target))
        q, ql = repeat_to_min_length(q, ql, self.min_frames)
        t, tl = repeat_to_min_length(t, tl, self.min_frames)
        k = topk_count(self.k_s, q.shape[2])
        precision = "fp32" if self.training else resolve_precision(self.precision, dev)
        if precision != "fp32":
            low = precision_dtype(precision)
            maps = spatial_topk_chamfer(q.to(low).contiguous(), t.to(low).contiguous(), k, ql, tl,
                                        backend=self.backend).float()
        else:
            maps = spatial_topk_chamfer(q.contiguous(), t.contiguous(), k, ql, tl, backend=self.backend)
        Bq, Bt, T, T2 = maps.shape
        if self.comparator is None:
            video = temporal_topk_chamfer(maps, rate=self.k_t, query_lengths=ql[:, None],
                                          target_lengths=tl[None, :])
            return SimilarityOutput(video, maps, None, None, ql, tl)
        mask = (torch.arange(T, device=dev)[None, :, None] < ql[:, None, None])[:, None] & \
               (torch.arange(T2, device=dev)[None, None, :] < tl[:, None, None])[None]
        raw, raw_mask = self.comparator(maps.reshape(Bq * Bt, T, T2), mask.reshape(Bq * Bt, T, T2))
        if self.head == "residual":
            return self._residual(maps, mask, raw.view(Bq, Bt, *raw.shape[1:]), ql, tl)
        raw = raw.view(Bq, Bt, *raw.shape[1:])
        raw_mask = raw_mask.view(Bq, Bt, *raw_mask.shape[1:])
        video = temporal_topk_chamfer(F.hardtanh(raw), rate=self.k_t,
                                      query_lengths=(ql // 4)[:, None], target_lengths=(tl // 4)[None, :])
        return SimilarityOutput(video, maps, raw, raw_mask, ql, tl)

    def _residual(self, maps, mask, correction, ql, tl) -> SimilarityOutput:
        # nearest-neighbour upsampling of psi's [T/4, T'/4] output back onto the frames it pooled;
        # the T mod 4 trailing frames (not covered by a pooled cell) get no correction
        Bq, Bt, T, T2 = maps.shape
        up = correction.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
        up = F.pad(up, (0, T2 - up.shape[3], 0, T - up.shape[2]))
        raw = (maps + up) * mask
        video = temporal_topk_chamfer(F.hardtanh(raw), rate=self.k_t, query_lengths=ql[:, None],
                                      target_lengths=tl[None, :])
        return SimilarityOutput(video, maps, raw, mask.to(maps.dtype), ql, tl)

    @torch.no_grad()
    def similarity(self, query: torch.Tensor, target: torch.Tensor, indexed: bool = False) -> float:
        """Similarity in [-1, 1] of one query ``[T, R, D]`` to one target ``[T', R, D]`` (asymmetric).

        Targets longer than 2048 frames are split into chunks whose scores are averaged; a
        short tail chunk is handled by the minimum-length rule.
        """
        if query.dim() != 3 or target.dim() != 3:
            raise ValueError(f"similarity takes one video each, [T, R, D]; got {tuple(query.shape)} "
                             f"and {tuple(target.shape)}")
        if query.shape[0] == 0 or target.shape[0] == 0:
            raise ValueError("a video with no frames has no similarity")
        q = query if indexed else self.index_video(query)
        scores = []
        for c in split_chunks("target", target.shape[0], MAX_TARGET_CHUNK):
            chunk = target[c.start:c.end]
            t = chunk if indexed else self.index_video(chunk)
            scores.append(self(q[None], t[None], indexed=True).video[0, 0])
        return float(torch.stack(scores).mean())
