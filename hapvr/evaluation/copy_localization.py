"""Copy localisation measured on the built-in benchmark's partial copies: the segments the
localiser finds against the known spans (VCSL-style precision / recall / F1 and the VSC
micro-AP), on the Chamfer map that compare and search localise on and on a model's own map."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hapvr.data.corpus import PARTIAL_HOSTS
from hapvr.evaluation.levels import device_of
from hapvr.localization import PRESETS, chamfer_frame_map, localize
from hapvr.metrics import segment_micro_ap, segment_precision_recall, segment_prf_over_pairs


@dataclass
class LocalizationResult:
    """Segment metrics over the partial copies (:mod:`hapvr.metrics`): VCSL-style macro
    precision / recall / F1 over pairs and the VSC micro-AP."""

    precision: float
    recall: float
    f1: float
    micro_ap: float
    pairs: int
    per_pair: dict[str, dict] = field(default_factory=dict)
    negative_pairs: int = 0
    negatives_with_segments: int = 0


@torch.no_grad()
def evaluate_localization(maps, partial: list[dict], fps: float = 1.0, negatives=(),
                          **localize_options) -> LocalizationResult:
    """Localise every partial copy and score it against its known spans (in frames; ``fps``
    frames a second on both axes). ``maps(query_id, target_id)`` gives the pair's map and the
    map's own frames per second (the comparator's output has one cell per 4 frames).

    ``negatives``: ``(query, target)`` pairs without any copy. As in VSC's matching track, the
    segments found there are false positives of the micro-AP; precision / recall / F1 follow
    VCSL, over the copy pairs."""
    predicted, truth, per_pair = {}, {}, {}
    for p in partial:
        key = (p["query"], p["target"])
        m, map_fps = maps(*key)
        predicted[key] = localize(m, fps=map_fps, **localize_options)
        truth[key] = [tuple(x / fps for x in span) for span in p["spans"]]
        prf = segment_precision_recall(predicted[key], truth[key])
        per_pair[p["target"]] = {"speeds": list(p["speeds"]), "f1": prf.f1, "truth": truth[key],
                                 "found": [[round(v, 2) for v in s.to_dict().values()] for s in predicted[key]]}
    agg = segment_prf_over_pairs(predicted, truth)
    found_on_negatives = {}
    for q, t in negatives:
        m, map_fps = maps(q, t)
        found_on_negatives[(q, t)] = localize(m, fps=map_fps, **localize_options)
    micro_ap = segment_micro_ap({**predicted, **found_on_negatives}, truth)
    return LocalizationResult(agg.precision, agg.recall, agg.f1, micro_ap, len(partial), per_pair,
                              len(found_on_negatives), sum(bool(v) for v in found_on_negatives.values()))


def negative_pairs(partial: list[dict], labels: dict[str, dict[str, list[str]]]) -> list[tuple[str, str]]:
    """For each partial copy's query, the next partial target (in order) that holds nothing
    related to it: not its own, not hosted in its footage, not a copy of a query it is labelled
    related to (either way)."""
    def related(a, b):
        return a == b or b in {v for vs in labels.get(a, {}).values() for v in vs} \
            or a in {v for vs in labels.get(b, {}).values() for v in vs}

    out = []
    for i, p in enumerate(partial):
        q = p["query"]
        for k in range(1, len(partial)):
            other = partial[(i + k) % len(partial)]
            if not related(q, other["query"]) and PARTIAL_HOSTS.get(other["query"]) != q:
                out.append((q, other["target"]))
                break
    return out


def localization_rows(baseline, model, feats: dict[str, torch.Tensor], partial_feats: dict[str, torch.Tensor],
                      partial: list[dict], labels: dict | None = None) -> dict[str, LocalizationResult]:
    """The default localisation (compare's: the Chamfer map of the features, default
    parameters), and the trained model's own comparator output (``PRESETS["trained"]``); with
    ``labels``, one negative pair per copy (:func:`negative_pairs`) counts in the micro-AP."""
    def chamfer(q, t):
        return chamfer_frame_map(feats[q], partial_feats[t], baseline.k_s), 1.0

    def comparator(q, t):
        dev = device_of(model)
        was = model.training
        model.eval()
        out = model(feats[q][None].float().to(dev), partial_feats[t][None].float().to(dev))
        model.train(was)
        own = out.frame_maps if out.raw is None else torch.nn.functional.hardtanh(out.raw)  # attention head: m_s
        return own[0, 0].float().cpu(), 1.0 / model.raw_frames_per_cell

    neg = negative_pairs(partial, labels) if labels is not None else []
    # the residual and attention heads' output is a (corrected) Chamfer map: the Chamfer map's parameters
    preset = PRESETS["trained" if getattr(model, "head", "visil") == "visil" else "chamfer"]
    return {"Chamfer map (compare's, both models)": evaluate_localization(chamfer, partial, negatives=neg),
            "HAP-VR comparator output": evaluate_localization(comparator, partial, negatives=neg, **preset)}


def localization_table(rows: dict[str, LocalizationResult]) -> str:
    head = (f"{'localised on':<38}{'pairs':>6}{'precision':>11}{'recall':>9}{'F1':>8}{'micro-AP':>10}"
            f"{'negatives with segments':>25}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<38}{r.pairs:>6}{100 * r.precision:>11.1f}{100 * r.recall:>9.1f}"
                     f"{100 * r.f1:>8.1f}{100 * r.micro_ap:>10.1f}"
                     f"{f'{r.negatives_with_segments} of {r.negative_pairs}':>25}")
    return "\n".join(lines)
