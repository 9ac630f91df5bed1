"""Model selection on the validation benchmark (``--select-on validation``).

The model is scored on the validation benchmark (rendered worlds whose seeds neither training nor
the test benchmark use) at step 0, every ``--select-every`` steps and at the end; the weights with
the best score are what the run reports and saves as its model. The score is the mean of the six
figures of the final table (mAP and uAP at DSVR, CSVR and ISVR), so no level is traded away
unseen. With the residual head the step-0 model *is* the Chamfer baseline, so the selected model
is never below the baseline on validation: training can only be kept where it helped there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from hapvr.training.heldout import LEVEL_LABELS


def selection_score(results: dict) -> float:
    """Mean of mAP and uAP over the three levels (``{level: LevelResult}``), in [0, 1]."""
    return sum(results[t].map + results[t].uap for t in LEVEL_LABELS) / (2 * len(LEVEL_LABELS))


@dataclass
class Selection:
    """The best weights seen so far on the validation benchmark and the score history."""

    queries: list
    labels: dict
    features: dict  # whitened validation features
    best_step: int = -1
    best_score: float = float("-inf")
    best_state: dict | None = None
    history: list = field(default_factory=list)  # [{"step", "score", level figures...}]

    def evaluate(self, model: torch.nn.Module, step: int) -> tuple[float, dict, bool]:
        """Scores ``model`` at ``step``; keeps a copy of its weights when it is the best so far
        (ties keep the earlier, simpler model). Returns (score, per-level results, improved)."""
        from hapvr.training.heldout import evaluate_model

        res = evaluate_model(model, self.features, self.queries, self.labels)
        score = selection_score(res)
        row = {"step": step, "score": round(100 * score, 3)}
        for t in LEVEL_LABELS:
            row[f"mAP {t}"] = round(100 * res[t].map, 2)
            row[f"uAP {t}"] = round(100 * res[t].uap, 2)
        self.history.append(row)
        improved = score > self.best_score + 1e-12
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
        return {"best_step": self.best_step, "best_score": self.best_score, "history": list(self.history)}

    def restore(self, state: dict, weights: dict) -> None:
        self.best_step = int(state["best_step"])
        self.best_score = float(state["best_score"])
        self.history = list(state["history"])
        self.best_state = {k: v.clone() for k, v in weights.items()} if self.best_step >= 0 else None


def history_table(history: list, best_step: int, baseline: dict | None = None) -> str:
    """Plain-text table of the validation scores, the selected step marked."""
    cols = [f"{m} {t}" for m in ("mAP", "uAP") for t in LEVEL_LABELS]
    head = f"{'step':>8}{'score':>9}" + "".join(f"{c:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    if baseline is not None:
        lines.append(f"{'baseline':>8}{baseline['score']:>9.2f}" + "".join(f"{baseline[c]:>11.2f}" for c in cols))
    for row in history:
        mark = "  <- selected" if row["step"] == best_step else ""
        lines.append(f"{row['step']:>8}{row['score']:>9.2f}" + "".join(f"{row[c]:>11.2f}" for c in cols) + mark)
    return "\n".join(lines)
