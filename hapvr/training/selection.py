"""Model selection on the validation benchmark (``--select-on validation``).

The model is scored on the validation benchmark (rendered worlds whose seeds neither training nor
the test benchmark use) at step 0, every ``--select-every`` steps and at the end; the weights with
the best score *among the steps at or above the Chamfer baseline on all six figures* are what the
run reports and saves as its model. The score is the mean of the six figures of the final table
(mAP and uAP at DSVR, CSVR and ISVR). With the residual head the step-0 model *is* the baseline,
so some step always qualifies and the selected model is never below the baseline on validation:
training is kept only where it helped there at every level. With the paper's head no step may
qualify; the run then reports its last weights and says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from hapvr.evaluation.levels import LEVEL_LABELS, evaluate_model


def selection_score(results: dict) -> float:
    """Mean of mAP and uAP over the three levels (``{level: LevelResult}``), in [0, 1]."""
    six = figures(results)
    return sum(six.values()) / len(six)


@dataclass
class Selection:
    """The best weights seen so far on the validation benchmark and the score history."""

    queries: list
    labels: dict
    features: dict  # whitened validation features
    baseline: dict | None = None  # the baseline's six figures (fractions), set by score_baseline
    best_step: int = -1
    best_score: float = float("-inf")
    best_state: dict | None = None
    history: list = field(default_factory=list)  # [{"step", "score", level figures...}]

    def score_baseline(self, baseline: torch.nn.Module) -> dict:
        """Scores the features-only baseline once: the bar every selected step must clear."""
        if self.baseline is None:
            self.baseline = figures(evaluate_model(baseline, self.features, self.queries, self.labels))
        return self.baseline

    def evaluate(self, model: torch.nn.Module, step: int) -> tuple[float, dict, bool]:
        """Scores ``model`` at ``step``; keeps a copy of its weights when no figure is below the
        baseline's and the score is the best so far (ties keep the earlier, simpler model).
        Returns (score, per-level results, improved)."""
        res = evaluate_model(model, self.features, self.queries, self.labels)
        score = selection_score(res)
        row = {"step": step, "score": round(100 * score, 3)}
        for t in LEVEL_LABELS:
            row[f"mAP {t}"] = round(100 * res[t].map, 2)
            row[f"uAP {t}"] = round(100 * res[t].uap, 2)
        mine = figures(res)
        row["qualifies"] = self.baseline is None or all(mine[k] >= v - 1e-9 for k, v in self.baseline.items())
        self.history.append(row)
        improved = row["qualifies"] and score > self.best_score + 1e-12
        if improved:
            self.best_step, self.best_score = step, score
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return score, res, improved

    def selected(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` with the selected weights (``model`` itself when nothing was scored)."""
        if self.best_state is None:
            return model
        out = copy.deepcopy(model)
        out.load_state_dict(self.best_state)
        return out.eval()

    def state(self) -> dict:
        """What a checkpoint keeps (the weights themselves are the checkpoint's model)."""
        return {"best_step": self.best_step, "best_score": self.best_score if self.best_step >= 0 else None,
                "history": list(self.history),
                "baseline": self.baseline}

    def restore(self, state: dict, weights: dict) -> None:
        self.best_step = int(state["best_step"])
        self.best_score = float("-inf") if state["best_score"] is None else float(state["best_score"])
        self.history = list(state["history"])
        self.baseline = state.get("baseline")
        self.best_state = {k: v.clone() for k, v in weights.items()} if self.best_step >= 0 else None


def figures(results: dict) -> dict:
    """The six figures ``{"mAP DSVR": fraction, ...}`` of ``{level: LevelResult}``."""
    return {f"{m} {t}": getattr(results[t], m.lower()) for m in ("mAP", "uAP") for t in LEVEL_LABELS}


def history_table(history: list, best_step: int, baseline: dict | None = None) -> str:
    """Plain-text table of the validation scores, the selected step marked."""
    cols = [f"{m} {t}" for m in ("mAP", "uAP") for t in LEVEL_LABELS]
    head = f"{'step':>8}{'score':>9}" + "".join(f"{c:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    if baseline is not None:
        lines.append(f"{'baseline':>8}{baseline['score']:>9.2f}" + "".join(f"{baseline[c]:>11.2f}" for c in cols))
    for row in history:
        mark = "  <- selected" if row["step"] == best_step else ("" if row.get("qualifies", True)
                                                                  else "  (below the baseline somewhere)")
        lines.append(f"{row['step']:>8}{row['score']:>9.2f}" + "".join(f"{row[c]:>11.2f}" for c in cols) + mark)
    return "\n".join(lines)
