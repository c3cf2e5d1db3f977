"""The data sources of ``jaxvl prepare``: a source string -> the TFDS builders that write it.

A source string is ``NAME[:ARGS]``; for the file sources ARGS is a path followed by ``key=value``
options, all separated by commas (so paths cannot contain commas)::

    volta-cc:data/conceptual_captions/training_feat_all.lmdb,val=data/conceptual_captions/validation_feat_all.lmdb
    tsv:flickr30k_obj36.tsv,captions=caption_train.json,num_regions=36
    flickr30k-entities:data/flickr30k_entities,features=data/flickr30k/flickr30k_feat.lmdb,split=test

Sources (``SOURCES`` maps each name to its builder factory; one small function per source):

- ``synthetic[:key=value,...]``: the embedded synthetic world (``jaxvl.data.builders.synthetic``);
- ``volta-cc:LMDB[,val=LMDB]``: pretraining pairs from VOLTA's Conceptual Captions LMDBs
  (``jaxvl.data.readers.volta_lmdb.ConceptualCaptionsLMDB``), ``train`` from LMDB and ``val`` from
  ``val=``. LMDB is an LMDB file or directory, or a directory holding VOLTA's ``training_feat_all.lmdb``
  (and ``validation_feat_all.lmdb``, picked up as ``val`` unless ``val=`` says otherwise);
- ``tsv:FEATURES.tsv,captions=CAPTIONS.json[,val=VAL.tsv][,val_captions=VAL.json]``: pretraining pairs
  from a bottom-up-attention TSV (``TsvFeatureReader``) and VOLTA's caption json ``{image_id: caption}``
  (a value may be a list of captions: one pair each). A TSV image with no caption is a bad record;
  captions of images the TSV lacks are ignored (their number is logged). ``val_captions`` defaults
  to ``captions``;
- ``flickr30k-entities:ROOT,features=FEATURES[,split=val][,format=lmdb|tsv|npz]``: cross-modal
  ablation phrases (``Flickr30kEntities``) with their image's regions from a per-image feature LMDB
  (``FeatureLMDB``), a TSV (only the split's images are kept in memory) or a directory of
  ``<image_id>.npz`` files (``NpzFeatureReader``); the format is detected unless ``format=`` names it.
  The output split is named after ``split``. A phrase whose image has no features is a bad record
  naming the image id;
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

The region spec ``RegionSpec(R, D, K)`` is thus read off the first records before anything is
written; every record must then agree with it (a record that does not is a bad record naming its
file). Bad records raise ``BadRecord``; with ``skip_bad`` they are skipped and counted per kind in
the ``Skips`` of the returned ``Prepared`` (filled while the splits are written; also saved as
``skipped`` in each dataset's ``metadata.json``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from jaxvl.data.records import AblationExample, BadRecord, CaptionPair, RegionFeatures, check_region_features

if TYPE_CHECKING:  # the builders import tensorflow_datasets: only the factories load them
    from jaxvl.data.builders.ablation import AblationPhrases
    from jaxvl.data.builders.captions import CaptionImages
    from jaxvl.data.builders.common import RegionSpec
    from jaxvl.data.builders.pretrain import PretrainPairs
    from jaxvl.data.caption_vocab import CaptionVocab
    from jaxvl.data.readers.coco_karpathy import KarpathyCaptions, KarpathyImage

log = logging.getLogger(__name__)

DEFAULT_PROBE = 100
"""Records per split read up front to find R (the most boxes) when ``num_regions`` is not given."""
CC_TRAIN_LMDB, CC_VAL_LMDB = "training_feat_all.lmdb", "validation_feat_all.lmdb"
"""VOLTA's names of the Conceptual Captions LMDBs (``data/conceptual_captions/``)."""
REGION_OPTIONS = ("name", "num_regions", "feature_dim", "num_classes", "probe")
FEATURE_FORMATS = ("lmdb", "tsv", "npz")
_LMDB_MAGIC = (0xBEEFC0DE).to_bytes(4, "little")  # MDB_meta.mm_magic, after the 16-byte page header
_OPTION = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)=(.*)", re.S)


class SourceError(ValueError):
    """A source string that cannot be used: unknown source or option, missing or bad path or value."""


# ---------------------------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class ParsedSource:
    """A parsed source string: ``name``, the raw ``args`` after the colon, the ``path`` and ``options``."""

    text: str
    name: str
    args: str
    path: str | None = None
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def fail(self, problem: str) -> SourceError:
        """A ``SourceError`` for this source: ``<name>: <problem> (in '<text>'); usage: ...``."""
        return SourceError(f"--source {self.name}: {problem} (in {self.text!r}); usage: {SOURCES[self.name].usage}")

    def require(self, key: str) -> str:
        """The value of a mandatory option, or a ``SourceError`` naming it."""
        if key not in self.options:
            raise self.fail(f"missing option {key}=")
        return self.options[key]

    def bool_option(self, key: str, default: bool) -> bool:
        """An option's value as a bool (``1/true/yes`` or ``0/false/no``), ``default`` when absent."""
        value = self.options.get(key)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise self.fail(f"option {key}={value!r} must be 1 or 0")

    def int_option(self, key: str, words: tuple[str, ...] = ()) -> int | str | None:
        """An option's value as an int >= 1, or one of ``words`` (lower-cased), or None when absent."""
        value = self.options.get(key)
        if value is None:
            return None
        if value.strip().lower() in words:
            return value.strip().lower()
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            allowed = " or ".join(("an integer >= 1", *words))
            raise self.fail(f"option {key}={value!r} must be {allowed}")
        return n

    def existing_path(self, value: str, what: str, kind: str = "any") -> str:
        """``value`` as an absolute path that exists (``kind`` "file", "dir" or "any"), or a ``SourceError``."""
        path = os.path.abspath(os.path.expanduser(value))
        ok = {"file": os.path.isfile, "dir": os.path.isdir, "any": os.path.exists}[kind](path)
        if not ok:
            noun = {"file": "file", "dir": "directory", "any": "file or directory"}[kind]
            raise self.fail(f"{what} {path}: no such {noun}")
        return path


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
    parsed = ParsedSource(text, name, args)
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


# ---------------------------------------------------------------------------------------------- results


class Skips:
    """What a build skipped with ``skip_bad``: a count per kind (e.g. "train: bad records in X.lmdb").

    Filled while the builders write their splits; ``counts`` is a plain dict that the datasets'
    metadata share, so it lands in ``metadata.json`` as ``skipped``.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclasses.dataclass
class Prepared:
    """A source's TFDS builders (not yet prepared) and the skip counts they fill while writing."""

    builders: list[PretrainPairs | AblationPhrases | CaptionImages]
    skips: Skips = dataclasses.field(default_factory=Skips)


SourceFactory = Callable[[ParsedSource, str, bool], Prepared]


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
    return SOURCES[parsed.name].factory(parsed, os.fspath(out), skip_bad)


# ---------------------------------------------------------------------------------------------- regions


@dataclasses.dataclass(frozen=True)
class RegionOptions:
    """The region options of a file source (see the module doc); ``num_classes`` "auto" = from the data."""

    num_regions: int | None = None
    feature_dim: int | None = None
    num_classes: int | None | str = "auto"
    probe: int | None = DEFAULT_PROBE

    @classmethod
    def parse(cls, src: ParsedSource) -> RegionOptions:
        k = src.int_option("num_classes", ("none", "auto"))
        probe = src.int_option("probe", ("all",))
        return cls(num_regions=src.int_option("num_regions"), feature_dim=src.int_option("feature_dim"),
                   num_classes="auto" if k is None else (None if k == "none" else k),
                   probe=DEFAULT_PROBE if probe is None else (None if probe == "all" else probe))

    @property
    def reader_num_classes(self) -> int | None:
        """The ``num_classes`` (K + 1, background included) readers check, or None (no check)."""
        return self.num_classes + 1 if isinstance(self.num_classes, int) else None


class SpecProbe:
    """Reads the region spec off the first records: D and K from the first, R = the most boxes seen."""

    def __init__(self, options: RegionOptions):
        self.options = options
        self.first: RegionFeatures | None = None
        self.max_boxes = 0
        self.seen = 0

    def feed(self, records: Iterable[Any], regions: Callable[[Any], RegionFeatures] = lambda rec: rec) -> None:
        """Reads up to ``options.probe`` records of one split (all with ``probe=all``), then closes the stream.

        ``regions`` maps an item of ``records`` to its ``RegionFeatures`` (e.g. a ``CaptionPair``'s).
        """
        it = iter(records)
        try:
            for item in itertools.islice(it, self.options.probe):
                rec = regions(item)
                if self.first is None:
                    self.first = rec
                self.max_boxes = max(self.max_boxes, rec.num_boxes)
                self.seen += 1
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def spec(self, where: str) -> RegionSpec:
        """The ``RegionSpec``; ``SourceError`` when no record was seen."""
        from jaxvl.data.builders.common import RegionSpec

        if self.first is None:
            raise SourceError(f"{where}: no usable record to read the region sizes (R, D, K) from")
        opts, first = self.options, self.first
        k = opts.num_classes
        if k == "auto":
            k = None if first.cls_prob is None else first.cls_prob.shape[1] - 1
        try:
            return RegionSpec(num_regions=opts.num_regions or self.max_boxes,
                              feature_dim=opts.feature_dim or int(first.features.shape[1]), num_classes=k)
        except ValueError as e:
            raise SourceError(f"{where}: region sizes read off record {first.image_id!r}: {e}") from e


def check_spec(rec: RegionFeatures, spec: RegionSpec, source: str) -> RegionFeatures:
    """``BadRecord`` unless ``rec`` is sound and fits ``spec`` (its D, and with K classes a ``cls_prob`` of K+1)."""
    k1 = None if spec.num_classes is None else spec.num_classes + 1
    sizes = f"D={spec.feature_dim}, K={spec.num_classes}"
    try:
        check_region_features(rec, source, feature_dim=spec.feature_dim, num_classes=k1)
    except BadRecord as e:
        raise BadRecord(f"{e} (the dataset's region sizes, read off the first record: {sizes})") from e
    if k1 is not None and rec.cls_prob is None:
        raise BadRecord(f"{source}: record {rec.image_id!r} has no cls_prob, but the dataset stores {k1} detector "
                        "classes (read off the first record; num_classes=none stores features only)")
    return rec


def _skip_or_raise(error: BadRecord, skip_bad: bool, skips: Skips, what: str) -> None:
    if not skip_bad:
        raise error
    skips.add(what)
    log.warning("skipping: %s", error)


def _fits(rec: RegionFeatures, spec: RegionSpec, source: str, skip_bad: bool, skips: Skips, what: str) -> bool:
    """Whether ``rec`` fits ``spec``; a record that does not raises, or with ``skip_bad`` is counted as ``what``."""
    try:
        check_spec(rec, spec, source)
    except BadRecord as e:
        _skip_or_raise(e, skip_bad, skips, what)
        return False
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def _stem(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in (".lmdb", ".mdb", ".tsv", ".npz"):
        base = base.removesuffix(ext)
    return base


def config_name(src: ParsedSource, *parts: str) -> str:
    """``name=`` if given, else the source's name, ``parts`` and the region options given, joined by ``-``/``+``."""
    if "name" in src.options:
        name = src.options["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise src.fail(f"name={name!r} may only hold letters, digits and _.+-")
        return name
    knobs = [f"{k}-{src.options[k]}" for k in ("num_regions", "feature_dim", "num_classes") if k in src.options]
    return "+".join(["-".join(_slug(p) for p in (src.name.replace("-", "_"), *parts)), *knobs])


def _metadata(src: ParsedSource, skips: Skips, skip_bad: bool, **files: Any) -> dict[str, Any]:
    return {"source": src.name, "source_string": src.text, "files": files, "skip_bad": skip_bad,
            "skipped": skips.counts}


# ---------------------------------------------------------------------------------------------- synthetic


def synthetic_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``synthetic[:key=value,...]``: both synthetic-world datasets (``skip_bad`` has nothing to skip)."""
    from jaxvl.data.builders.synthetic import parse_knobs, synthetic_builders, synthetic_config

    return Prepared(synthetic_builders(synthetic_config(**parse_knobs(src.args)), out))


# ---------------------------------------------------------------------------------------------- volta-cc


def _cc_paths(src: ParsedSource) -> dict[str, str]:
    """Split -> LMDB path of a ``volta-cc`` source (a directory of VOLTA's LMDBs or an LMDB itself)."""
    path = src.existing_path(src.path, "LMDB")
    paths = {"train": path}
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "data.mdb")):
        train, val = os.path.join(path, CC_TRAIN_LMDB), os.path.join(path, CC_VAL_LMDB)
        if not os.path.exists(train):
            raise src.fail(f"{path} is neither an LMDB (no data.mdb) nor a directory holding {CC_TRAIN_LMDB}")
        paths["train"] = train
        if os.path.exists(val):
            paths["val"] = val
    if "val" in src.options:
        paths["val"] = src.existing_path(src.options["val"], "val LMDB")
    return paths


def volta_cc_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``volta-cc:LMDB[,val=LMDB]``: VOLTA's Conceptual Captions LMDBs as ``PretrainPairs`` (train / val)."""
    from jaxvl.data.builders.pretrain import PretrainConfig, PretrainPairs
    from jaxvl.data.readers.volta_lmdb import ConceptualCaptionsLMDB

    opts, skips = RegionOptions.parse(src), Skips()
    paths = _cc_paths(src)

    def reader(path: str) -> ConceptualCaptionsLMDB:
        try:
            return ConceptualCaptionsLMDB(path, skip_bad, feature_dim=opts.feature_dim,
                                          num_classes=opts.reader_num_classes)
        except (OSError, ValueError) as e:
            raise SourceError(f"--source {src.name}: {e}") from e

    probe = SpecProbe(opts)
    for path in paths.values():
        with reader(path) as r:
            probe.feed(r, lambda pair: pair.regions)
    spec = probe.spec(paths["train"])

    def pairs(split: str, path: str) -> Iterator[CaptionPair]:
        with reader(path) as r:
            what = f"{split}: records not fitting the region sizes in {path}"
            yield from (pair for pair in r if _fits(pair.regions, spec, path, skip_bad, skips, what))
            skips.add(f"{split}: bad records in {path}", r.errors.skipped)

    config = PretrainConfig(name=config_name(src, _stem(paths["train"])), regions=spec,
                            splits={split: _bind(pairs, split, path) for split, path in paths.items()},
                            metadata=_metadata(src, skips, skip_bad, **paths),
                            description=f"VOLTA Conceptual Captions LMDBs {paths}")
    return Prepared([PretrainPairs(config=config, data_dir=out, file_format="array_record")], skips)


def _bind(fn: Callable[..., Iterator], *args: Any) -> Callable[[], Iterator]:
    return lambda: fn(*args)


# ---------------------------------------------------------------------------------------------- tsv


def tsv_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``tsv:FEATURES.tsv,captions=CAPTIONS.json[,val=VAL.tsv][,val_captions=VAL.json]`` as ``PretrainPairs``."""
    from jaxvl.data.builders.pretrain import PretrainConfig, PretrainPairs
    from jaxvl.data.readers.tsv import TsvFeatureReader
    from jaxvl.data.readers.volta_lmdb import read_caption_json

    opts, skips = RegionOptions.parse(src), Skips()
    files = {"train": (src.existing_path(src.path, "features", "file"),
                       src.existing_path(src.require("captions"), "captions", "file"))}
    if "val" in src.options:
        files["val"] = (src.existing_path(src.options["val"], "val features", "file"),
                        src.existing_path(src.options.get("val_captions", src.options["captions"]), "val captions",
                                          "file"))
    elif "val_captions" in src.options:
        raise src.fail("val_captions= without val=")
    captions = {path: read_caption_json(path) for _, path in files.values()}

    def reader(path: str) -> TsvFeatureReader:
        return TsvFeatureReader(path, feature_dim=opts.feature_dim, num_classes=opts.reader_num_classes,
                                skip_bad=skip_bad)

    probe = SpecProbe(opts)
    for features, _ in files.values():
        probe.feed(reader(features))
    spec = probe.spec(files["train"][0])

    def pairs(split: str, features: str, captions_path: str) -> Iterator[CaptionPair]:
        by_image, seen = captions[captions_path], set()
        tsv = reader(features)
        for rec in tsv:
            caps = by_image.get(rec.image_id)
            if caps is None:
                _skip_or_raise(BadRecord(f"{features}: record {rec.image_id!r} has no caption in {captions_path}"),
                               skip_bad, skips, f"{split}: images without a caption in {features}")
                continue
            seen.add(rec.image_id)
            what = f"{split}: records not fitting the region sizes in {features}"
            if _fits(rec, spec, features, skip_bad, skips, what):
                yield from (CaptionPair(rec, c) for c in ([caps] if isinstance(caps, str) else caps))
        skips.add(f"{split}: bad records in {features}", tsv.skipped)
        if len(seen) < len(by_image):
            log.warning("%s: %d of %d captioned images have no features in %s", captions_path,
                        len(by_image) - len(seen), len(by_image), features)

    config = PretrainConfig(name=config_name(src, _stem(files["train"][0])), regions=spec,
                            splits={split: _bind(pairs, split, *f) for split, f in files.items()},
                            metadata=_metadata(src, skips, skip_bad, **{s: list(f) for s, f in files.items()}),
                            description=f"bottom-up-attention TSV features with VOLTA captions {files}")
    return Prepared([PretrainPairs(config=config, data_dir=out, file_format="array_record")], skips)


# ---------------------------------------------------------------------------------------------- flickr30k


class FeatureLookup(Protocol):
    """Per-image regions by id: ``get`` gives None for an image without features, raises ``BadRecord`` for bad ones."""

    path: str

    def get(self, image_id: str) -> RegionFeatures | None: ...


class _LmdbFeatures:
    def __init__(self, path: str, opts: RegionOptions):
        from jaxvl.data.readers.volta_lmdb import FeatureLMDB

        self.path = path
        self.reader = FeatureLMDB(path, feature_dim=opts.feature_dim, num_classes=opts.reader_num_classes)

    def get(self, image_id: str) -> RegionFeatures | None:
        return self.reader[image_id] if image_id in self.reader else None


class _NpzFeatures:
    def __init__(self, path: str, opts: RegionOptions):
        from jaxvl.data.readers.npz import NpzFeatureReader

        self.path = path
        self.reader = NpzFeatureReader(path, feature_dim=opts.feature_dim, num_classes=opts.reader_num_classes)

    def get(self, image_id: str) -> RegionFeatures | None:
        return self.reader[image_id] if image_id in self.reader else None


class _TsvFeatures:
    """The records of ``image_ids`` from a TSV, read once and held in memory (a TSV has no index)."""

    def __init__(self, path: str, opts: RegionOptions, image_ids: Iterable[str], skip_bad: bool):
        from jaxvl.data.readers.tsv import TsvFeatureReader

        self.path, wanted = path, set(image_ids)
        reader = TsvFeatureReader(path, feature_dim=opts.feature_dim, num_classes=opts.reader_num_classes,
                                  skip_bad=skip_bad)
        self.records: dict[str, RegionFeatures] = {}
        for rec in reader:
            if rec.image_id in wanted:
                self.records.setdefault(rec.image_id, rec)
        self.skipped = reader.skipped

    def get(self, image_id: str) -> RegionFeatures | None:
        return self.records.get(image_id)


def feature_format(path: str, fmt: str | None = None) -> str:
    """``lmdb``, ``tsv`` or ``npz`` for a feature path: ``fmt`` if given, else detected.

    A directory with ``data.mdb`` is an LMDB, one with ``*.npz`` files an npz directory; a file is an
    LMDB if it starts with an LMDB meta page, else a TSV. ``ValueError`` when nothing fits.
    """
    if fmt is not None:
        if fmt not in FEATURE_FORMATS:
            raise ValueError(f"format={fmt!r}; expected one of {', '.join(FEATURE_FORMATS)}")
        return fmt
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "data.mdb")):
            return "lmdb"
        if any(n.endswith(".npz") for n in os.listdir(path)):
            return "npz"
        raise ValueError(f"{path}: a directory with neither data.mdb (an LMDB) nor .npz feature files")
    with open(path, "rb") as f:
        head = f.read(20)
    return "lmdb" if head[16:20] == _LMDB_MAGIC else "tsv"


def flickr30k_entities_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``flickr30k-entities:ROOT,features=FEATURES[,split=val][,format=...]`` as ``AblationPhrases``."""
    from jaxvl.data.builders.ablation import AblationConfig, AblationPhrases
    from jaxvl.data.readers.flickr30k_entities import Flickr30kEntities

    opts, skips = RegionOptions.parse(src), Skips()
    root = src.existing_path(src.path, "Flickr30k Entities root", "dir")
    features = src.existing_path(src.require("features"), "features")
    split = src.options.get("split", "val")
    try:
        fmt = feature_format(features, src.options.get("format"))
        image_ids = Flickr30kEntities(root, split).image_ids
        lookup: FeatureLookup = (_LmdbFeatures(features, opts) if fmt == "lmdb" else
                                 _NpzFeatures(features, opts) if fmt == "npz" else
                                 _TsvFeatures(features, opts, image_ids, skip_bad))
    except BadRecord:
        raise
    except (OSError, ValueError) as e:
        raise SourceError(f"--source {src.name}: {e}") from e

    def probed() -> Iterator[RegionFeatures]:
        for image_id in image_ids:
            try:
                rec = lookup.get(image_id)
            except BadRecord:
                continue  # counted (or raised) while writing
            if rec is not None:
                yield rec

    probe = SpecProbe(opts)
    probe.feed(probed())
    spec = probe.spec(f"{features} (images of {root}/{split}.txt)")
    if isinstance(lookup, _TsvFeatures):
        skips.add(f"{split}: bad records in {features}", lookup.skipped)

    def phrases() -> Iterator[tuple[AblationExample, RegionFeatures]]:
        entities = Flickr30kEntities(root, split, skip_bad=skip_bad)
        last_id, last = None, None
        for ex in entities:
            if ex.image_id != last_id:
                last_id, last = ex.image_id, None
                try:
                    rec = lookup.get(ex.image_id)
                    if rec is None:
                        raise BadRecord(f"{features}: no features for image {ex.image_id!r} (phrase {ex.phrase!r} "
                                        f"of {entities.sentence_path(ex.image_id)})")
                    last = check_spec(rec, spec, features)
                except BadRecord as e:
                    _skip_or_raise(e, skip_bad, skips, f"{split}: images without usable features in {features}")
            if last is None:
                skips.add(f"{split}: phrases whose image has no usable features")
                continue
            yield ex, last
        skips.add(f"{split}: bad annotation files or caption lines in {root}", entities.skipped)

    config = AblationConfig(name=config_name(src, split, _stem(features)), regions=spec, splits={split: phrases},
                            metadata=_metadata(src, skips, skip_bad, root=root, features=features, format=fmt),
                            description=f"Flickr30k Entities {split} phrases from {root}, features {features}")
    return Prepared([AblationPhrases(config=config, data_dir=out, file_format="array_record")], skips)


# ---------------------------------------------------------------------------------------------- captions


def synthetic_captions_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``synthetic-captions[:key=value,...]``: the synthetic captioning world (``skip_bad`` has nothing to skip)."""
    from jaxvl.data.builders.captions import parse_caption_knobs, synthetic_caption_builder, synthetic_caption_config

    return Prepared([synthetic_caption_builder(synthetic_caption_config(**parse_caption_knobs(src.args)), out)])


def _caption_vocab(src: ParsedSource, karpathy: KarpathyCaptions) -> CaptionVocab:
    """The ``CaptionVocab`` of a ``coco-karpathy`` source: ``vocab=`` loaded, or built from its captions."""
    from jaxvl.data.caption_vocab import ORT_COUNT_THRESHOLD, CaptionVocab
    from jaxvl.data.readers.coco_karpathy import SPLITS

    if "vocab" in src.options:
        clash = sorted({"count_threshold", "vocab_splits"} & set(src.options))
        if clash:
            raise src.fail(f"vocab= loads a vocabulary; {', '.join(k + '=' for k in clash)} would build one")
        return CaptionVocab.load(src.existing_path(src.options["vocab"], "vocabulary", "file"))
    threshold = src.options.get("count_threshold", str(ORT_COUNT_THRESHOLD))
    if not threshold.isdigit():
        raise src.fail(f"option count_threshold={threshold!r} must be an integer >= 0")
    which = src.options.get("vocab_splits", "train")
    if which not in ("train", "all"):
        raise src.fail(f"option vocab_splits={which!r} must be train or all")
    return karpathy.build_vocab(int(threshold), SPLITS if which == "all" else ("train",))


def coco_karpathy_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``coco-karpathy:dataset_coco.json,features=FEATURES[,...]`` as ``CaptionImages`` (one split per file split)."""
    from jaxvl.data.builders.captions import CaptionConfig, CaptionExample, CaptionImages
    from jaxvl.data.caption_vocab import ORT_MAX_LENGTH
    from jaxvl.data.readers.coco_karpathy import KarpathyCaptions, RegionJoin, caption_stats

    opts, skips = RegionOptions.parse(src), Skips()
    path = src.existing_path(src.path, "Karpathy split file", "file")
    value = src.require("features")  # one store, or several joined by '+' (a path holding '+' is taken whole)
    whole = os.path.exists(os.path.expanduser(value)) or "+" not in value
    paths = [src.existing_path(v, "features") for v in ([value] if whole else value.split("+"))]
    features = " + ".join(paths)
    max_length = src.int_option("max_length") or ORT_MAX_LENGTH
    fold = src.bool_option("fold_restval", True)
    id_key = src.options.get("id_key", "cocoid")
    try:
        formats = {p: feature_format(p, src.options.get("format")) for p in paths}
        if len(set(formats.values())) > 1:
            raise ValueError(f"features= mixes formats {formats}; give stores of one format")
        fmt = formats[paths[0]]
        karpathy = KarpathyCaptions(path, fold_restval=fold, id_key=id_key, skip_bad=skip_bad)
        vocab = _caption_vocab(src, karpathy)

        def join(skip: bool, quiet: bool = False) -> RegionJoin:
            return RegionJoin(paths, fmt, opts.feature_dim, opts.reader_num_classes, skip, quiet)

        join(skip_bad)  # opens the features: a missing or unreadable store fails here
    except BadRecord:
        raise
    except (OSError, ValueError) as e:
        raise SourceError(f"--source {src.name}: {e}") from e
    skips.add(f"bad images in {path}", karpathy.skipped)
    splits = karpathy.splits
    if "splits" in src.options:
        wanted = [s.strip() for s in src.options["splits"].split("+")]
        missing = [s for s in wanted if s not in splits]
        if missing:
            raise src.fail(f"splits={src.options['splits']!r}: {path} has no images in {missing}; it has "
                           f"{'+'.join(splits)}")
        splits = {s: splits[s] for s in wanted}
    probe = SpecProbe(opts)
    probe.feed(join(True, quiet=True).pairs(splits.get("train") or next(iter(splits.values()))), lambda p: p[1])
    spec = probe.spec(f"{features} (images of {path})")

    def examples(split: str, images: list[KarpathyImage]) -> Iterator[CaptionExample]:
        joined = join(skip_bad)
        what = f"{split}: records not fitting the region sizes in {features}"
        for image, rec in joined.pairs(images):
            if _fits(rec, spec, features, skip_bad, skips, what):
                yield CaptionExample(regions=rec, captions=image.captions)
        for kind, n in joined.counts.items():
            skips.add(f"{split}: {kind} in {features}", n)

    counts = karpathy.caption_counts()
    file_stats = {split: {**caption_stats(imgs, vocab, max_length),
                          "captions_per_image": {str(n): k for n, k in counts[split].items()}}
                  for split, imgs in splits.items()}
    metadata = _metadata(src, skips, skip_bad, split_file=path, features=paths, format=fmt)
    metadata.update(fold_restval=fold, id_key=id_key, split_file_stats=file_stats)
    stem = os.path.splitext(os.path.basename(path))[0]
    config = CaptionConfig(name=config_name(src, stem, _stem(paths[0])), regions=spec, vocab=vocab,
                           max_length=max_length, splits={s: _bind(examples, s, imgs) for s, imgs in splits.items()},
                           metadata=metadata, description=f"Karpathy captions {path} with features {features}")
    return Prepared([CaptionImages(config=config, data_dir=out, file_format="array_record")], skips)


# ---------------------------------------------------------------------------------------------- registry

_FILE_OPTIONS = frozenset(REGION_OPTIONS)

SOURCES: dict[str, SourceEntry] = {
    "synthetic": SourceEntry(
        synthetic_source, "synthetic[:key=value,...]",
        "the embedded synthetic world; synthetic:key=value,... sets WorldConfig knobs and val_images",
        options=None, needs_path=False),
    "volta-cc": SourceEntry(
        volta_cc_source, "volta-cc:LMDB_DIR_OR_FILE[,val=LMDB][,num_regions=36,...]",
        "pretraining pairs (train/val) from VOLTA's Conceptual Captions LMDBs",
        options=_FILE_OPTIONS | {"val"}),
    "tsv": SourceEntry(
        tsv_source, "tsv:FEATURES.tsv,captions=CAPTIONS.json[,val=VAL.tsv,val_captions=VAL.json][,num_regions=36,...]",
        "pretraining pairs from a bottom-up-attention TSV and VOLTA's caption json {image_id: caption}",
        options=_FILE_OPTIONS | {"captions", "val", "val_captions"}),
    "flickr30k-entities": SourceEntry(
        flickr30k_entities_source,
        "flickr30k-entities:ROOT,features=FEATURE_LMDB|TSV|NPZ_DIR[,split=val][,format=lmdb|tsv|npz][,...]",
        "cross-modal ablation phrases of Flickr30k Entities with their images' regions",
        options=_FILE_OPTIONS | {"features", "split", "format"}),
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
