"""coco-caption's evaluation of a set of generated captions, and the results table in the ORT paper's layout.

:func:`evaluate_captions` tokenises predictions and references with :func:`jaxvl.metrics.ptb.ptb_tokenize`
(lower-case, PTB-like splitting, coco-caption's punctuation removal) and scores them as ``COCOEvalCap`` does:
BLEU-1..4 (corpus, closest reference length), METEOR 1.5 (Java, when available), ROUGE-L, CIDEr-D with the df
of the evaluated references, and SPICE (never computed: ``None``). Scores are fractions (CIDEr-D on its
native 0..10 scale); :func:`format_table` shows them x100, one decimal, as papers do.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

from jaxvl.metrics.bleu import corpus_bleu
from jaxvl.metrics.cider import cider_d
from jaxvl.metrics.meteor import SPICE_UNAVAILABLE, meteor_score, meteor_unavailable_reason
from jaxvl.metrics.ptb import ptb_tokenize
from jaxvl.metrics.rouge import rouge_l

log = logging.getLogger(__name__)

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")
# (column heading, result key) of the ORT paper's table (Herdade et al. 2019, Table 2 / the README model zoo).
TABLE_COLUMNS = (("B-1", "BLEU-1"), ("B-4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE-L"),
                 ("CIDEr-D", "CIDEr-D"), ("SPICE", "SPICE"))


def _row(b1: float, b4: float, meteor_: float, rouge: float, cider: float, spice: float) -> dict[str, float]:
    return {"BLEU-1": b1 / 100, "BLEU-4": b4 / 100, "METEOR": meteor_ / 100, "ROUGE-L": rouge / 100,
            "CIDEr-D": cider / 100, "SPICE": spice / 100}


# What ORT reports on the 5000 Karpathy test images (reference/captioning.md section 4), as fractions.
ORT_KARPATHY_TEST: dict[str, dict[str, float]] = {
    "Up-Down + LSTM": _row(75.6, 32.9, 26.5, 55.4, 106.6, 19.9),
    "Up-Down + Transformer": _row(75.0, 32.8, 27.5, 55.6, 111.0, 20.9),
    "ORT (beam 1)": _row(75.6, 33.5, 27.6, 56.0, 112.6, 20.8),
    "ORT (beam 2)": _row(76.6, 35.5, 28.0, 56.6, 115.4, 21.2),
    "ORT + SCST (beam 5)": _row(80.5, 38.6, 28.7, 58.4, 128.3, 22.6),
}


def _aligned(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
             ) -> tuple[list[str], list[list[str]]]:
    """Tokenised candidates and references in the references' image order; errors name the image id."""
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        raise ValueError(f"predictions and references must cover the same images: {len(missing)} images without a "
                         f"prediction (e.g. {missing[:5]}), {len(extra)} predictions without references "
                         f"(e.g. {extra[:5]})")
    if not references:
        raise ValueError("no images to evaluate")
    candidates, refs = [], []
    for image_id, image_refs in references.items():
        pred = predictions[image_id]
        if not isinstance(pred, str):
            raise TypeError(f"prediction for image {image_id!r} is {type(pred).__name__}, expected str")
        if isinstance(image_refs, str) or not len(image_refs):
            raise ValueError(f"references for image {image_id!r} must be a non-empty list of str, got {image_refs!r}")
        for j, ref in enumerate(image_refs):
            if not isinstance(ref, str):
                raise TypeError(f"reference {j} of image {image_id!r} is {type(ref).__name__}, expected str")
        candidates.append(ptb_tokenize(pred))
        refs.append([ptb_tokenize(r) for r in image_refs])
    return candidates, refs


def evaluate_captions(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
                      use_meteor: bool = True) -> dict[str, float | None]:
    """coco-caption scores of ``predictions`` (image id -> caption) against ``references`` (image id -> captions).

    Both are raw text; they are tokenised here. Returns the keys of :data:`METRICS`: ``BLEU-1``..``BLEU-4``,
    ``METEOR`` (``None`` when ``use_meteor`` is False or Java/pycocoevalcap are missing; the reason is logged),
    ``ROUGE-L``, ``CIDEr-D`` and ``SPICE`` (always ``None``).
    """
    candidates, refs = _aligned(predictions, references)
    bleus, _ = corpus_bleu(candidates, refs)
    results: dict[str, float | None] = {f"BLEU-{k + 1}": float(b) for k, b in enumerate(bleus)}
    results["METEOR"] = None
    if use_meteor:
        reason = meteor_unavailable_reason()
        if reason is None:
            results["METEOR"] = meteor_score(candidates, refs)[0]
        else:
            log.warning("%s; reporting METEOR as None", reason)
    results["ROUGE-L"] = rouge_l(candidates, refs)[0]
    results["CIDEr-D"] = cider_d(candidates, refs)[0]
    results["SPICE"] = None
    log.info("%s", SPICE_UNAVAILABLE)
    return {k: results[k] for k in METRICS}


def format_table(results: Mapping[str, float | None] | Mapping[str, Mapping[str, float | None]], *,
                 name: str = "jaxvl") -> str:
    """A markdown table with the ORT paper's columns (B-1, B-4, METEOR, ROUGE-L, CIDEr-D, SPICE), values x100.

    ``results`` is one result dict (:func:`evaluate_captions`; its row is called ``name``) or a mapping from row
    names to result dicts (e.g. ``{**ORT_KARPATHY_TEST, "ours": results}``). ``None`` prints as ``n/a``.
    """
    rows = results if results and all(isinstance(v, Mapping) for v in results.values()) else {name: results}
    lines = ["| Model | " + " | ".join(h for h, _ in TABLE_COLUMNS) + " |",
             "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for row_name, row in rows.items():
        cells = []
        for _, key in TABLE_COLUMNS:
            if key not in row:
                raise KeyError(f"results for {row_name!r} have no {key!r} (keys: {sorted(row)})")
            value = row[key]
            cells.append("n/a" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
