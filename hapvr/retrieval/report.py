"""How search and duplicates results read: one line per pair, the JSON and CSV layouts
(docs/formats.md)."""

from __future__ import annotations

import csv
import io

from hapvr.localization import Segment

# How a relation reads between two ids ("no segment" reads differently, see pair_line).
_RELATION_WORDS = {"same": "same video as", "a in b": "is part of", "b in a": "contains",
                   "share a part": "shares a part with"}


def spans_text(segments, most: int = 2) -> str:
    """``"q0-q1 -> t0-t1"`` of the first ``most`` segments (seconds; `` rev`` for a copy played
    backwards), ``+N more`` for the rest, ``-`` for none."""
    def one(s) -> str:
        d = s.to_dict() if isinstance(s, Segment) else s
        return (f"{d['query_start']:.0f}-{d['query_end']:.0f} -> {d['target_start']:.0f}-{d['target_end']:.0f}"
                + (" rev" if d.get("reversed") else ""))

    text = "; ".join(one(s) for s in segments[:most])
    if len(segments) > most:
        text += f" +{len(segments) - most} more"
    return text or "-"


def view_text(rect: dict | None) -> str:
    """A view's rectangle in words (``the whole frame`` for None)."""
    if rect is None:
        return "the whole frame"
    if rect.get("kind") == "mirrored":
        return "the whole frame mirrored"
    return (f"{rect.get('kind', 'view')} {rect['width']}x{rect['height']} px at x={rect['left']}, y={rect['top']}")


def search_table(results: list[dict], copy_threshold: float, segments_looked_for: bool = True) -> list[str]:
    """The lines of one query's results (``{"id", "similarity", "segments", "reason"}`` each, best
    first, with ``query_view`` / ``target_view`` rectangles when views were compared): rank,
    similarity, whether it reaches ``copy_threshold``, the first segments, the views that scored
    it when not both whole frames; then, for each copy without a segment, why."""
    lines = [f"  {'rank':>4}  {'similarity':>10}  {'copy?':<5}  {'segments (query s -> target s)':<34}  id"]
    why = []
    for rank, r in enumerate(results, 1):
        copy = r["similarity"] >= copy_threshold
        if copy and not r["segments"] and segments_looked_for:
            why.append(f"  rank {rank}, {r['id']}: no copied segment: {r['reason']}")
        views = ""
        if r.get("query_view") is not None or r.get("target_view") is not None:
            views = f"  (query: {view_text(r.get('query_view'))}; {r['id']}: {view_text(r.get('target_view'))})"
        lines.append(f"  {rank:>4}  {r['similarity']:>10.4f}  {'yes' if copy else 'no':<5}  "
                     f"{spans_text(r['segments']):<34}  {r['id']}{views}")
    return lines + why


def hit_results(hits, views, load, locate, copy_threshold: float, segments: bool = True) -> list[dict]:
    """One query's results as search prints and writes them (docs/formats.md): per hit (best
    first) its id, similarity, segments, the reason there are none, and both views. ``views``:
    the query's ``(rectangle or None, features)``; ``load(hit)``: the features of the entry
    that scored it; ``locate(query, target)``: ``(segments, reason)``. Segments are looked for in
    the copies only (``copy_threshold``): a segment between unrelated videos misleads."""
    out = []
    for hit in hits:
        query_view, features = views[hit.query_view]
        found, reason = ([], "not looked for (--no-segments)") if not segments else \
            ([], f"not a copy (below {copy_threshold:g}): not looked for") if hit.score < copy_threshold else \
            locate(features, load(hit))
        out.append({"id": hit.id, "similarity": hit.score, "segments": [s.to_dict() for s in found], "reason": reason,
                    "query_view": None if query_view is None else query_view.to_dict(), "target_view": hit.target_view})
    return out


def pair_line(p) -> str:
    """One duplicate pair (:class:`hapvr.retrieval.search.DuplicatePair`) in words."""
    if p.relation == "no segment":
        return f"{p.score:.4f}  {p.a} looks like {p.b}  (no copied segment: {p.reason})"
    return (f"{p.score:.4f}  {p.a} {_RELATION_WORDS[p.relation]} {p.b}  "
            f"(covers {p.coverage[0]:.0%} / {p.coverage[1]:.0%}; {spans_text(p.segments)})")


def pair_dict(p) -> dict:
    return {"a": p.a, "b": p.b, "similarity": p.score, "relation": p.relation, "coverage": list(p.coverage),
            "segments": [s.to_dict() for s in p.segments], "reason": p.reason}


def duplicates_json(found, threshold: float, symmetric: bool) -> dict:
    """The --duplicates JSON: every pair, and the clusters of the same video with their links."""
    return {"threshold": threshold, "symmetric": symmetric, "pairs": [pair_dict(p) for p in found.pairs],
            "clusters": [{"videos": c, "links": [pair_dict(p) for p in found.links(c)]} for c in found.clusters]}


def duplicates_csv(found) -> str:
    """The --duplicates CSV: one row per pair; ``cluster`` numbers the clusters of the same video
    (empty for the other relations); ``segments`` as ``q0-q1:t0-t1`` in seconds."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["a", "b", "similarity", "relation", "coverage_a", "coverage_b", "cluster", "segments"])
    cluster_of = {v: i for i, c in enumerate(found.clusters, 1) for v in c}
    for p in found.pairs:
        w.writerow([p.a, p.b, f"{p.score:.6f}", p.relation, p.coverage[0], p.coverage[1],
                    cluster_of.get(p.a, "") if p.relation == "same" else "",
                    " ".join(f"{s.query_start:g}-{s.query_end:g}:{s.target_start:g}-{s.target_end:g}"
                             for s in p.segments)])
    return text.getvalue()
