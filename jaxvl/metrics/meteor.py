"""METEOR 1.5 through pycocoevalcap's ``Meteor`` (Java ``meteor-1.5.jar -l en -norm``), and SPICE's status.

METEOR has no pure-Python equivalent that gives coco-caption's numbers (WordNet synonyms, the paraphrase
table and the fragmentation penalty live in the jar), so it runs only when the optional extra is installed
(``pip install pycocoevalcap``, which ships the jar and ``data/paraphrase-en.gz``) and ``java`` is on the
``PATH``. :func:`meteor_unavailable_reason` says why it cannot run; :func:`meteor_score` raises
:class:`MetricUnavailable` with that reason.

SPICE is never computed: its first run downloads Stanford CoreNLP 3.6.0, which no project machine can reach,
and no package ships those jars (reference/captioning.md section 3).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence

import numpy as np

from jaxvl.metrics.common import check_aligned

SPICE_UNAVAILABLE = ("SPICE is not computed: it needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads on "
                     "first use and no package ships")


class MetricUnavailable(RuntimeError):
    """A metric that needs software this machine lacks (the message says what)."""


def _meteor_dir() -> str | None:
    try:
        spec = importlib.util.find_spec("pycocoevalcap.meteor.meteor")
    except ModuleNotFoundError:
        return None
    return None if spec is None or spec.origin is None else os.path.dirname(spec.origin)


def meteor_unavailable_reason() -> str | None:
    """``None`` when METEOR can run here, else a sentence saying what is missing."""
    directory = _meteor_dir()
    if directory is None:
        return "METEOR unavailable: pycocoevalcap is not installed (pip install pycocoevalcap)"
    for name in ("meteor-1.5.jar", os.path.join("data", "paraphrase-en.gz")):
        if not os.path.isfile(os.path.join(directory, name)):
            return f"METEOR unavailable: {os.path.join(directory, name)} is missing from the pycocoevalcap install"
    if shutil.which("java") is None:
        return "METEOR unavailable: no `java` on PATH (METEOR 1.5 is a Java program)"
    return None


def meteor_score(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
    """Corpus and per-image METEOR from one METEOR 1.5 process (started and stopped here; about 10 s of start-up).

    Args:
      candidates: ``N`` tokenised captions, one per image.
      references: ``N`` non-empty lists of tokenised reference captions.

    Returns:
      ``(corpus, per_image)``; the corpus score is METEOR's own aggregate of the per-image statistics, not the
      mean of ``per_image``. ``|||`` (METEOR's field separator) is removed from every caption, as pycocoevalcap
      does for candidates only.

    Raises:
      MetricUnavailable: pycocoevalcap, its jar or Java is missing.
    """
    check_aligned(candidates, references, "METEOR")
    reason = meteor_unavailable_reason()
    if reason is not None:
        raise MetricUnavailable(reason)
    from pycocoevalcap.meteor.meteor import Meteor

    def clean(caption: str) -> str:
        return " ".join(caption.replace("|||", " ").split())

    res = {i: [clean(c)] for i, c in enumerate(candidates)}
    gts = {i: [clean(r) for r in refs] for i, refs in enumerate(references)}
    scorer = Meteor()
    try:
        corpus, per_image = scorer.compute_score(gts, res)
    except (ValueError, OSError) as e:  # an empty line from, or a broken pipe to, a METEOR process that died
        scorer.lock.release()  # compute_score still holds it; Meteor.__del__ takes it to stop the process
        code = scorer.meteor_p.poll()
        raise RuntimeError(f"the METEOR process ({' '.join(scorer.meteor_cmd)}) stopped answering "
                           f"(exit code {code})") from e
    finally:
        del scorer  # its __del__ stops the Java process
    return float(corpus), np.asarray(per_image, np.float64)
