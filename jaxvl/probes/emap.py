"""EMAP (Hessel & Lee, EMNLP 2020): does the model need cross-modal interactions at all?

EMAP replaces a model f(t, v) by its empirical projection onto additive functions g(t) + h(v), from its
outputs on all N x N pairings of N evaluation items (rows texts, columns images), per class, on logits:

    f_hat(t_i, v_j) = r_i + c_j - g,   r_i = mean_j f(t_i, v_j),  c_j = mean_i f(t_i, v_j),  g = mean_ij f(t_i, v_j)

(the main effects of a two-way functional ANOVA; the interaction is dropped). Everything here is computed from
``jaxvl.probes.pairs.PairSums`` (O(N x C) memory).

What is reported, for the ITM head (index 0 = match, VOLTA's convention) on matched pairs (t_i, v_i) vs the
N(N - 1) mismatched pairs (t_i, v_j), i != j, for the full model and for EMAP:

- accuracy: the share of pairs the argmax class gets right (class 0 on matched pairs, any other class on
  mismatched ones), on matched and mismatched pairs apart, and balanced accuracy = their mean (chance: 50%);
- AUROC of the match score (``itm_match_score``: logit 0 minus the largest other logit, logit0 - logit1 for
  ITM's two classes) of matched vs mismatched pairs, ties counted half (chance: 0.5). Exact: EMAP's
  mismatched scores are counted row by row against the N sorted matched scores;
- the interaction share per class: ||F - additive(F)||^2 / ||F - mean(F)||^2 over the N x N matrix, i.e.
  SS_interaction / SS_total of the two-way ANOVA (SS_total = SS_rows + SS_cols + SS_interaction with
  SS_rows = N sum_i (r_i - g)^2, SS_cols = N sum_j (c_j - g)^2): 0 for a purely additive model, 1 when
  neither the text nor the image alone moves the logit on average.

A caveat for ITM: an additive score ranks the images in the same order for every text, so EMAP's AUROC can
stay above chance only through items whose text or image alone tells matched from mismatched (a unimodal
tell), which is the question EMAP asks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.probes.pairs import (
    MatchScore,
    PairItems,
    PairProgram,
    PairSums,
    ScoreFn,
    auc_wins,
    itm_logits,
    itm_match_score,
)


def additive_parts(row_sum: np.ndarray, col_sum: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row sums [N, C] and column sums [N, C] of an N x N x C score tensor -> (row means r [N, C], column
    means c [N, C], grand mean g [C])."""
    row_sum, col_sum = np.asarray(row_sum, np.float64), np.asarray(col_sum, np.float64)
    return row_sum / n, col_sum / n, row_sum.sum(0) / (n * n)


def emap_projection(row_sum: np.ndarray, col_sum: np.ndarray, n: int) -> np.ndarray:
    """EMAP's prediction on the matched pairs [N, C]: f_hat(t_i, v_i) = r_i + c_i - g."""
    r, c, g = additive_parts(row_sum, col_sum, n)
    return r + c - g


def interaction_share(sums: PairSums) -> np.ndarray:
    """SS_interaction / SS_total per class [C] (NaN where the logit never varies)."""
    r, c, g = additive_parts(sums.row_sum, sums.col_sum, sums.n)
    ss_rows = sums.n * ((r - g) ** 2).sum(0)
    ss_cols = sums.n * ((c - g) ** 2).sum(0)
    ss_inter = np.maximum(sums.m2 - ss_rows - ss_cols, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums.m2 > 0, ss_inter / sums.m2, np.nan)


@dataclasses.dataclass(frozen=True)
class MatchMetrics:
    """Matched-vs-mismatched metrics of one predictor (the full model or EMAP); accuracies as fractions."""

    accuracy_matched: float  # matched pairs with argmax = class 0
    accuracy_mismatched: float  # mismatched pairs with argmax != class 0
    auroc: float  # match score, matched vs mismatched, ties half

    @property
    def balanced_accuracy(self) -> float:
        return 0.5 * (self.accuracy_matched + self.accuracy_mismatched)

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "balanced_accuracy": self.balanced_accuracy}


def full_metrics(sums: PairSums) -> MatchMetrics:
    """The full model's metrics from the streaming counts."""
    n = sums.n
    mismatched = n * (n - 1)
    return MatchMetrics(sums.matched_correct / n, sums.mismatched_correct / mismatched if mismatched else math.nan,
                        sums.auroc)


def emap_metrics(sums: PairSums, match_score: MatchScore = itm_match_score) -> MatchMetrics:
    """EMAP's metrics: its scores r_i + c_j - g on every pair, one row (text i) at a time (O(N x C) memory,
    O(N^2 x C) time)."""
    n = sums.n
    r, c, g = additive_parts(sums.row_sum, sums.col_sum, n)
    matched = r + c - g
    positives = np.sort(np.asarray(match_score(matched), np.float64))
    matched_correct = int((matched.argmax(-1) == 0).sum())
    wins = mismatched_correct = 0
    for i in range(n):
        row = np.delete(r[i] + c - g, i, axis=0)  # [N - 1, C]: text i with every other image
        wins += auc_wins(positives, np.asarray(match_score(row), np.float64))
        mismatched_correct += int((row.argmax(-1) != 0).sum())
    negatives = n * (n - 1)
    if not negatives:
        return MatchMetrics(matched_correct / n, math.nan, math.nan)
    return MatchMetrics(matched_correct / n, mismatched_correct / negatives, wins / (2 * n * negatives))


@dataclasses.dataclass
class EmapResult:
    """EMAP of one model on N items: metrics of the full model and of EMAP, the interaction share, and the
    matched pairs' logits (``diag``) and their EMAP projections (``emap_diag``), both [N, C]."""

    model: str
    n: int
    num_classes: int
    score: str
    full: MatchMetrics
    emap: MatchMetrics
    interaction_share: np.ndarray  # [C]
    mean_logits: np.ndarray  # [C] over all N^2 pairs
    diag: np.ndarray
    emap_diag: np.ndarray

    @classmethod
    def from_sums(cls, sums: PairSums, model: str = "model", score: str = "ITM logits",
                  match_score: MatchScore = itm_match_score) -> EmapResult:
        return cls(model, sums.n, sums.num_classes, score, full_metrics(sums), emap_metrics(sums, match_score),
                   interaction_share(sums), sums.mean.copy(), sums.diag.copy(),
                   emap_projection(sums.row_sum, sums.col_sum, sums.n))

    def table(self) -> str:
        """A markdown table with its title and units."""
        n = self.n
        pct = lambda x: "n/a" if math.isnan(x) else f"{100 * x:.1f}"  # noqa: E731
        auc = lambda x: "n/a" if math.isnan(x) else f"{x:.3f}"  # noqa: E731
        lines = [
            f"EMAP of {self.model} ({self.score}, class 0 = match): n = {n} items, {n * n} (text, image) pairs "
            f"({n} matched, {n * (n - 1)} mismatched).",
            "Accuracy (%): pairs whose argmax class is right (match on matched pairs, not match on mismatched);"
            " balanced = the mean of the two (chance 50). AUROC of the match score (logit 0 - the largest other"
            " logit), matched vs mismatched pairs, ties half (chance 0.5). EMAP: the logits' projection"
            " row mean + column mean - grand mean, per class.",
            "",
            "| predictor | acc. matched (%) | acc. mismatched (%) | balanced acc. (%) | AUROC |",
            "|---|---|---|---|---|",
        ]
        for name, m in (("full model", self.full), ("EMAP", self.emap)):
            lines.append(f"| {name} | {pct(m.accuracy_matched)} | {pct(m.accuracy_mismatched)} | "
                         f"{pct(m.balanced_accuracy)} | {auc(m.auroc)} |")
        d = lambda a, b: "n/a" if math.isnan(a - b) else f"{a - b:+.3f}"  # noqa: E731
        lines.append(f"| EMAP - full | {d(100 * self.emap.accuracy_matched, 100 * self.full.accuracy_matched)} | "
                     f"{d(100 * self.emap.accuracy_mismatched, 100 * self.full.accuracy_mismatched)} | "
                     f"{d(100 * self.emap.balanced_accuracy, 100 * self.full.balanced_accuracy)} | "
                     f"{d(self.emap.auroc, self.full.auroc)} |")
        lines += ["", "Interaction share (%) per class: the share of the logit's variance over the N x N pairs that"
                  " is neither a text nor an image main effect (0: additive, EMAP loses nothing).", "",
                  "| class | mean logit | interaction share (%) |", "|---|---|---|"]
        for k in range(self.num_classes):
            name = f"{k} (match)" if k == 0 else str(k)
            lines.append(f"| {name} | {self.mean_logits[k]:+.3f} | {pct(float(self.interaction_share[k]))} |")
        return "\n".join(lines)

    def as_dict(self, per_item: bool = True) -> dict[str, Any]:
        """JSON-ready: metrics (fractions, AUROC in [0, 1]) and, with ``per_item``, the [N, C] logits."""
        nan = lambda x: None if math.isnan(x) else float(x)  # noqa: E731
        out: dict[str, Any] = {
            "probe": "emap", "model": self.model, "score": self.score, "n_items": self.n, "n_pairs": self.n ** 2,
            "num_classes": self.num_classes, "match_class": 0,
            "full": {k: nan(v) for k, v in self.full.as_dict().items()},
            "emap": {k: nan(v) for k, v in self.emap.as_dict().items()},
            "interaction_share": [nan(x) for x in self.interaction_share],
            "mean_logits": [float(x) for x in self.mean_logits],
        }
        if per_item:
            out["matched_logits"] = self.diag.tolist()
            out["matched_emap_logits"] = self.emap_diag.tolist()
        return out

    def save_json(self, path: str | Path, per_item: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(per_item), indent=1) + "\n")
        return path


def run_emap(model: VLBertForPreTraining, variables: Any, items: PairItems | Mapping[str, Any],
             mesh: Mesh | None = None, name: str = "model", text_block: int = 8, image_block: int = 8,
             score_fn: ScoreFn = itm_logits, match_score: MatchScore = itm_match_score,
             cache_prefix: bool | None = None, compiler_options: dict[str, Any] | None = None,
             progress: Callable[[int], Any] | None = None) -> EmapResult:
    """EMAP of ``model`` (``variables`` from ``model.init`` or a checkpoint) on ``items``: all N x N pairs in
    compiled blocks (``PairProgram``), then ``EmapResult.from_sums``."""
    program = PairProgram(model, mesh, text_block, image_block, score_fn, match_score, cache_prefix,
                          compiler_options=compiler_options)
    sums = program(variables, items, progress)
    score = "ITM logits" if score_fn is itm_logits else getattr(score_fn, "__name__", "score")
    return EmapResult.from_sums(sums, name, score, match_score)
