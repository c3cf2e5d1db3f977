"""Did pretraining learn anything? Each objective's final evaluation loss beside its chance level.

A chance level is the loss of the best predictor that ignores its input: one fixed prediction, fit to the
evaluation targets themselves (so it is a strong, slightly optimistic baseline: no model that ignores the
input can beat it on that data), scored exactly as the evaluation scores the model (the loss of
``jaxvl.models.volta.objectives`` per batch, averaged over the evaluation batches):

- ``mlm``: the unigram distribution of the masked tokens (their frequencies in the evaluation batches); its
  loss is their entropy. Stronger than ``log V`` (a uniform guess), which is never lower. It ignores the
  unmasked words too, so a text-only language model already beats it: "learned" says the head learned the
  language, the ablation says whether it uses the image;
- ``itm``: the rate of mismatched pairs ``p`` among the evaluation pairs; its loss is the binary entropy
  ``H(p)`` (``log 2`` nats at VOLTA's 50% negatives);
- ``mrc_kl``: the mean detector distribution of the masked regions; its loss is the mean KL from each
  region's distribution to it (the constant that minimises that mean);
- ``mrc_xe``: the detector's classes on the masked regions, counted with their confidences (the weights of
  the MRC-XE loss); its loss is their confidence-weighted cross-entropy;
- ``mrfr``: the mean feature of the masked regions; its loss is their variance per dimension.

``verdicts`` calls an objective ``learned`` when its evaluation loss lies below its chance level by at least
``LEARNED_MARGIN`` of it (``loss <= (1 - margin) * chance``), else ``not learned``; an objective without
targets in the evaluation data (MLM in a vision-only stage) is left out. Since the chance level is the best
any input-blind prediction scores on these very targets, a model that ignores its input (an untrained one, or
one that learned only the prior) never lies below it (up to how the batches weight their targets), so any gain
says the model reads its input; the 5% margin asks for a clear one. Where most targets cannot be predicted
from any input (MRC targets of clutter regions, whose detector distributions are noise in the synthetic
worlds), even a model that learned everything learnable gains only a part of the chance loss.

The targets come from ``evaluation_targets``: the same masking draws as the evaluation's
(``jaxvl.pretrain.trainer.pretrain_evaluation``: key ``fold_in(key(seed), i)`` for batch ``i``, split as
``pretraining_loss`` splits it), so model and baseline are scored on the same masked tokens and regions.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import jax
import numpy as np

LEARNED_MARGIN = 0.05
"""An objective is ``learned`` when its evaluation loss is at most ``(1 - LEARNED_MARGIN) x`` its chance level."""

OBJECTIVES = {"mlm": "MLM", "mrc_kl": "MRC-KL", "mrc_xe": "MRC-XE", "mrfr": "MRFR", "itm": "ITM"}
BASELINES = {
    "mlm": "unigram frequencies of the masked tokens",
    "mrc_kl": "mean class distribution of the masked regions",
    "mrc_xe": "confidence-weighted class prior of the masked regions",
    "mrfr": "mean feature of the masked regions",
    "itm": "rate of mismatched pairs",
}
Targets = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------ targets


def evaluation_targets(batches: Sequence[Mapping[str, Any]], seed: int, ocfg: Any, vocab_size: int,
                       add_global: str | None, **overrides: Any) -> list[Targets]:
    """The targets of each evaluation batch under the evaluation's masking draws (module doc), as numpy:
    ``token_labels`` [B, T] (-1: no target), ``region_labels`` [B, L] (1: a masked region), ``is_mismatched``
    [B], ``original_features`` [B, L, D] and, when the data has them, ``cls_prob`` [B, L, K+1], ``objects_id`` /
    ``objects_conf`` [B, L]. ``overrides``: ``mask_batch``'s ``token_prob`` / ``region_prob`` / ``overlap_threshold``
    (a sweep member's)."""
    from jaxvl.pretrain.loss import mask_batch

    # one compiled program (op by op, the first batch compiled ~100 small programs: seconds on CPU)
    masked = jax.jit(mask_batch, static_argnums=(2, 3, 4))
    out = []
    for i, batch in enumerate(batches):
        mask_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(seed), i))
        _, targets = masked(mask_key, dict(batch), ocfg, vocab_size, add_global, **overrides)
        out.append({k: np.asarray(jax.device_get(v)) for k, v in targets.items()})
    return out


# --------------------------------------------------------------------------------------------- chance levels


def _batch_mean(values: Sequence[np.ndarray]) -> float | None:
    """Mean over batches of each batch's mean (the evaluation's averaging); batches without targets count 0,
    as ``_mean_over_targets`` makes them. None when no batch has a target."""
    if not any(v.size for v in values):
        return None
    return float(np.mean([v.mean() if v.size else 0.0 for v in values]))


def mlm_chance(token_labels: Sequence[np.ndarray]) -> float | None:
    """Loss (nats) of predicting every masked token from the masked tokens' unigram frequencies: per batch the
    mean of ``-log q(token)``, averaged over batches. ``token_labels`` [B, T] per batch, -1 = no target."""
    targets = [lab[lab >= 0] for lab in token_labels]
    if not any(t.size for t in targets):
        return None
    ids, counts = np.unique(np.concatenate(targets), return_counts=True)
    logq = dict(zip(ids.tolist(), np.log(counts / counts.sum()).tolist(), strict=True))
    return _batch_mean([-np.array([logq[t] for t in batch.tolist()]) for batch in targets])


def itm_chance(is_mismatched: Sequence[np.ndarray]) -> float | None:
    """Loss (nats) of predicting "mismatched" with the pairs' mismatch rate ``p``: per batch the mean binary
    cross-entropy, averaged over batches (``H(p)`` when batches are equal in size). None when no pair is
    mismatched (objective 2: no ITM) or every pair is."""
    labels = [np.asarray(m, np.float64) for m in is_mismatched]
    p = float(np.concatenate(labels).mean())
    if p <= 0.0 or p >= 1.0:
        return None
    return _batch_mean([-(m * math.log(p) + (1 - m) * math.log(1 - p)) for m in labels])


def mrc_kl_chance(cls_prob: Sequence[np.ndarray], region_labels: Sequence[np.ndarray]) -> float | None:
    """Loss (nats) of predicting the masked regions' mean detector distribution ``m``: per batch the mean of
    ``KL(p || m)`` over masked regions (``region_labels == 1``), averaged. ``cls_prob`` [B, L, C] per batch."""
    picked = [p[lab == 1].astype(np.float64) for p, lab in zip(cls_prob, region_labels, strict=True)]
    if not any(len(p) for p in picked):
        return None
    m = np.concatenate(picked).mean(0)
    logm = np.log(np.where(m > 0, m, 1.0))

    def kl(p: np.ndarray) -> np.ndarray:
        return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - logm), 0.0), axis=-1)

    return _batch_mean([kl(p) for p in picked])


def mrc_xe_chance(objects_id: Sequence[np.ndarray], objects_conf: Sequence[np.ndarray],
                  region_labels: Sequence[np.ndarray]) -> float | None:
    """Loss (nats) of predicting the class prior ``q`` (the masked regions' detector classes counted with their
    confidences, which minimises the MRC-XE loss): per batch the mean of ``-conf * log q(class)`` over masked
    regions, averaged. ``objects_id`` / ``objects_conf`` [B, L] per batch (-1 / 0 on padding)."""
    ids = [i[lab == 1] for i, lab in zip(objects_id, region_labels, strict=True)]
    conf = [np.where(i >= 0, c, 0.0)[lab == 1] for i, c, lab in zip(objects_id, objects_conf, region_labels,
                                                                   strict=True)]
    if not any(len(i) for i in ids):
        return None
    all_ids, all_conf = np.maximum(np.concatenate(ids), 0), np.concatenate(conf).astype(np.float64)
    weight = np.bincount(all_ids, weights=all_conf)
    if weight.sum() <= 0:
        return None
    q = weight / weight.sum()
    logq = np.log(np.where(q > 0, q, 1.0))
    return _batch_mean([-c * logq[np.maximum(i, 0)] for i, c in zip(ids, conf, strict=True)])


def mrfr_chance(features: Sequence[np.ndarray], region_labels: Sequence[np.ndarray]) -> float | None:
    """Loss of predicting the masked regions' mean feature: per batch the squared error summed over masked
    regions and dims / (regions x D), averaged. ``features`` [B, L, D] per batch."""
    picked = [f[lab == 1].astype(np.float64) for f, lab in zip(features, region_labels, strict=True)]
    if not any(len(f) for f in picked):
        return None
    mean = np.concatenate(picked).mean(0)
    return _batch_mean([((f - mean) ** 2).mean(-1) for f in picked])


def chance_levels(targets: Sequence[Targets], objectives: Collection[str] = tuple(OBJECTIVES)) -> dict[str, float]:
    """{objective: chance level} for each of ``objectives`` with targets in ``targets``
    (``evaluation_targets``); an objective whose data the batches lack (no ``cls_prob``) is left out."""
    regions = [t["region_labels"] for t in targets]
    fns = {
        "mlm": lambda: mlm_chance([t["token_labels"] for t in targets]),
        "itm": lambda: itm_chance([t["is_mismatched"] for t in targets]),
        "mrc_kl": lambda: mrc_kl_chance([t["cls_prob"] for t in targets], regions),
        "mrc_xe": lambda: mrc_xe_chance([t["objects_id"] for t in targets], [t["objects_conf"] for t in targets],
                                        regions),
        "mrfr": lambda: mrfr_chance([t["original_features"] for t in targets], regions),
    }
    needs = {"mrc_kl": "cls_prob", "mrc_xe": "objects_id"}
    out = {}
    for name in objectives:
        if targets and needs.get(name, "region_labels") in targets[0]:
            value = fns[name]()
            if value is not None:
                out[name] = value
    return out


# ------------------------------------------------------------------------------------------------ verdicts


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One objective of one run: its final evaluation ``loss``, its ``chance`` level, ``gain`` = 1 - loss / chance
    (the fraction of the chance loss removed) and ``verdict`` (``learned`` / ``not learned``)."""

    member: str
    objective: str
    loss: float
    chance: float
    gain: float
    verdict: str

    @property
    def learned(self) -> bool:
        return self.verdict == "learned"


def verdicts(losses: Mapping[str, float], chance: Mapping[str, float], trained: Collection[str],
             member: str = "", margin: float = LEARNED_MARGIN) -> list[Verdict]:
    """A ``Verdict`` per objective in ``trained`` (``OBJECTIVES`` order) that has both an evaluation loss and a
    chance level: ``learned`` when ``loss <= (1 - margin) * chance``."""
    out = []
    for name in OBJECTIVES:
        if name not in trained or name not in losses or name not in chance:
            continue
        loss, level = float(losses[name]), float(chance[name])
        gain = 1.0 - loss / level if level > 0 else 0.0
        out.append(Verdict(member, name, loss, level, gain,
                           "learned" if level > 0 and loss <= (1.0 - margin) * level else "not learned"))
    return out


def learned_table(rows: Sequence[Verdict], untrained: Mapping[str, Collection[str]] | None = None,
                  margin: float = LEARNED_MARGIN, step: int | None = None) -> str:
    """Markdown: a preface saying what chance means and the margin, then one row per verdict (with a member
    column when ``rows`` come from several members); ``untrained`` {member: objectives it did not train} adds
    a line each."""
    members = sorted({r.member for r in rows}, key=[r.member for r in rows].index)
    several = len(members) > 1 or bool(members and members[0])
    at = f" at step {step}" if step is not None else ""
    baselines = "; ".join(f"{OBJECTIVES[k]}: {v}" for k, v in BASELINES.items())
    preface = (f"Learned above chance?{at} The final evaluation loss (nats) of each trained objective beside its "
               f"chance level, the loss of the best input-blind prediction fit to the evaluation targets ({baselines})."
               f" learned: eval loss <= {1 - margin:g} x chance; gain = 1 - eval loss / chance.")
    lines = [textwrap.fill(preface, 120, break_on_hyphens=False), ""]
    header = ["member"] * several + ["objective", "eval loss", "chance", "gain", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        cells = [r.member] * several + [OBJECTIVES[r.objective], f"{r.loss:.4f}", f"{r.chance:.4f}", f"{r.gain:+.1%}",
                                        r.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    for member, names in (untrained or {}).items():
        if names:
            who = f"{member}: " if member else ""
            judged = ", ".join(OBJECTIVES[n] for n in OBJECTIVES if n in names)
            lines.append(f"\n{who}not trained, so not judged: {judged}.")
    return "\n".join(lines)
