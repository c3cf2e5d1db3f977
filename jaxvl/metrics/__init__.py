"""Caption metrics with coco-caption's numbers, in pure Python/numpy (METEOR through pycocoevalcap's Java jar), and
retrieval recall as VOLTA computes it.

- :mod:`~jaxvl.metrics.bleu`: corpus BLEU-1..4 (closest reference length, coco-caption's smoothing).
- :mod:`~jaxvl.metrics.rouge`: ROUGE-L (LCS F-measure, beta 1.2).
- :mod:`~jaxvl.metrics.cider`: CIDEr-D, and :class:`CiderD` with the df of a fixed corpus for SCST rewards.
- :mod:`~jaxvl.metrics.meteor`: METEOR 1.5 when Java and ``pycocoevalcap`` (the ``cocoeval`` extra) are present;
  SPICE is reported as unavailable.
- :mod:`~jaxvl.metrics.ptb`: coco-caption's tokenisation (PTBTokenizer + punctuation removal) without Java.
- :mod:`~jaxvl.metrics.retrieval`: image/text retrieval R@1/5/10, median and mean rank as VOLTA's
  ``eval_retrieval.py`` (:func:`score_matrix_metrics`, :func:`retrieval_metrics` from streamed ranks).
- :mod:`~jaxvl.metrics.bootstrap`: percentile-bootstrap intervals of means (ablation, probes, fine-tuning).
- :mod:`~jaxvl.metrics.evaluate`: :func:`evaluate_captions` (raw captions -> all scores) and :func:`format_table`.

Each scorer equals pycocoevalcap 1.2's ``Bleu``/``Rouge``/``Cider`` to 1e-6 on the same tokenised captions.
"""

from jaxvl.metrics.bleu import corpus_bleu
from jaxvl.metrics.cider import CiderD, cider_d, document_frequency
from jaxvl.metrics.evaluate import METRICS, ORT_KARPATHY_TEST, evaluate_captions, format_table
from jaxvl.metrics.meteor import SPICE_UNAVAILABLE, MetricUnavailable, meteor_score, meteor_unavailable_reason
from jaxvl.metrics.ptb import ptb_tokenize
from jaxvl.metrics.retrieval import retrieval_metrics, score_matrix_metrics
from jaxvl.metrics.rouge import lcs_length, rouge_l

__all__ = [
    "METRICS", "ORT_KARPATHY_TEST", "SPICE_UNAVAILABLE", "CiderD", "MetricUnavailable", "cider_d", "corpus_bleu",
    "document_frequency", "evaluate_captions", "format_table", "lcs_length", "meteor_score",
    "meteor_unavailable_reason", "ptb_tokenize", "retrieval_metrics", "rouge_l", "score_matrix_metrics",
]
