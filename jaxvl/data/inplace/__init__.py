"""Reading VOLTA's feature stores in place: Grain random-access sources over the user's LMDBs, no prepare step.

A user points a config's ``data.dataset`` at the store with a source string::

    jaxvl pretrain --config pretrain:uniter --workdir runs/uniter \\
        --config.data.dataset=volta-cc:data/conceptual_captions --config.data.vocab_file=bert/vocab.txt
    jaxvl ablate --config ablate --workdir runs/ablation --config.checkpoints=runs/uniter \\
        --config.data.dataset=flickr30k-entities:data/flickr30k_entities,features=data/flickr30k/flickr30k_feat.lmdb \\
        --config.data.vocab_file=bert/vocab.txt --config.labelmatch.objects_vocab=data/objects_vocab.txt

``resolve_dataset`` hands a source string that ``IN_PLACE`` lists for the task's dataset kind through unchanged
(nothing is written and no ``prepare_dir`` is made), and ``open_split`` opens the split here instead of a TFDS
directory. Converting first is still one command away: ``jaxvl prepare --source volta-cc:...`` writes the
ArrayRecord dataset, and ``data.dataset`` then names its version directory. Sources read in place:

- ``volta-cc:LMDB[,val=LMDB][,skip_bad=1][,num_regions=R,...]`` -> ``PretrainPairs`` records
  (``jaxvl.data.inplace.cc``): VOLTA's Conceptual Captions LMDBs, ``training_feat_all.lmdb`` as ``train`` and
  ``validation_feat_all.lmdb`` as ``val``, each a single file (``-lock`` beside it) or a directory; values
  msgpack (tensorpack 0.9.4) or pickle (tensorpack >= 0.11). Read by ``jaxvl pretrain`` (and by the probes,
  which open ``PretrainPairs`` data the same way).
- ``flickr30k-entities:ROOT,features=STORE[,split=val][,skip_bad=1]`` -> ``AblationPhrases`` records
  (``jaxvl.data.inplace.flickr30k``): the split's phrases from Flickr30k Entities' text files, each with its
  image's regions looked up in VOLTA's per-image feature LMDB (``flickr30k_feat.lmdb``, a directory) or a
  directory of ``<image_id>.npz`` files. Read by ``jaxvl ablate``. A TSV store has no index, so such a source
  string is still prepared on first use.

What is the same as a prepared dataset: ``source[i]`` is the dict the prepared split stores for the same record,
at the region sizes ``jaxvl prepare`` would read off the same files (``num_regions=``, ``probe=``, ...), so
``PretrainTransform`` and everything after it are unchanged; the tokenizer comes from ``data.vocab_file`` as for
the prepared dataset (neither carries a word list). What differs: the record order is the store's own, not
TFDS's shuffled one, so batches differ from a run on the prepared copy (the global shuffle still runs), and the
store is read as it is, so it must stay where the source string says (local or shared disk: LMDB memory-maps it).

Processes: each LMDB environment opens lazily in the process that reads it (read-only, ``lock=False``) and is
never pickled: Grain worker processes, forked or spawned, open their own. The key list (``__keys__``) is read
once per open, and tensorpack's numbered keys are held as their count. The source is a plain sequence, so the
pipeline's global shuffle, per-host shards (host ``p`` of ``P`` reads only its own rows) and iterator
``get_state`` / ``set_state`` work as on ArrayRecord: deterministic and resumable.

Bad input: opening refuses a missing, empty, truncated or non-LMDB file and a bad key list, and decodes the first
records of every split (``probe=``, default 100) for the region sizes, all before anything compiles. Every
record is checked when it is read: a bad one raises ``BadRecord`` naming the file and the key (the CLI prints it
as one line). With ``skip_bad`` (the source option ``skip_bad=1``, or ``open_split(..., skip_bad=True)``) a bad
pretraining pair is logged once, counted (``source.skipped``) and replaced by the next good record
(``common.BadRecords``); an ablation phrase whose image has bad features is left out when the source opens
(an evaluation set cannot repeat a phrase in its place), counted in ``info.metadata["skipped"]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from jaxvl.data.inplace.cc import open_volta_cc
from jaxvl.data.inplace.common import InPlaceInfo
from jaxvl.data.inplace.flickr30k import open_flickr30k, reads_indexed_features
from jaxvl.data.sources.base import ParsedSource


@dataclasses.dataclass(frozen=True)
class InPlaceEntry:
    """A source read in place: the TFDS name of the dataset kind it stands for, its opener
    ``(parsed source, split, skip_bad) -> (source, info)``, and which of its source strings it reads (the others
    are prepared on first use, as before)."""

    kind: str
    opener: Callable[..., tuple[Sequence[dict[str, Any]], InPlaceInfo]]
    reads: Callable[[ParsedSource], bool] = lambda src: True


IN_PLACE: dict[str, InPlaceEntry] = {
    "volta-cc": InPlaceEntry("jaxvl_pretrain_pairs", open_volta_cc),
    "flickr30k-entities": InPlaceEntry("jaxvl_ablation_phrases", open_flickr30k, reads_indexed_features),
}
"""Source name -> what it is read in place as (``kind``: the builder name of the prepared dataset it replaces)."""


def _source_name(text: str) -> str:
    return text.partition(":")[0].strip()


def is_in_place(text: str) -> bool:
    """Whether ``text`` is a source string of a source that is read in place (checked no further)."""
    return _source_name(text) in IN_PLACE


def reads_in_place(text: str, kind: type) -> bool:
    """Whether a task reading datasets of builder class ``kind`` (e.g. ``PretrainPairs``) reads the source string
    ``text`` in place. ``SourceError`` for a bad source string."""
    from jaxvl.data.sources import parse_source

    entry = IN_PLACE.get(_source_name(text))
    return entry is not None and entry.kind == kind.name and entry.reads(parse_source(text))


def open_in_place(text: str, split: str, skip_bad: bool = False) -> tuple[Sequence[dict[str, Any]], InPlaceInfo]:
    """Split ``split`` of the source string ``text`` read in place, and its ``InPlaceInfo`` (module doc).

    Raises ``SourceError`` for a bad source string or unusable files, ``ValueError`` for a split the source does
    not have, ``BadRecord`` for a bad record met while opening.
    """
    from jaxvl.data.sources import parse_source

    parsed = parse_source(text)
    entry = IN_PLACE.get(parsed.name)
    if entry is None:
        raise ValueError(f"{text!r}: source {parsed.name!r} is not read in place (those that are: "
                         f"{', '.join(IN_PLACE)}); prepare it with `jaxvl prepare --source`")
    return entry.opener(parsed, split, skip_bad)


__all__ = ["IN_PLACE", "InPlaceEntry", "InPlaceInfo", "is_in_place", "open_in_place", "reads_in_place"]
