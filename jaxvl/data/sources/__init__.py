"""The data sources of ``jaxvl prepare``: a source string -> the TFDS builders that write it.

A source string is ``NAME[:ARGS]``; for the file sources ARGS is a path followed by ``key=value``
options, all separated by commas (so paths cannot contain commas)::

    volta-cc:data/conceptual_captions/training_feat_all.lmdb,val=data/conceptual_captions/validation_feat_all.lmdb
    tsv:flickr30k_obj36.tsv,captions=caption_train.json,num_regions=36
    flickr30k-entities:data/flickr30k_entities,features=data/flickr30k/flickr30k_feat.lmdb,split=test

Sources (``SOURCES`` maps each name to its builder factory; one small function per source, in
``pretrain``, ``ablation`` and ``captions``):

- ``synthetic[:key=value,...]``: the embedded synthetic world (``jaxvl.data.builders.synthetic``);
- ``volta-cc:LMDB[,val=LMDB][,skip_bad=1]``: pretraining pairs from VOLTA's Conceptual Captions LMDBs
  (``jaxvl.data.readers.volta_lmdb.ConceptualCaptionsLMDB``), ``train`` from LMDB and ``val`` from
  ``val=``. LMDB is an LMDB file or directory, or a directory holding VOLTA's ``training_feat_all.lmdb``
  (and ``validation_feat_all.lmdb``, picked up as ``val`` unless ``val=`` says otherwise). The caption
  of each pair is the one stored in its LMDB record; VOLTA's caption json files are not read.
  ``skip_bad=1`` skips bad records as ``--skip-bad`` does. As a training config's ``data.dataset`` this
  source is read in place, with no prepare step (``jaxvl.data.inplace``); ``jaxvl prepare`` converts it;
- ``tsv:FEATURES.tsv,captions=CAPTIONS.json[,val=VAL.tsv][,val_captions=VAL.json]``: pretraining pairs
  from a bottom-up-attention TSV (``TsvFeatureReader``) and VOLTA's caption json ``{image_id: caption}``
  (a value may be a list of captions: one pair each). A TSV image with no caption is a bad record;
  captions of images the TSV lacks are ignored (their number is logged). ``val_captions`` defaults
  to ``captions``;
- ``flickr30k-entities:ROOT,features=FEATURES[,split=val][,format=lmdb|tsv|npz][,skip_bad=1]``: cross-modal
  ablation phrases (``Flickr30kEntities``) with their image's regions from a per-image feature LMDB
  (``FeatureLMDB``), a TSV (only the split's images are kept in memory) or a directory of
  ``<image_id>.npz`` files (``NpzFeatureReader``); the format is detected unless ``format=`` names it.
  The output split is named after ``split``. A phrase whose image has no features is a bad record
  naming the image id. As an ablation config's ``data.dataset``, with an LMDB or npz feature store, this
  source is read in place (``jaxvl.data.inplace``); a TSV has no index, so it is prepared on first use;
- ``synthetic-captions[:key=value,...]``: the synthetic captioning world
  (``jaxvl.data.builders.captions``): ``WorldConfig`` and ``CaptionWorldConfig`` knobs, ``val_images``,
  ``test_images``, ``max_length``, ``name``; one ``CaptionImages`` dataset with ``train``/``val``/``test``;
- ``coco-karpathy:dataset_coco.json,features=FEATURES[+FEATURES...][,format=lmdb|tsv|npz]``: the
  images of Karpathy's split file (``KarpathyCaptions``) with their regions (``RegionJoin``: per-image
  feature LMDBs, ``<id>.npz`` directories or TSVs, streamed; several stores of one format joined by
  ``+``, e.g. LXMERT's ``train2014_obj36.tsv+val2014_obj36.tsv``) -> ``jaxvl_caption_images`` with
  one split per split of the file. Caption options: ``fold_restval=1|0`` (default 1: restval joins train, as in
  ORT), ``id_key=cocoid|imgid|filename`` (the join id, default cocoid), ``max_length=T`` (16),
  ``count_threshold=N`` (5: words seen N times or fewer in the vocabulary's captions become UNK),
  ``vocab_splits=train|all`` (the captions the vocabulary counts: the training split, default, or
  every split as ORT's ``prepro_labels.py`` does), or ``vocab=VOCAB.json`` (a saved ``CaptionVocab``
  or ORT's ``cocotalk.json``) instead of building one; ``splits=train+val`` writes only those splits
  (the vocabulary still counts the training split). An image without features or with zero valid
  boxes is a bad record naming the image; a split left with no usable image fails naming the split.

Options of every file source:

- ``name=``: the TFDS config name (default: the source and its main file's stem, plus the region
  options given), so that different inputs sit side by side under one ``--out``;
- ``num_regions=R``: regions stored per image (VOLTA uses 36). Default: the most boxes seen among
  the probed records; an image with more boxes keeps its first R (the builders log how many);
- ``feature_dim=D``: require this feature size (default: the first record's);
- ``num_classes=K|none``: detector classes without background (VG: 1600) to require, or ``none`` to
  store no class fields (default: the first record's ``cls_prob`` width - 1, ``none`` without one);
- ``probe=N|all``: how many records per split (default 100) are read up front to size the regions.

Options of the pretraining-pair sources (``synthetic``, ``volta-cc``, ``tsv``; ``jaxvl.data.sources.layout``):

- ``layout=pairs|images``: one TFDS example per (image, caption) pair (default), or an image store
  (``jaxvl.data.imagestore``: each image's regions once, captions referring to them, arrays as raw bytes),
  written as ``<pair dataset name>_images`` and read back as the same pair records;
- ``features_dtype=float32|float16`` (``layout=images`` only): the stored dtype of the region features.

The region spec ``RegionSpec(R, D, K)`` is thus read off the first records before anything is
written; every record must then agree with it (a record that does not is a bad record naming its
file). Bad records raise ``BadRecord``; with ``skip_bad`` they are skipped and counted per kind in
the ``Skips`` of the returned ``Prepared`` (filled while the splits are written; also saved as
``skipped`` in each dataset's ``metadata.json``).
"""

from __future__ import annotations

import dataclasses
import os
import re

from jaxvl.data.builders.scratch import own_temp_dir
from jaxvl.data.sources.ablation import FeatureLookup, flickr30k_entities_source, open_feature_lookup
from jaxvl.data.sources.base import (
    ParsedSource,
    Prepared,
    Skips,
    SourceError,
    SourceFactory,
    bind_split,
    config_name,
    path_stem,
    source_metadata,
)
from jaxvl.data.sources.captions import coco_karpathy_source, synthetic_captions_source
from jaxvl.data.sources.layout import LAYOUT_OPTIONS, LayoutOptions
from jaxvl.data.sources.pretrain import CC_TRAIN_LMDB, CC_VAL_LMDB, synthetic_source, tsv_source, volta_cc_source
from jaxvl.data.sources.regions import (
    DEFAULT_PROBE,
    FEATURE_FORMATS,
    REGION_OPTIONS,
    RegionOptions,
    SpecProbe,
    check_spec,
    feature_format,
    fits_spec,
    skip_or_raise,
)

__all__ = [
    "CC_TRAIN_LMDB", "CC_VAL_LMDB", "DEFAULT_PROBE", "FEATURE_FORMATS", "LAYOUT_OPTIONS", "REGION_OPTIONS", "SOURCES",
    "FeatureLookup", "LayoutOptions", "ParsedSource", "Prepared", "RegionOptions", "Skips", "SourceEntry",
    "SourceError", "SourceFactory", "SpecProbe",
    "bind_split", "build_source", "check_spec", "coco_karpathy_source", "config_name", "feature_format", "fits_spec",
    "flickr30k_entities_source", "open_feature_lookup", "parse_source", "path_stem", "skip_or_raise",
    "source_metadata", "synthetic_captions_source", "synthetic_source", "tsv_source", "volta_cc_source",
]

_OPTION = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)=(.*)", re.S)


@dataclasses.dataclass(frozen=True)
class SourceEntry:
    """A registry entry: the factory ``(parsed, out_dir, skip_bad) -> Prepared`` and how to call it.

    ``options``: the option keys ``parse_source`` accepts (None: the factory parses ``args`` itself);
    ``needs_path``: whether a path must follow the colon.
    """

    factory: SourceFactory
    usage: str
    doc: str
    options: frozenset[str] | None = None
    needs_path: bool = True


def build_source(text: str, out: str, skip_bad: bool = False) -> Prepared:
    """The builders of the source string ``text`` writing under ``out`` (TFDS ``data_dir``).

    Parses the string, opens the inputs and reads the region spec off their first records; nothing
    is written yet (``builder.download_and_prepare()`` does that). Raises ``SourceError`` (a
    ``ValueError``) for a bad source string, ``ValueError`` / ``BadRecord`` for unusable inputs.
    """
    parsed = parse_source(text)
    with own_temp_dir():  # TFDS leaves an empty temp directory per builder of a dataset not yet prepared
        return SOURCES[parsed.name].factory(parsed, os.fspath(out), skip_bad)


def parse_source(text: str) -> ParsedSource:
    """``NAME[:PATH][,key=value,...]`` -> ``ParsedSource``, checked against the source's known options.

    Raises ``SourceError`` naming the problem: an empty string, an unknown source, an unknown,
    repeated or empty option, a second path, a missing or unexpected path. A source whose registry
    entry has ``options=None`` (``synthetic``) gets its ``args`` unparsed.
    """
    text = text.strip()
    name, _, args = text.partition(":")
    name = name.strip()
    if not name:
        raise SourceError(f"empty --source {text!r}; expected NAME[:...], NAME one of {', '.join(SOURCES)}")
    entry = SOURCES.get(name)
    if entry is None:
        raise SourceError(f"unknown --source {name!r}; available: {', '.join(SOURCES)}")
    parsed = ParsedSource(text, name, args, usage=entry.usage)
    if entry.options is None:
        return parsed
    path, options = None, {}
    for item in (s.strip() for s in args.split(",")):
        if not item:
            continue
        m = _OPTION.fullmatch(item)
        if m is None:
            if path is not None:
                raise parsed.fail(f"a second path {item!r} after {path!r} (options are key=value; paths cannot "
                                  "contain commas)")
            path = item
            continue
        key, value = m.group(1).replace("-", "_"), m.group(2).strip()
        if key not in entry.options:
            raise parsed.fail(f"unknown option {key!r}; known: {', '.join(sorted(entry.options))}")
        if key in options:
            raise parsed.fail(f"option {key}= given twice")
        if not value:
            raise parsed.fail(f"option {key}= has no value")
        options[key] = value
    parsed = dataclasses.replace(parsed, path=path, options=options)
    if entry.needs_path and path is None:
        raise parsed.fail("no path given")
    if not entry.needs_path and path is not None:
        raise parsed.fail(f"unexpected path {path!r}")
    return parsed


_FILE_OPTIONS = frozenset(REGION_OPTIONS)

SOURCES: dict[str, SourceEntry] = {
    "synthetic": SourceEntry(
        synthetic_source, "synthetic[:key=value,...][,layout=images[,features_dtype=float16]]",
        "the embedded synthetic world; synthetic:key=value,... sets WorldConfig knobs and val_images; layout=images "
        "writes the pairs one record per image",
        options=None, needs_path=False),
    "volta-cc": SourceEntry(
        volta_cc_source,
        "volta-cc:LMDB_DIR_OR_FILE[,val=LMDB][,skip_bad=1][,layout=images[,features_dtype=float16]][,num_regions=36,...]",
        "pretraining pairs (train/val) from VOLTA's Conceptual Captions LMDBs; the caption is the one stored in "
        "each LMDB record (VOLTA's caption json files are not read: use tsv: for captions from a json). As "
        "`jaxvl pretrain`'s data.dataset it is read in place, with no prepare step",
        options=_FILE_OPTIONS | {"val", "skip_bad", *LAYOUT_OPTIONS}),
    "tsv": SourceEntry(
        tsv_source, "tsv:FEATURES.tsv,captions=CAPTIONS.json[,val=VAL.tsv,val_captions=VAL.json]"
        "[,layout=images[,features_dtype=float16]][,num_regions=36,...]",
        "pretraining pairs from a bottom-up-attention TSV and VOLTA's caption json {image_id: caption}",
        options=_FILE_OPTIONS | {"captions", "val", "val_captions", *LAYOUT_OPTIONS}),
    "flickr30k-entities": SourceEntry(
        flickr30k_entities_source,
        "flickr30k-entities:ROOT,features=FEATURE_LMDB|TSV|NPZ_DIR[,split=val][,format=lmdb|tsv|npz][,skip_bad=1]"
        "[,...]",
        "cross-modal ablation phrases of Flickr30k Entities with their images' regions. As `jaxvl ablate`'s "
        "data.dataset it is read in place (features in an LMDB or npz directory), with no prepare step",
        options=_FILE_OPTIONS | {"features", "split", "format", "skip_bad"}),
    "synthetic-captions": SourceEntry(
        synthetic_captions_source, "synthetic-captions[:key=value,...]",
        "the synthetic captioning world (5 captions per image from its objects and their spatial relations); "
        "WorldConfig and CaptionWorldConfig knobs, val_images, test_images, max_length",
        options=None, needs_path=False),
    "coco-karpathy": SourceEntry(
        coco_karpathy_source,
        "coco-karpathy:dataset_coco.json,features=FEATURE_LMDB|TSV|NPZ_DIR[+...][,format=lmdb|tsv|npz][,fold_restval=1|0]"
        "[,vocab=VOCAB.json|count_threshold=5,vocab_splits=train|all][,max_length=16][,id_key=cocoid]"
        "[,splits=train+val+test][,...]",
        "captioning images of Karpathy's split file (train/val/test) with their regions and encoded captions",
        options=_FILE_OPTIONS | {"features", "format", "fold_restval", "vocab", "vocab_splits", "count_threshold",
                                 "max_length", "id_key", "splits"}),
}
"""Source name -> its builder factory and usage; ``jaxvl prepare --help`` lists these."""
