"""The full HAP-VR training objective (paper eq. 15, with ``L_base`` of eq. 16)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from hapvr.losses.adaptive_margin import AdaptiveMarginLoss
from hapvr.losses.base import check_sim, mean_over, self_column_offset
from hapvr.losses.frame_quadlinear_ap import FrameQuadLinearAPLoss
from hapvr.losses.infonce import InfoNCELoss
from hapvr.losses.quadlinear_ap import QuadLinearAPLoss
from hapvr.losses.registry import register_loss
from hapvr.losses.similarity_regularizer import SimilarityRegularizer
from hapvr.losses.sshn import SSHNLoss
from hapvr.ops.quadlinear_ap import quadlinear_ap


@dataclass(frozen=True)
class HAPVRObjectiveConfig:
    """Weights and hyper-parameters of eq. 15; defaults are the paper's (appendix B.3)."""

    lambda_f: float = 6.0     # frame-level QuadLinear-AP
    lambda_v: float = 4.0     # video-level QuadLinear-AP
    lambda_nce: float = 1.0   # InfoNCE (in L_base with weight 1)
    lambda_s: float = 3.0     # SSHN (eq. 16)
    lambda_reg: float = 1.0   # similarity regulariser on the raw comparator output
    lambda_u: float = 0.0     # pooled video-level QuadLinear-AP (hapvr's, not the paper's): the batch as one list
    delta_v: float = 0.05
    rho_v: float = 0.10
    delta_f: float = 0.05
    rho_f: float = 5.0
    r_t: float = 0.35
    r_b: float = 0.35
    tau: float = 0.03
    video_self_label: int | None = 1  # the HAP-VR release counts the query as its own positive
    frame_self_pairs: bool = True  # the release's frame term counts a clip paired with itself
    video_loss: str = "quadlinear_ap"  # or "adaptive_margin" (teacher-scaled margins, AdaptiveMarginLoss)
    am_base_margin: float = 0.0  # adaptive margin m = clamp(base + scale * teacher gap, 0, max)
    am_scale: float = 1.0
    am_max_margin: float = 0.2
    backend: str = "auto"

    def __post_init__(self):
        if self.video_loss not in VIDEO_LOSSES:
            raise ValueError(f"video_loss must be one of {VIDEO_LOSSES}, got {self.video_loss!r}")


VIDEO_LOSSES = ("quadlinear_ap", "adaptive_margin")


def video_teacher_similarity(teacher, lengths, M: int, N: int) -> torch.Tensor:
    """``[N, N]`` teacher similarity of the batch's clips in [0, 1] (the scale of ``sim``): the
    cosine of their mean L2-normalised teacher frame vectors, mapped by ``(c + 1) / 2``. It sets
    the adaptive margins: a negative the teacher finds close to the positive gets a small one."""
    if teacher is None or not isinstance(teacher, torch.Tensor) or teacher.dim() != 3:
        raise ValueError("video_loss='adaptive_margin' needs the teacher's frame vectors [N, T, D'] "
                         "(the margins come from the teacher's positive-negative gap)")
    if M != N:
        raise ValueError("video_loss='adaptive_margin' needs the teacher vectors of every column; it does not "
                         "support cross-rank negatives (sim [N, M] with M != N)")
    t = torch.nn.functional.normalize(teacher.float(), dim=-1)
    if lengths is not None:
        valid = torch.arange(t.shape[1], device=t.device)[None, :] < lengths.to(t.device)[:, None]
        t = t * valid[..., None]
    v = torch.nn.functional.normalize(t.sum(1), dim=-1)
    return ((v @ v.T + 1) / 2).clamp(0, 1).detach()


@register_loss("hapvr")
class HAPVRObjective(nn.Module):
    """``L = lambda_f L^F_QLAP + lambda_v L^V_QLAP + lambda_nce L_NCE + lambda_s L_SSHN + lambda_reg L_reg
    + lambda_u L^U_QLAP``.

    ``L^U_QLAP`` (hapvr's, off in the paper's settings) is the QuadLinear-AP risk of the whole
    batch matrix ranked as *one* list (a clip against itself left out): every positive pair must
    outrank every negative pair of *any* query, which is what uAP (pooled over queries) asks and
    what the per-query terms leave free (the scale of each query's scores).

    Build with ``HAPVRObjective()`` (paper defaults), ``HAPVRObjective(config)`` or keyword
    overrides, e.g. ``HAPVRObjective(lambda_f=0)`` for the video level only.

    ``forward(sim, labels, raw=None, frame_sims=None, teacher=None, lengths=None, self_offset=None,
    frame_labels=None)``:
        sim: ``[N, N]`` batch video similarities in [0, 1]; labels: ``[N, N]`` (1 same video,
        0 different, -1 ignored); raw: the comparator's raw output (a tensor or a sequence of
        tensors) for the regulariser; frame_sims ``[N, N, T, T']`` and teacher (``[N, N, T, T']``
        similarities or ``[N, T, D']`` embeddings) for the frame level; lengths: ``[N]`` valid
        frames per clip of a padded batch (see :class:`FrameQuadLinearAPLoss`). An input may be
        omitted only when its term's weight is 0.

        Cross-rank negatives: ``sim`` and ``labels`` may be ``[N, M]``, the N local clips against
        M clips that include them at columns ``self_offset .. self_offset + N - 1`` (query k's
        own column is ``self_offset + k``). The video-level terms rank all M columns; the frame
        level uses the local ``[N, N]`` block only (``frame_sims`` may be given ``[N, M, T, T']``,
        it is cut at ``self_offset``).
        frame_labels: optional local ``[N, N]`` labels for the frame level only (default: the
        local block of ``labels``), e.g. to leave out positive pairs whose teacher vectors do not
        show what makes them positive.
        frame_pairs: optional ``(a, b)`` indices of the frame level's positive pairs, found on the
        host (:func:`hapvr.losses.frame_quadlinear_ap.positive_pairs`), so that the frame term
        reads nothing back from the device; they must match the frame level's labels.
        related: optional bool ``[N, N]`` (the shape of ``labels``): pairs that are relevant at a
        coarser level only, e.g. the same scene seen by another camera (FIVR's CS against its DS).
        The video-level term (and the pooled one) is then the mean of its loss at the two levels:
        ``labels`` as given (a related pair is a negative) and ``labels`` with the related pairs
        made positives, so it ranks copies above related videos above the rest, as the mean AP
        over DSVR and CSVR asks. InfoNCE and SSHN ignore the related pairs; the frame level never sees them as
        positives. Not with ``video_loss="adaptive_margin"``.
    Returns ``(total, parts)``; ``parts`` maps ``frame_ap``, ``video_ap``, ``infonce``, ``sshn``,
    ``regularizer``, ``pooled_ap`` to the unweighted (detached) values of the terms that were computed.
    """

    def __init__(self, config: HAPVRObjectiveConfig | None = None, **overrides):
        super().__init__()
        names = {f.name for f in fields(HAPVRObjectiveConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown HAPVRObjective option(s) {sorted(unknown)}; valid: {sorted(names)}")
        self.config = replace(config or HAPVRObjectiveConfig(), **overrides)
        c = self.config
        self.frame_ap = FrameQuadLinearAPLoss(c.delta_f, c.rho_f, c.r_t, c.r_b, backend=c.backend,
                                              self_pairs=c.frame_self_pairs)
        if c.video_loss == "adaptive_margin":
            # a clip against itself is ignored: the positive of a triplet is the other view
            self.video_ap = AdaptiveMarginLoss(c.am_base_margin, c.am_scale, c.am_max_margin, self_label=-1)
        else:
            self.video_ap = QuadLinearAPLoss(c.delta_v, c.rho_v, self_label=c.video_self_label, backend=c.backend)
        self.infonce = InfoNCELoss(c.tau)
        self.sshn = SSHNLoss()
        self.regularizer = SimilarityRegularizer()

    def forward(self, sim, labels, raw=None, frame_sims=None, teacher=None, lengths=None, self_offset=None,
                frame_labels=None, related=None, frame_pairs=None):
        c = self.config
        check_sim("sim", sim)
        offset = self_column_offset(sim, self_offset)
        N, M = sim.shape
        coarse = base_labels = labels
        if related is not None:
            if not isinstance(related, torch.Tensor) or related.dtype != torch.bool or related.shape != labels.shape:
                raise ValueError(f"related must be a bool tensor of the labels' shape {tuple(labels.shape)}, got "
                                 f"{getattr(related, 'dtype', type(related).__name__)} "
                                 f"{tuple(getattr(related, 'shape', ()))}")
            if c.video_loss == "adaptive_margin":
                raise ValueError("related pairs need video_loss='quadlinear_ap'")
            related = related & (labels == 0)
            coarse = labels.masked_fill(related, 1)
            base_labels = labels.masked_fill(related, -1)
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        if c.lambda_f:
            if frame_sims is None or teacher is None:
                raise ValueError("frame_sims and teacher are required while lambda_f != 0 "
                                 "(pass lambda_f=0 to train the video level only)")
            local_labels = labels
            if M != N:
                if offset is None:
                    raise ValueError(f"sim is [N, M] = {tuple(sim.shape)}: pass self_offset (the column of the "
                                     f"first local clip) so that the frame level finds the local pairs")
                local_labels = labels[:, offset:offset + N]
                if isinstance(frame_sims, torch.Tensor) and frame_sims.dim() == 4 and frame_sims.shape[1] == M:
                    frame_sims = frame_sims[:, offset:offset + N]
            if frame_labels is not None:
                if tuple(frame_labels.shape) != (N, N):
                    raise ValueError(f"frame_labels must be the local [N, N] = [{N}, {N}] pair labels, "
                                     f"got shape {tuple(frame_labels.shape)}")
                local_labels = frame_labels
            terms["frame_ap"] = (c.lambda_f, self.frame_ap(frame_sims, teacher, local_labels, lengths, frame_pairs))
        if c.lambda_v and c.video_loss == "adaptive_margin":
            terms["video_ap"] = (c.lambda_v, self.video_ap(sim, labels, video_teacher_similarity(teacher, lengths, M, N)))
        elif c.lambda_v and related is not None:
            terms["video_ap"] = (c.lambda_v, (self.video_ap(sim, labels, self_offset)
                                              + self.video_ap(sim, coarse, self_offset)) / 2)
        elif c.lambda_v:
            terms["video_ap"] = (c.lambda_v, self.video_ap(sim, labels, self_offset))
        if c.lambda_nce:
            terms["infonce"] = (c.lambda_nce, self.infonce(sim, base_labels, self_offset))
        if c.lambda_s:
            terms["sshn"] = (c.lambda_s, self.sshn(sim, base_labels, self_offset))
        if c.lambda_u:
            def pooled(lab):
                lab = lab.to(torch.int8).clone()
                if offset is not None:  # a clip against itself is no pair
                    k = torch.arange(N, device=lab.device)
                    lab[k, offset + k] = -1
                risk, valid = quadlinear_ap(sim.reshape(1, -1), lab.reshape(1, -1), c.delta_v, c.rho_v,
                                            backend=c.backend)
                return mean_over(risk, valid)

            # with related pairs, the mean over the two levels, as the video level (uAP DSVR and CSVR)
            value = pooled(labels) if related is None else (pooled(labels) + pooled(coarse)) / 2
            terms["pooled_ap"] = (c.lambda_u, value)
        if c.lambda_reg:
            if raw is None:
                raise ValueError("raw (the comparator's raw output) is required while lambda_reg != 0")
            terms["regularizer"] = (c.lambda_reg, self.regularizer(raw))
        if not terms:
            raise ValueError("every weight of HAPVRObjective is 0: nothing to optimise")
        total = sum(w * v for w, v in terms.values())
        return total, {name: v.detach() for name, (_, v) in terms.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.config).items())
