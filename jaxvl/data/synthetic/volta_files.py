"""A synthetic world written out in VOLTA's own file formats, so the real-data path can be run end to end.

``export_world(world_cfg, val_images, out)`` writes, under ``out``::

    vocab.txt                                   a BERT vocab.txt: [PAD] [UNK] [CLS] [SEP] [MASK], then the world's words
    objects_vocab.txt                           Visual Genome style detector classes, one per line (K lines)
    conceptual_captions/training_feat_all.lmdb  tensorpack LMDBSerializer files (one file + ``-lock``), the
    conceptual_captions/validation_feat_all.lmdb  train images and the held-out images
    conceptual_captions/annotations/caption_{train,valid}.json   {image_id: [captions]}
    flickr30k_entities/{train,val}.txt          Flickr30k Entities: split files,
    flickr30k_entities/Sentences/<id>.txt       captions with [/EN#<chain>/<type> phrase] markup,
    flickr30k_entities/Annotations/<id>.xml     boxes per chain (1-based integer pixels)
    flickr30k/flickr30k_feat.lmdb               VOLTA's per-image feature LMDB (convert_flickr30k_lmdb.py)
    colour_basis.npy                            only for a world with colour_dims > 0: float32 [colour_dims, D],
                                                rows spanning the features' colour subspace (``jaxvl probe colour``'s
                                                ``colour.basis``)

Layouts (the readers' docstrings, ``jaxvl.data.readers.volta_lmdb`` / ``volta_records`` /
``flickr30k_entities``, describe the originals; the files here are those layouts, nothing jaxvl-specific):

- Conceptual Captions LMDB: keys ``b'%08d'`` -> one datapoint ``[features, cls_prob, objects_id,
  objects_conf, attrs_id, attrs_conf, attr_scores, boxes, num_boxes, h, w, image_id, caption]``
  (``CC_FIELDS``; ``num_boxes, h, w`` as ``str`` like the TSV-derived originals), plus ``b'__keys__'``,
  serialised with msgpack + msgpack-numpy array maps (tensorpack 0.9.4, VOLTA's pin; ``serializer="pickle"``:
  tensorpack >= 0.11). One record per (image, caption) pair: an image with two captions has two records
  with the same ``image_id``, as the synthetic pretraining dataset holds two pairs.
- Per-image feature LMDB (a directory, ``lmdb.open``'s default): key ``str(img_id).encode()`` -> a pickled
  (protocol 3) ``OrderedDict`` of the 13 TSV columns as strings, arrays as base64 of raw float32 / int64
  bytes; ``b'keys'`` -> the pickled list of keys. Holds every image, train and held-out.
- Flickr30k Entities: each caption mention of an object of the image is ``[/EN#<chain>/other a <attr>
  <class>]`` with chain ``100 * image index + object index + 1``, boxed in ``Annotations``; a mention of
  nothing in the image (``vision_to_language < 1``) is ``[/EN#0/notvisual ...]``, which has no box and is
  dropped by the reader, as the world writes no phrase for it.

Image ids are the world's image index as a decimal string without leading zeros (``"17"``, Flickr-style
numeric ids); boxes in the Flickr30k annotations are rounded to whole pixels (the originals are integers).
Detector sizes are the world's (D = ``feature_dim``, K + 1 = ``num_classes + 1`` columns of ``cls_prob``), not
VOLTA's 2048 / 1601: ``jaxvl prepare`` reads them off the first records. Attributes (``attrs_id``,
``attr_scores`` [R, A + 1] with "no attribute" at 0) carry the object's attribute, clutter none.

Command line (also ``jaxvl world export``)::

    python -m jaxvl.data.synthetic.volta_files --out worlds/demo [--world synthetic:KEY=VALUE,...]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import lmdb
import msgpack
import numpy as np

from jaxvl.data.synthetic.world import DEMO_WORLD, SyntheticImage, World, WorldConfig

CC_DIR, F30K_DIR, FEATURES_DIR = "conceptual_captions", "flickr30k_entities", "flickr30k"
CC_TRAIN_LMDB, CC_VAL_LMDB = "training_feat_all.lmdb", "validation_feat_all.lmdb"
FEATURE_LMDB = "flickr30k_feat.lmdb"
TSV_COLUMNS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
               "boxes", "features", "cls_prob", "attrs", "classes")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class ExportedWorld:
    """Where ``export_world`` wrote each part (absolute paths) and how many records."""

    root: str
    vocab: str
    objects_vocab: str
    cc_dir: str
    flickr30k_entities: str
    features: str
    train_pairs: int
    val_pairs: int
    val_phrases: int
    colour_basis: str = ""  # colour_basis.npy, for a world with colour_dims > 0

    def sources(self) -> dict[str, str]:
        """The ``jaxvl prepare --source`` strings of the exported files: ``pretrain`` and ``ablation``."""
        return {"pretrain": f"volta-cc:{self.cc_dir}",
                "ablation": f"flickr30k-entities:{self.flickr30k_entities},features={self.features}"}


# ---------------------------------------------------------------------------------------------- serialisation


def _msgpack_default(obj: Any) -> Any:
    """msgpack-numpy's map for a plain numeric array or numpy scalar (what tensorpack 0.9 writes)."""
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": obj.shape,
                b"data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.bool_ | np.number):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps_value(obj: Any, serializer: str = "msgpack") -> bytes:
    """One tensorpack ``LMDBSerializer`` value: ``msgpack`` (0.9.4, VOLTA's pin) or ``pickle`` (>= 0.11)."""
    if serializer == "msgpack":
        return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
    if serializer == "pickle":
        return pickle.dumps(obj, protocol=-1)
    raise ValueError(f"serializer={serializer!r}; expected 'msgpack' or 'pickle'")


def _write_lmdb(path: str, entries: Iterable[tuple[bytes, bytes]], subdir: bool) -> None:
    """Raw key/value pairs into a new LMDB: one file (+ ``-lock``) or a directory holding ``data.mdb``."""
    entries = list(entries)
    size = sum(len(k) + len(v) for k, v in entries)
    env = lmdb.open(path, subdir=subdir, map_size=max(1 << 22, 4 * size), meminit=False)
    try:
        with env.begin(write=True) as txn:
            for k, v in entries:
                txn.put(k, v)
    finally:
        env.close()


def _b64(arr: np.ndarray) -> str:
    """A TSV field: base64 of the raw little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


# ------------------------------------------------------------------------------------------------- records


def volta_image_id(image: SyntheticImage) -> str:
    """The exported id of a world image: its index as a decimal string (``"000017"`` -> ``"17"``)."""
    return str(int(image.image_id))


def region_arrays(world: World, image: SyntheticImage) -> dict[str, np.ndarray]:
    """The detector fields of one image as VOLTA stores them (R = ``num_regions``, A = ``num_attributes``):
    ``features`` [R, D], ``cls_prob`` [R, K + 1], ``objects_id`` [R] int64, ``objects_conf`` [R], ``boxes``
    [R, 4], ``attr_scores`` [R, A + 1] (index 0 = no attribute), ``attrs_id`` [R] int64 (argmax over 1:),
    ``attrs_conf`` [R]; float32 unless said."""
    reg, a = image.regions, world.cfg.num_attributes
    scores = np.full((reg.num_boxes, a + 1), 0.1 / a, np.float32)
    scores[:, 0] = 0.9
    for r, i in enumerate(image.region_objects):
        if i >= 0:
            scores[r] = 0.1 / a
            scores[r, image.objects[i].attribute + 1] = 0.9
    attrs_id = scores[:, 1:].argmax(1).astype(np.int64)
    return dict(features=reg.features, cls_prob=reg.cls_prob, objects_id=reg.objects_id.astype(np.int64),
                objects_conf=reg.objects_conf, boxes=reg.boxes, attr_scores=scores, attrs_id=attrs_id,
                attrs_conf=scores[np.arange(reg.num_boxes), attrs_id + 1])


def cc_datapoint(world: World, image: SyntheticImage, caption: str) -> list:
    """One Conceptual Captions datapoint in ``preprocess_cc_train.py``'s field order (``CC_FIELDS``)."""
    f = region_arrays(world, image)
    reg = image.regions
    return [f["features"], f["cls_prob"], f["objects_id"], f["objects_conf"], f["attrs_id"], f["attrs_conf"],
            f["attr_scores"], f["boxes"], str(reg.num_boxes), str(reg.image_h), str(reg.image_w),
            volta_image_id(image), caption]


def feature_row(world: World, image: SyntheticImage) -> OrderedDict:
    """One per-image feature row: the 13 TSV columns as strings (arrays base64), as ``convert_*_lmdb.py`` stores."""
    f = region_arrays(world, image)
    reg = image.regions
    values = dict(img_id=volta_image_id(image), img_h=str(reg.image_h), img_w=str(reg.image_w),
                  objects_id=_b64(f["objects_id"]), objects_conf=_b64(f["objects_conf"]),
                  attrs_id=_b64(f["attrs_id"]), attrs_conf=_b64(f["attrs_conf"]), num_boxes=str(reg.num_boxes),
                  boxes=_b64(f["boxes"]), features=_b64(f["features"]), cls_prob=_b64(f["cls_prob"]),
                  attrs=_b64(f["attr_scores"]), classes=_b64(f["cls_prob"][:, 1:]))
    return OrderedDict((k, values[k]) for k in TSV_COLUMNS)


def chain_id(image: SyntheticImage, obj: int) -> str:
    """The Flickr30k Entities chain id of object ``obj`` of ``image`` (unique over the world)."""
    return str(100 * int(image.image_id) + obj + 1)


def annotated_caption(world: World, image: SyntheticImage, s: int) -> str:
    """Caption ``s`` of ``image`` with Flickr30k Entities markup: ``[/EN#<chain>/other a <attr> <class>]`` for a
    mention of an object of the image, ``[/EN#0/notvisual ...]`` for a mention of nothing in it."""
    words = image.captions[s].split(" ")
    out, pos = [], 0
    for obj, k, a in image.mentions[s]:
        noun = ["a", world.attribute_names[a], world.class_names[k]]
        start = next(j for j in range(pos, len(words)) if words[j:j + 3] == noun)
        tag = f"[/EN#{chain_id(image, obj)}/other" if obj >= 0 else "[/EN#0/notvisual"
        out += [*words[pos:start], tag, *noun[:-1], noun[-1] + "]"]
        pos = start + 3
    return " ".join(out + words[pos:])


def annotation_xml(image: SyntheticImage) -> str:
    """``Annotations/<id>.xml``: image size and one ``<object>`` per gold object, its box 1-based integers."""
    h, w = image.regions.image_h, image.regions.image_w
    objects = []
    for i, obj in enumerate(image.objects):
        x1, y1, x2, y2 = (int(round(float(v))) + 1 for v in obj.box)
        box = f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        objects.append(f"  <object>\n    <name>{chain_id(image, i)}</name>\n    <bndbox>{box}</bndbox>\n  </object>")
    return (f"<annotation>\n  <filename>{volta_image_id(image)}.jpg</filename>\n  <size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>\n" + "\n".join(objects) + "\n</annotation>\n")


# -------------------------------------------------------------------------------------------------- export


def _images(world: World, start: int, stop: int) -> Iterator[SyntheticImage]:
    return (world[i] for i in range(start, stop))


def _write_cc(world: World, images: list[SyntheticImage], path: str, serializer: str) -> int:
    datapoints = [cc_datapoint(world, image, c) for image in images for c in image.captions]
    keys = [f"{i:08d}".encode("ascii") for i in range(len(datapoints))]
    entries = [(k, dumps_value(dp, serializer)) for k, dp in zip(keys, datapoints, strict=True)]
    _write_lmdb(path, [*entries, (b"__keys__", dumps_value(keys, serializer))], subdir=False)
    return len(datapoints)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def export_world(world_cfg: WorldConfig, val_images: int, out: str | os.PathLike,
                 serializer: str = "msgpack") -> ExportedWorld:
    """Writes the world (``world_cfg.num_images`` train images, then ``val_images`` held-out ones, the split
    ``jaxvl prepare --source synthetic`` makes) under ``out`` in VOLTA's formats (module doc). ``out`` must not
    hold an earlier export (LMDBs are not overwritten: ``ValueError``). Returns the paths and counts."""
    if val_images < 1:
        raise ValueError(f"val_images={val_images}: the export needs held-out images (validation, ablation)")
    root = os.path.abspath(os.fspath(out))
    cc, f30k, feats = (os.path.join(root, d) for d in (CC_DIR, F30K_DIR, FEATURES_DIR))
    if os.path.exists(os.path.join(cc, CC_TRAIN_LMDB)):
        raise ValueError(f"{root} already holds an exported world ({CC_DIR}/{CC_TRAIN_LMDB}); use a new --out")
    for d in (os.path.join(cc, "annotations"), os.path.join(f30k, "Sentences"), os.path.join(f30k, "Annotations"),
              feats):
        os.makedirs(d, exist_ok=True)
    n = world_cfg.num_images
    world = World(dataclasses.replace(world_cfg, num_images=n + val_images))
    splits = {"train": list(_images(world, 0, n)), "val": list(_images(world, n, n + val_images))}

    _write_text(os.path.join(root, "vocab.txt"), "\n".join([*SPECIAL_TOKENS, *world.vocabulary()]) + "\n")
    _write_text(os.path.join(root, "objects_vocab.txt"), "\n".join(world.class_names) + "\n")

    counts = {}
    for split, lmdb_name, json_name in (("train", CC_TRAIN_LMDB, "caption_train.json"),
                                        ("val", CC_VAL_LMDB, "caption_valid.json")):
        counts[split] = _write_cc(world, splits[split], os.path.join(cc, lmdb_name), serializer)
        captions = {volta_image_id(image): list(image.captions) for image in splits[split]}
        _write_text(os.path.join(cc, "annotations", json_name), json.dumps(captions, indent=0) + "\n")

    for split, images in splits.items():
        _write_text(os.path.join(f30k, f"{split}.txt"), "".join(f"{volta_image_id(i)}\n" for i in images))
        for image in images:
            sentences = [annotated_caption(world, image, s) for s in range(len(image.captions))]
            _write_text(os.path.join(f30k, "Sentences", f"{volta_image_id(image)}.txt"), "\n".join(sentences) + "\n")
            _write_text(os.path.join(f30k, "Annotations", f"{volta_image_id(image)}.xml"), annotation_xml(image))

    everything = splits["train"] + splits["val"]
    rows = [(volta_image_id(image).encode(), pickle.dumps(feature_row(world, image), protocol=3))
            for image in everything]
    keys = pickle.dumps([k for k, _ in rows], protocol=3)
    features = os.path.join(feats, FEATURE_LMDB)
    _write_lmdb(features, [*rows, (b"keys", keys)], subdir=True)
    basis = ""
    if world_cfg.colour_dims:
        basis = os.path.join(root, "colour_basis.npy")
        np.save(basis, world.colour_basis())
    return ExportedWorld(root=root, vocab=os.path.join(root, "vocab.txt"),
                         objects_vocab=os.path.join(root, "objects_vocab.txt"), cc_dir=cc, flickr30k_entities=f30k,
                         features=features, train_pairs=counts["train"], val_pairs=counts["val"],
                         val_phrases=sum(len(image.phrases) for image in splits["val"]), colour_basis=basis)


def world_from_source(text: str) -> tuple[WorldConfig, int]:
    """``synthetic:key=value,...`` (``jaxvl prepare``'s synthetic source string, or its knobs alone) ->
    (``WorldConfig``, ``val_images``)."""
    from jaxvl.data.builders.synthetic import parse_knobs, synthetic_config

    knobs = text.partition(":")[2] if text.startswith("synthetic") else text
    cfg = synthetic_config(**parse_knobs(knobs))
    return cfg.world, cfg.val_images


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The exporter's command-line arguments (``jaxvl world export`` and ``python -m``)."""
    p.add_argument("--out", required=True, help="a new directory for the files")
    p.add_argument("--world", default=DEMO_WORLD, help="the world: synthetic:KEY=VALUE,... as `jaxvl prepare --source` "
                   "takes it (WorldConfig knobs and val_images); default: the demo's world")
    p.add_argument("--serializer", choices=("msgpack", "pickle"), default="msgpack",
                   help="the CC LMDB values: msgpack (tensorpack 0.9.4, VOLTA's pin) or pickle (tensorpack >= 0.11)")


def run(args: argparse.Namespace) -> ExportedWorld:
    """Exports ``args.world`` to ``args.out`` and prints where each part went and the ``jaxvl prepare`` sources."""
    world_cfg, val_images = world_from_source(args.world)
    done = export_world(world_cfg, val_images, args.out, args.serializer)
    print(f"wrote the world ({world_cfg.num_images} train + {val_images} held-out images) in VOLTA's formats to "
          f"{done.root}:\n"
          f"  Conceptual Captions LMDBs   {done.cc_dir} ({done.train_pairs} train / {done.val_pairs} val pairs)\n"
          f"  Flickr30k Entities          {done.flickr30k_entities} ({done.val_phrases} val phrases)\n"
          f"  per-image feature LMDB      {done.features}\n"
          f"  BERT vocabulary             {done.vocab}\n"
          f"  detector classes (VG style) {done.objects_vocab}\n"
          + (f"  colour subspace basis       {done.colour_basis}\n" if done.colour_basis else "")
          + f"sources for `jaxvl prepare --source`:\n  {done.sources()['pretrain']}\n  {done.sources()['ablation']}")
    return done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jaxvl.data.synthetic.volta_files",
                                     description="Write a synthetic world in VOLTA's file formats.")
    add_arguments(parser)
    run(parser.parse_args())
