"""Verdicts of the cross-modal ablation: an effect read against its matched control and a measured floor.

A condition's *effect* is its loss change minus its control's (``jaxvl.ablation.controls``: as much
input removed, none of it aligned with the phrase), per example, averaged with a paired 95% bootstrap
interval (the report's resamples): ``effect = Δ condition − Δ control`` with ``Δ = loss − loss(none)``,
in bits. The verdict (``verdict``):

- ``found``: the effect's interval lies above ``EFFECT_FLOOR_BITS`` (the model uses the aligned input:
  removing it costs more than removing as much other input);
- ``opposite``: the interval lies below ``-EFFECT_FLOOR_BITS`` (removing the aligned input helps);
- ``not found``: otherwise, including every interval that excludes zero but not the floor.

An interval that merely excludes zero is not a finding: on worlds with nothing planted, tiny models
shift the loss by a few hundredths of a bit with tight intervals (distribution shift, memorised
captions), and the floor is measured to lie above those (``EFFECT_FLOOR_BITS``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EFFECT_FLOOR_BITS = 0.16
"""The smallest effect (bits) a verdict calls ``found`` / ``opposite``: twice the largest effect measured
where nothing is planted, rounded up to 0.01 bit.

Measured by ``scripts/calibrate_verdict_floor.py --seeds 5`` (``tests/verdict_worlds.py``): tiny UNITERs,
1200 steps, on 5 worlds with nothing planted under each of 3 recipes (the demo's MRC-KL and MRC-XE
members, VOLTA's default objective): 15 models, 60 effects of vis4lang object / all (MLM) and lang4vis
phrase / all (on the head each trained), IoT > 0.5, 128 phrases each. Largest |effect| 0.076 bits
(MRC-XE, lang4vis all, -0.076 [-0.112, -0.044]), so the floor is 2 x 0.076 = 0.151 -> 0.16; the
largest interval bound beyond zero was 0.044 (the smallest floor with no false verdict there) and the
largest |bound| 0.116. On worlds with both directions planted, the same recipes' effects have lower
bounds of 1.37 bits and more (the demo's recipes) and 0.20 bits (vision -> language under VOLTA's
default, which learns no language -> vision in 1200 steps). The floor is a property of these models
and data: for other models and data, re-measure (the script's recipes and worlds) and set
``ablate``'s ``verdict_floor``."""

_LABELS = {"mlm": "MLM", "mrc_kl": "MRC-KL", "mrc_xe": "MRC-XE", "mrc_xe_vg": "MRC-XE-VG"}


def verdict(low: float | None, high: float | None, floor: float = EFFECT_FLOOR_BITS) -> str | None:
    """``found`` / ``opposite`` / ``not found`` for an effect's interval [low, high] (bits); None without one."""
    if low is None or high is None:
        return None
    if low > floor:
        return "found"
    if high < -floor:
        return "opposite"
    return "not found"


def as_expected(found: str | None, expected: str | None) -> str:
    """``yes`` / ``no``: whether verdict ``found`` is the ``expected`` one; ``–`` when either is missing."""
    if found is None or expected is None:
        return "–"
    return "yes" if found == expected else "no"


def on_trained_heads(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a table or plot may show: every row but those read on a head the model never trained
    (``trained_head`` False, ``jaxvl.ablation.report.tidy_rows``), whose numbers are no result."""
    return [r for r in rows if r.get("trained_head", True) is not False]


def _bits(mean: float | None, low: float | None = None, high: float | None = None) -> str:
    if mean is None:
        return "–"
    return f"{mean:+.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def _row(rows: Sequence[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)


def _notes(threshold: float, floor: float, expected: bool) -> list[str]:
    """The lines above the verdict table: what its columns mean."""
    notes = [f"Verdicts at IoT>{threshold:g}, in bits: Δ = loss − loss(none), effect = Δ condition − Δ control "
             "with its paired 95%", f"bootstrap interval over n examples; found: the interval lies above "
             f"{floor:g} bits, opposite: below −{floor:g}, else not found."]
    if expected:
        notes.append("expected: the verdict the data's planted structure predicts; as expected?: whether it is that.")
    return notes + [""]


def verdict_table(rows: Sequence[dict[str, Any]], threshold: float = 0.5,
                  lang4vis_metrics: Sequence[str] = ("mrc_kl",), floor: float = EFFECT_FLOOR_BITS,
                  expected: Mapping[tuple[str, str], str] | None = None) -> str:
    """Markdown, at most 120 characters a line for model names up to 16: per model and condition (vis4lang
    ``object`` / ``all`` on MLM, lang4vis ``phrase`` / ``all`` on each of ``lang4vis_metrics`` read on a head
    the model trained, at IoT > ``threshold``, subset ``all``), the examples, the mean Δ condition and Δ
    control, the effect with its 95% interval and the verdict (the deltas' intervals are in the rows).
    ``expected``: (task, condition) -> the verdict the data predicts, adding the columns ``expected`` and
    ``as expected?``. ``rows``: ``jaxvl.ablation.report.tidy_rows``; ``floor``: the one they were judged
    with. Conditions without a control are left out ("" when none has one); a note counts the examples
    whose control fell short of units."""
    entries = [("vis4lang", c, "mlm") for c in ("object", "all")]
    entries += [("lang4vis", c, m) for m in lang4vis_metrics for c in ("phrase", "all")]
    head = ["model", f"condition (IoT>{threshold:g})", "n", "Δ condition", "Δ control", "effect [95%]", "verdict"]
    head += ["expected", "as expected?"] if expected is not None else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    short: dict[str, str] = {}
    shown = on_trained_heads(rows)
    for model in dict.fromkeys(r["model"] for r in shown):
        for task, cond, metric in entries:
            thr = None if (task, cond) == ("vis4lang", "all") else threshold
            row = _row(shown, model=model, task=task, condition=cond, metric=metric, subset="all", threshold=thr)
            if row is None or row["verdict"] is None:
                continue
            cells = [model, f"{_LABELS[metric]} {cond}", str(row["count"]), _bits(row["delta"]),
                     _bits(row["control_delta"]), _bits(row["effect"], row["effect_low"], row["effect_high"]),
                     row["verdict"]]
            if expected is not None:
                want = expected.get((task, cond))
                cells += [want or "–", as_expected(row["verdict"], want)]
            lines.append("| " + " | ".join(cells) + " |")
            if row["control_shortfall"]:
                short[f"{task} {cond}"] = f"{row['control_shortfall']} of {row['count']}"
    if len(lines) == 2:
        return ""
    tail = ["", "Controls: object / phrase remove as many random regions / sub-words not aligned with the phrase;",
            "all removes every unit except the aligned ones (an almost empty modality, without the phrase's "
            "information)."]
    tail += [f"The {name} control had too few non-aligned units to match its condition in {n} examples."
             for name, n in short.items()]
    return "\n".join(_notes(threshold, floor, expected is not None) + lines + tail) + "\n"
