"""EMAP (Hessel & Lee, EMNLP 2020): does the model need cross-modal interactions at all?

EMAP replaces a model f(t, v) by its empirical projection onto additive functions g(t) + h(v), from its
outputs on all N x N pairings of N evaluation items (rows texts, columns images), per class, on logits:

    f_hat(t_i, v_j) = r_i + c_j - g,   r_i = mean_j f(t_i, v_j),  c_j = mean_i f(t_i, v_j),  g = mean_ij f(t_i, v_j)

(the main effects of a two-way functional ANOVA; the interaction is dropped). Everything here is computed from
``jaxvl.probes.pairs.PairSums`` (O(N x C) memory).

What is reported without labels (design ``pairs``), for the ITM head (index 0 = match, VOLTA's convention) on
matched pairs (t_i, v_i) vs the N(N - 1) mismatched pairs (t_i, v_j), i != j, for the full model and for EMAP:

- accuracy: the share of pairs the argmax class gets right (class 0 on matched pairs, any other class on
  mismatched ones), on matched and mismatched pairs apart, and balanced accuracy = their mean (chance: 50%);
- AUROC of the match score (``itm_match_score``: logit 0 minus the largest other logit, logit0 - logit1 for
  ITM's two classes) of matched vs mismatched pairs, ties counted half (chance: 0.5). Exact: EMAP's
  mismatched scores are counted row by row against the N sorted matched scores;
- the interaction share per class: ||F - additive(F)||^2 / ||F - mean(F)||^2 over the N x N matrix, i.e.
  SS_interaction / SS_total of the two-way ANOVA (SS_total = SS_rows + SS_cols + SS_interaction with
  SS_rows = N sum_i (r_i - g)^2, SS_cols = N sum_j (c_j - g)^2): 0 for a purely additive model, 1 when
  neither the text nor the image alone moves the logit on average.

Two designs (``EmapResult.design``):

- ``pairs`` (no labels): matched = the diagonal, mismatched = the rest, as above. A caveat for ITM: every text
  and every image has exactly one match, so an additive score f = a(t) + b(v) gives matched and mismatched
  pairs the same mean; a unimodal tell cannot show here (it needs labelled foils);
- ``labelled`` (``labels`` y [N], 0 = match, 1 = mismatch; Hessel & Lee's own setup): item k is (text k,
  image k, y_k), its mismatched items FOILS (a text that does not describe image k, e.g.
  ``jaxvl.data.synthetic.foils``). EMAP still projects f over all N x N pairings of the set's texts and images,
  and each item is scored by its own pair: the diagonal of f (full model) and of the projection (EMAP), against
  y. Reported: accuracy over the items (argmax class 0 <=> predicted match) with a 95% bootstrap interval over
  items, accuracy on the matched and on the mismatched items, balanced accuracy (their mean, with its interval;
  chance 50%), and the match score's AUROC of matched vs mismatched items (chance 0.5). EMAP keeps the full
  model's accuracy when the label is predictable from one modality alone (a unimodal tell) and falls to chance
  when it needs both.
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

from jaxvl.metrics.bootstrap import bootstrap_weights
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


def check_labels(labels: Any, n: int) -> np.ndarray:
    """int32 [N] labels (0 = match, 1 = mismatch); ValueError naming ``labels`` on another shape or value."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels: shape {y.shape}, expected ({n},), one per item")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels: expected integers 0 (match) or 1 (mismatch); got dtype {y.dtype}, values "
                         f"{np.unique(y)[:5]}")
    return y.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class LabelledMetrics:
    """Metrics of one predictor on N labelled items, as fractions; ``*_low`` / ``*_high`` the bootstrap interval
    over items."""

    accuracy: float  # items whose argmax is right: class 0 on items labelled match, another class on the rest
    accuracy_low: float
    accuracy_high: float
    accuracy_matched: float  # on items labelled match
    accuracy_mismatched: float  # on items labelled mismatch
    balanced_low: float
    balanced_high: float
    auroc: float  # match score, matched vs mismatched items, ties half
    n_matched: int
    n_mismatched: int

    @property
    def balanced_accuracy(self) -> float:
        return 0.5 * (self.accuracy_matched + self.accuracy_mismatched)

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "balanced_accuracy": self.balanced_accuracy}


def labelled_metrics(logits: np.ndarray, labels: np.ndarray, match_score: MatchScore = itm_match_score,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> LabelledMetrics:
    """``LabelledMetrics`` of ``logits`` [N, C] (class 0 = match) against ``labels`` [N] (0 match, 1 mismatch);
    percentile intervals at ``level`` over ``n_boot`` resamples of the items (``seed``: the same resamples for
    every predictor of one item set, so their intervals are paired)."""
    logits = np.asarray(logits, np.float64)
    y = check_labels(labels, logits.shape[0])
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: expected a coverage in (0, 1)")
    is_match = (y == 0).astype(np.float64)
    correct = ((logits.argmax(-1) == 0) == (y == 0)).astype(np.float64)
    scores = np.asarray(match_score(logits), np.float64)
    pos, neg = np.sort(scores[y == 0]), scores[y == 1]
    auroc = auc_wins(pos, neg) / (2 * pos.size * neg.size) if pos.size and neg.size else math.nan

    def share(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Weighted share of correct items among ``mask`` per row of ``weights`` [B, N] (NaN where none)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ (correct * mask)) / (weights @ mask)

    def interval(boot: np.ndarray) -> tuple[float, float]:
        boot = boot[np.isfinite(boot)]
        tail = 100 * (1 - level) / 2
        return tuple(float(x) for x in np.percentile(boot, [tail, 100 - tail])) if boot.size else (math.nan,) * 2

    one = np.ones((1, len(y)))
    w = bootstrap_weights(len(y), n_boot, seed).astype(np.float64)  # [n_boot, N]
    acc_low, acc_high = interval(share(w, np.ones(len(y))))
    bal_low, bal_high = interval(0.5 * (share(w, is_match) + share(w, 1 - is_match)))
    return LabelledMetrics(float(correct.mean()), acc_low, acc_high, float(share(one, is_match)[0]),
                           float(share(one, 1 - is_match)[0]), bal_low, bal_high, float(auroc),
                           int(is_match.sum()), int(len(y) - is_match.sum()))


Metrics = MatchMetrics | LabelledMetrics


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _auc(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _diff(a: float, b: float) -> str:
    return "n/a" if math.isnan(a - b) else f"{a - b:+.3f}"

DESIGNS = {"pairs": "all N x N (text, image) pairings, the diagonal matched, the rest mismatched",
           "labelled": "labelled items (text k, image k, label k), mismatched items are foils; every item scored "
                       "by its own pair, EMAP's projection taken over all N x N pairings of the items' texts and "
                       "images"}


@dataclasses.dataclass
class EmapResult:
    """EMAP of one model on N items: metrics of the full model and of EMAP (``MatchMetrics`` for design ``pairs``,
    ``LabelledMetrics`` with ``labels`` [N]), the interaction share, and the diagonal pairs' logits (``diag``) and
    their EMAP projections (``emap_diag``), both [N, C]."""

    model: str
    n: int
    num_classes: int
    score: str
    full: Metrics
    emap: Metrics
    interaction_share: np.ndarray  # [C]
    mean_logits: np.ndarray  # [C] over all N^2 pairs
    diag: np.ndarray
    emap_diag: np.ndarray
    labels: np.ndarray | None = None  # [N] 0 match / 1 mismatch: design "labelled"

    @property
    def design(self) -> str:
        return "pairs" if self.labels is None else "labelled"

    @classmethod
    def from_sums(cls, sums: PairSums, model: str = "model", score: str = "ITM logits",
                  match_score: MatchScore = itm_match_score, labels: Any = None, n_boot: int = 1000,
                  seed: int = 0) -> EmapResult:
        """The result from the N x N sums. Without ``labels`` the matched pairs are the diagonal (design
        ``pairs``); with ``labels`` [N] (0 = match, 1 = mismatch) item k is pair (k, k) with label k (design
        ``labelled``; ``n_boot`` resamples of the items drawn with ``seed``)."""
        proj = emap_projection(sums.row_sum, sums.col_sum, sums.n)
        if labels is None:
            full, emap = full_metrics(sums), emap_metrics(sums, match_score)
        else:
            labels = check_labels(labels, sums.n)
            full = labelled_metrics(sums.diag, labels, match_score, n_boot, seed)
            emap = labelled_metrics(proj, labels, match_score, n_boot, seed)
        return cls(model, sums.n, sums.num_classes, score, full, emap, interaction_share(sums), sums.mean.copy(),
                   sums.diag.copy(), proj, labels)

    def table(self) -> str:
        """A markdown table with its title and units."""
        lines = self._pair_lines() if self.labels is None else self._labelled_lines()
        lines += ["", "Interaction share (%) per class: the share of the logit's variance over the N x N pairs that"
                  " is neither a text nor an image main effect (0: additive, EMAP loses nothing).", "",
                  "| class | mean logit | interaction share (%) |", "|---|---|---|"]
        for k in range(self.num_classes):
            name = f"{k} (match)" if k == 0 else str(k)
            lines.append(f"| {name} | {self.mean_logits[k]:+.3f} | {_pct(float(self.interaction_share[k]))} |")
        return "\n".join(lines)

    def _pair_lines(self) -> list[str]:
        n = self.n
        full, emap = self.full, self.emap
        assert isinstance(full, MatchMetrics) and isinstance(emap, MatchMetrics)
        lines = [
            f"EMAP of {self.model} ({self.score}, class 0 = match): n = {n} items, {n * n} (text, image) pairs "
            f"({n} matched, {n * (n - 1)} mismatched). Design: {DESIGNS['pairs']}.",
            "Accuracy (%): pairs whose argmax class is right (match on matched pairs, not match on mismatched);"
            " balanced = the mean of the two (chance 50). AUROC of the match score (logit 0 - the largest other"
            " logit), matched vs mismatched pairs, ties half (chance 0.5). EMAP: the logits' projection"
            " row mean + column mean - grand mean, per class.",
            "",
            "| predictor | acc. matched (%) | acc. mismatched (%) | balanced acc. (%) | AUROC |",
            "|---|---|---|---|---|",
        ]
        for name, m in (("full model", full), ("EMAP", emap)):
            lines.append(f"| {name} | {_pct(m.accuracy_matched)} | {_pct(m.accuracy_mismatched)} | "
                         f"{_pct(m.balanced_accuracy)} | {_auc(m.auroc)} |")
        lines.append(f"| EMAP - full | {_diff(100 * emap.accuracy_matched, 100 * full.accuracy_matched)} | "
                     f"{_diff(100 * emap.accuracy_mismatched, 100 * full.accuracy_mismatched)} | "
                     f"{_diff(100 * emap.balanced_accuracy, 100 * full.balanced_accuracy)} | "
                     f"{_diff(emap.auroc, full.auroc)} |")
        return lines

    def _labelled_lines(self) -> list[str]:
        full, emap = self.full, self.emap
        assert isinstance(full, LabelledMetrics) and isinstance(emap, LabelledMetrics)
        ci = lambda x, lo, hi: f"{_pct(x)} [{_pct(lo)}, {_pct(hi)}]"  # noqa: E731
        lines = [
            f"EMAP of {self.model} ({self.score}, class 0 = match): n = {self.n} labelled items ({full.n_matched} "
            f"matched, {full.n_mismatched} mismatched), projected over their {self.n ** 2} (text, image) pairings. "
            f"Design: {DESIGNS['labelled']}.",
            "Accuracy (%): items whose argmax class is right (match on items labelled match, not match on the rest),"
            " with a 95% bootstrap interval over items; balanced = the mean of the accuracies on matched and on"
            " mismatched items (chance 50). AUROC of the match score (logit 0 - the largest other logit), matched vs"
            " mismatched items, ties half (chance 0.5). EMAP: the logits' projection row mean + column mean - grand"
            " mean, per class, at each item's own pair.",
            "",
            "| predictor | accuracy (%) | acc. matched (%) | acc. mismatched (%) | balanced acc. (%) | AUROC |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in (("full model", full), ("EMAP", emap)):
            lines.append(f"| {name} | {ci(m.accuracy, m.accuracy_low, m.accuracy_high)} | {_pct(m.accuracy_matched)}"
                         f" | {_pct(m.accuracy_mismatched)} | "
                         f"{ci(m.balanced_accuracy, m.balanced_low, m.balanced_high)} | {_auc(m.auroc)} |")
        lines.append(f"| EMAP - full | {_diff(100 * emap.accuracy, 100 * full.accuracy)} | "
                     f"{_diff(100 * emap.accuracy_matched, 100 * full.accuracy_matched)} | "
                     f"{_diff(100 * emap.accuracy_mismatched, 100 * full.accuracy_mismatched)} | "
                     f"{_diff(100 * emap.balanced_accuracy, 100 * full.balanced_accuracy)} | "
                     f"{_diff(emap.auroc, full.auroc)} |")
        return lines

    def as_dict(self, per_item: bool = True) -> dict[str, Any]:
        """JSON-ready: metrics (fractions, AUROC in [0, 1]) and, with ``per_item``, the [N, C] logits (and the
        labels)."""
        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and math.isnan(x) else x

        out: dict[str, Any] = {
            "probe": "emap", "model": self.model, "score": self.score, "design": self.design, "n_items": self.n,
            "n_pairs": self.n ** 2, "num_classes": self.num_classes, "match_class": 0,
            "full": {k: clean(v) for k, v in self.full.as_dict().items()},
            "emap": {k: clean(v) for k, v in self.emap.as_dict().items()},
            "interaction_share": [clean(float(x)) for x in self.interaction_share],
            "mean_logits": [float(x) for x in self.mean_logits],
        }
        if per_item:
            out["matched_logits" if self.labels is None else "item_logits"] = self.diag.tolist()
            out["matched_emap_logits" if self.labels is None else "item_emap_logits"] = self.emap_diag.tolist()
            if self.labels is not None:
                out["labels"] = self.labels.tolist()
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
             progress: Callable[[int], Any] | None = None, labels: Any = None) -> EmapResult:
    """EMAP of ``model`` (``variables`` from ``model.init`` or a checkpoint) on ``items``: all N x N pairs in
    compiled blocks (``PairProgram``), then ``EmapResult.from_sums`` (design ``labelled`` with ``labels`` [N],
    0 = match, 1 = mismatch, checked before anything compiles)."""
    items = items if isinstance(items, PairItems) else PairItems.from_batch(items)
    if labels is not None:
        labels = check_labels(labels, items.n)
    program = PairProgram(model, mesh, text_block, image_block, score_fn, match_score, cache_prefix,
                          compiler_options=compiler_options)
    sums = program(variables, items, progress)
    score = "ITM logits" if score_fn is itm_logits else getattr(score_fn, "__name__", "score")
    return EmapResult.from_sums(sums, name, score, match_score, labels)
