"""The numbers the documentation gives for the thresholds are the code's."""

from __future__ import annotations

import re
from pathlib import Path

from hapvr.localization import LocalizationConfig
from hapvr.models.scales import BASELINE_SCALE, RESIDUAL_SCALE, TRAINED_SCALE

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_scores_md_thresholds_are_the_code_s():
    text = (DOCS / "scores.md").read_text()
    rows = {"**default": RESIDUAL_SCALE, "features-only Chamfer baseline": BASELINE_SCALE,
            "a checkpoint with the paper's head": TRAINED_SCALE}
    for start, scale in rows.items():
        line = next(row for row in text.splitlines() if row.startswith("| " + start))
        found = re.search(r"\*\*([0-9.]+)\*\* \(symmetric: ([0-9.]+)\)", line)
        assert found, line
        assert (float(found.group(1)), float(found.group(2))) == (scale.threshold, scale.symmetric_threshold), line


def test_scores_md_localisation_values_are_the_code_s():
    text = " ".join((DOCS / "scores.md").read_text().split())
    cfg = LocalizationConfig()
    assert f"takes frame pairs at {cfg.threshold:g} or more as matches" in text
    assert f"of at least {cfg.min_length:g} s" in text
    assert f"mean similarity is {cfg.min_score:g} or more and at least {cfg.score_margin:g} above" in text
