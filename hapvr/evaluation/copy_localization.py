"""Copy localisation measured on every copy of a built-in benchmark (re-edits,
picture-in-picture, speed changes, re-encodings, re-cuts, partial copies inside unrelated
footage), or on a published benchmark's annotated segment pairs: the segments the localiser
finds against the known spans (segment precision / recall / F1 in the VSC or VCSL form, per copy
kind and over all, and the VSC micro-AP), on the Chamfer map that compare and search localise
on and on a model's own map."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hapvr.data.corpus import PARTIAL_HOSTS, CopyTruth
from hapvr.evaluation.levels import device_of
from hapvr.localization import PRESETS, chamfer_frame_map, localize
from hapvr.metrics import segment_micro_ap, segment_precision_recall, segment_prf_over_pairs


@dataclass
class LocalizationResult:
    """Segment metrics over copy pairs (:mod:`hapvr.metrics`): VCSL-style macro precision /
    recall / F1 over pairs, overall and per copy kind, and the VSC micro-AP."""

    precision: float
    recall: float
    f1: float
    micro_ap: float
    pairs: int
    per_kind: dict[str, dict] = field(default_factory=dict)  # kind -> {"pairs", "precision", "recall", "f1"}
    per_pair: dict[str, dict] = field(default_factory=dict)
    negative_pairs: int = 0
    negatives_with_segments: int = 0


def copy_truths(copies: list[dict], partial: list[dict]) -> list[dict]:
    """Every copy of a built-in benchmark as ``{"query", "target", "kind", "spans"}`` (spans in
    frames): its DS copies (:class:`~hapvr.data.corpus.CopyTruth`) and its partial copies."""
    out = []
    for c in copies:
        truth = CopyTruth(c["query"], c["target"], c["kind"], tuple(tuple(m) for m in c["matches"]))
        out.append({"query": truth.query, "target": truth.target, "kind": truth.kind, "spans": truth.spans()})
    out += [{"query": p["query"], "target": p["target"], "kind": "partial copy", "spans": [tuple(s) for s in p["spans"]]}
            for p in partial]
    return out


@torch.no_grad()
def evaluate_localization(maps, truths: list[dict], fps: float = 1.0, negatives=(), metric: str = "vsc",
                          **localize_options) -> LocalizationResult:
    """Localise every copy of ``truths`` (:func:`copy_truths`) and score it against its known
    spans (in frames; ``fps`` frames a second on both axes). ``maps(query_id, target_id)`` gives
    the pair's map and the map's own frames per second (the paper head's comparator output has
    one cell per 4 frames).

    ``negatives``: ``(query, target)`` pairs without any copy. As in VSC's matching track, the
    segments found there are false positives of the micro-AP. Precision / recall / F1: per pair in
    the ``metric`` form of :func:`hapvr.metrics.segment_precision_recall` (``"vsc"``: unions,
    geometric mean of the axes; ``"vcsl"``: VCSL's per-box sums and product), macro-averaged over
    the copy pairs as VCSL does."""
    predicted, truth, kinds, per_pair = {}, {}, {}, {}
    for c in truths:
        key = (c["query"], c["target"])
        m, map_fps = maps(*key)
        predicted[key] = localize(m, fps=map_fps, **localize_options)
        truth[key] = [tuple(x / fps for x in span) for span in c["spans"]]
        kinds[key] = c["kind"]
        per_pair[f"{c['query']} -> {c['target']}"] = {
            "kind": c["kind"], "f1": segment_precision_recall(predicted[key], truth[key], metric).f1, "truth": truth[key],
            "found": [[round(v, 2) for v in s.to_dict().values()] for s in predicted[key]]}
    agg = segment_prf_over_pairs(predicted, truth, metric=metric)
    per_kind = {}
    for kind in dict.fromkeys(kinds.values()):
        keys = [k for k in predicted if kinds[k] == kind]
        part = segment_prf_over_pairs({k: predicted[k] for k in keys}, {k: truth[k] for k in keys}, metric=metric)
        per_kind[kind] = {"pairs": len(keys), "precision": part.precision, "recall": part.recall, "f1": part.f1}
    found_on_negatives = {}
    for q, t in negatives:
        m, map_fps = maps(q, t)
        found_on_negatives[(q, t)] = localize(m, fps=map_fps, **localize_options)
    micro_ap = segment_micro_ap({**predicted, **found_on_negatives}, truth)
    return LocalizationResult(agg.precision, agg.recall, agg.f1, micro_ap, len(truths), per_kind, per_pair,
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
            if not related(q, other["query"]) and (other.get("host") or PARTIAL_HOSTS.get(other["query"])) != q:
                out.append((q, other["target"]))
                break
    return out


def localization_rows(baseline, model, feats: dict[str, torch.Tensor], partial_feats: dict[str, torch.Tensor],
                      truths: list[dict], partial: list[dict], labels: dict | None = None) -> dict[str, LocalizationResult]:
    """The default localisation (compare's and search's: the Chamfer map of the features, default
    parameters) and the trained model's own comparator output, on every copy of ``truths``; with
    ``labels``, one copy-free pair per partial copy (:func:`negative_pairs`) counts in the micro-AP."""
    videos = {**feats, **partial_feats}

    def chamfer(q, t):
        return chamfer_frame_map(videos[q], videos[t], baseline.k_s), 1.0

    def comparator(q, t):
        dev = device_of(model)
        was = model.training
        model.eval()
        out = model(videos[q][None].float().to(dev), videos[t][None].float().to(dev))
        model.train(was)
        own = out.frame_maps if out.raw is None else torch.nn.functional.hardtanh(out.raw)  # attention head: m_s
        return own[0, 0].float().cpu(), 1.0 / model.raw_frames_per_cell

    neg = negative_pairs(partial, labels) if labels is not None else []
    # the residual and attention heads' output is a (corrected) Chamfer map: the Chamfer map's parameters
    preset = PRESETS["trained" if getattr(model, "head", "visil") == "visil" else "chamfer"]
    return {"Chamfer map (compare's and search's)": evaluate_localization(chamfer, truths, negatives=neg),
            "HAP-VR comparator output": evaluate_localization(comparator, truths, negatives=neg, **preset)}


def localization_table(rows: dict[str, LocalizationResult]) -> str:
    """Per map localised on: P / R / F1 per copy kind and over all copies, the micro-AP and the
    copy-free pairs given a segment (percent)."""
    head = f"{'localised on / copy kind':<40}{'pairs':>6}{'precision':>11}{'recall':>9}{'F1':>8}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<40}{r.pairs:>6}{100 * r.precision:>11.1f}{100 * r.recall:>9.1f}{100 * r.f1:>8.1f}"
                     f"   micro-AP {100 * r.micro_ap:.1f}, copy-free pairs with segments "
                     f"{r.negatives_with_segments} of {r.negative_pairs}")
        for kind, k in r.per_kind.items():
            lines.append(f"{'  ' + kind:<40}{k['pairs']:>6}{100 * k['precision']:>11.1f}{100 * k['recall']:>9.1f}"
                         f"{100 * k['f1']:>8.1f}")
    return "\n".join(lines)


def localize_annotated(bench, store, k_s: float, fps: float = 1.0) -> str:
    """Localises every annotated copied segment pair of ``bench`` (``bench.segments``, seconds)
    whose two videos are in ``store`` (features at ``fps`` frames a second) on the Chamfer map of
    the features, with the default parameters, and scores the segments in both forms; returns
    the table."""
    truths = [{"query": a, "target": b, "kind": "annotated copy", "spans": [tuple(x * fps for x in s) for s in spans]}
              for (a, b), spans in sorted(bench.segments.items()) if a in store.ids() and b in store.ids()]
    if not truths:
        return f"copy localisation: none of the {len(bench.segments)} annotated pairs has both videos' features"
    maps = {}

    def chamfer(q, t):
        if (q, t) not in maps:
            maps[(q, t)] = chamfer_frame_map(store.load(q).float(), store.load(t).float(), k_s), fps
        return maps[(q, t)]

    rows = {f"{name} form": evaluate_localization(chamfer, truths, fps=fps, metric=metric)
            for name, metric in (("VCSL", "vcsl"), ("VSC", "vsc"))}
    head = f"{'segment metric':<16}{'pairs':>6}{'precision':>11}{'recall':>9}{'F1':>8}{'micro-AP':>10}"
    lines = [f"copy localisation on {bench.name}'s annotated segment pairs (Chamfer map, default parameters; "
             f"{len(bench.segments) - len(truths)} pairs without features left out):", head, "-" * len(head)]
    lines += [f"{name:<16}{r.pairs:>6}{100 * r.precision:>11.1f}{100 * r.recall:>9.1f}{100 * r.f1:>8.1f}"
              f"{100 * r.micro_ap:>10.1f}" for name, r in rows.items()]
    return "\n".join(lines)
