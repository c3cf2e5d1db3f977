"""File readers on small files written in each format's exact layout, plus a malformed-input corpus.

Formats: bottom-up-attention TSV (13 / 10 / 6 fields), per-image npz (bottom-up-attention.pytorch and
flat layouts), Flickr30k Entities (Sentences / Annotations / split lists) and the Visual Genome
detector vocabulary. Every malformed case must raise with a message naming the file (and the record
where there is one); ``skip_bad`` must skip, count and report.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from minilm_files import minilm_zip

from jaxvl.data.readers.flickr30k_entities import (
    Flickr30kEntities,
    load_examples,
    parse_caption,
    phrase_token_span,
    read_annotation,
)
from jaxvl.data.readers.npz import NpzFeatureReader, parse_npz
from jaxvl.data.readers.tsv import FIELDS_BUTD, FIELDS_LXMERT, FIELDS_VOLTA, TsvFeatureReader, format_row, read_tsv
from jaxvl.data.readers.visual_genome import load_attributes_vocab, load_objects_vocab
from jaxvl.data.records import BadRecord, RegionFeatures
from jaxvl.data.tokenizer import Tokenizer

R, D, K1 = 4, 8, 1601  # regions, feature size, VG classes incl. background


def region(image_id: str = "1001", seed: int = 0, n: int = R, d: int = D) -> RegionFeatures:
    """A consistent detector record: boxes inside a 640x480 image, cls_prob rows summing to 1."""
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 300, n), rng.uniform(0, 200, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 300, n), y1 + rng.uniform(1, 250, n)], 1).astype(np.float32)
    cls_prob = rng.dirichlet(np.ones(K1), n).astype(np.float32)
    return RegionFeatures(image_id=image_id, image_h=480, image_w=640, boxes=boxes,
                          features=rng.standard_normal((n, d)).astype(np.float32), cls_prob=cls_prob,
                          objects_id=cls_prob[:, 1:].argmax(1).astype(np.int64),
                          objects_conf=cls_prob[:, 1:].max(1), attrs_id=rng.integers(0, 400, n),
                          attrs_conf=rng.uniform(0, 1, n).astype(np.float32))


def b64(arr: np.ndarray, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode()


def write_tsv(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def assert_same(a: RegionFeatures, b: RegionFeatures, fields=("boxes", "features", "cls_prob", "objects_id",
                                                              "objects_conf", "attrs_id", "attrs_conf")):
    assert (a.image_id, a.image_h, a.image_w) == (b.image_id, b.image_h, b.image_w)
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype, f
        np.testing.assert_array_equal(x, y, err_msg=f)


# ------------------------------------------------------------------------------------------------ TSV


def test_tsv_volta_layout_roundtrip(tmp_path):
    recs = [region("1001", 0), region("1002", 1, n=36, d=2048)]  # a real-size line: fields > csv's 128 KiB limit
    path = write_tsv(tmp_path / "flickr30k_obj36-36.tsv", [format_row(r) for r in recs])
    out = list(TsvFeatureReader(path, num_classes=K1))
    assert len(out) == 2
    for a, b in zip(out, recs, strict=True):
        assert_same(a, b)
        assert a.features.flags.writeable
    assert out[1].features.shape == (36, 2048) and out[1].cls_prob.shape == (36, K1)


def test_tsv_lxmert_and_butd_layouts(tmp_path):
    rec = region("COCO_val2014_000000000042")
    lx = write_tsv(tmp_path / "val2014_obj36.tsv", [format_row(rec, FIELDS_LXMERT)])
    (a,) = read_tsv(lx, feature_dim=D)
    assert_same(a, rec, ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf"))
    assert a.cls_prob is None
    # the Caffe generate_tsv.py layout: image_id, image_w, image_h (width first), num_boxes, boxes, features
    row = "\t".join([rec.image_id, "640", "480", str(R), b64(rec.boxes, "<f4"), b64(rec.features, "<f4")])
    bu = write_tsv(tmp_path / "trainval_resnet101_faster_rcnn_genome_36.tsv", [row])
    (b,) = read_tsv(bu)
    assert_same(b, rec, ("boxes", "features"))
    assert b.objects_id is None and len(FIELDS_BUTD) == 6


def test_tsv_python3_bytes_repr_and_header(tmp_path):
    rec = region("7")
    fields = format_row(rec, FIELDS_LXMERT).split("\t")
    encoded = {"objects_id", "objects_conf", "attrs_id", "attrs_conf", "boxes", "features"}
    fields = [f"b'{f}'" if name in encoded else f for name, f in zip(FIELDS_LXMERT, fields, strict=True)]
    path = write_tsv(tmp_path / "py3.tsv", ["\t".join(FIELDS_LXMERT), "\t".join(fields)])
    (a,) = read_tsv(path)
    assert_same(a, rec, ("boxes", "features", "objects_id"))


def test_tsv_is_lazy(tmp_path):
    path = write_tsv(tmp_path / "lazy.tsv", [format_row(region("1")), "2\t480\tbroken"])
    it = read_tsv(path)
    assert next(it).image_id == "1"  # the bad second line has not been read yet
    with pytest.raises(BadRecord, match="line 2"):
        next(it)


def test_tsv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.tsv"):
        TsvFeatureReader(tmp_path / "absent.tsv")


# ------------------------------------------------------------------------------------------------ npz


def save_milvlg(path: Path, rec: RegionFeatures, objects_1601: np.ndarray) -> None:
    """bottom-up-attention.pytorch's save_roi_features layout."""
    info = {"image_id": rec.image_id, "image_h": np.int64(rec.image_h), "image_w": rec.image_w,
            "num_boxes": rec.num_boxes, "objects_id": objects_1601, "objects_conf": rec.objects_conf,
            "attrs_id": rec.attrs_id + 1, "attrs_conf": rec.attrs_conf}
    np.savez_compressed(path, x=rec.features, bbox=rec.boxes, num_bbox=rec.num_boxes, image_h=rec.image_h,
                        image_w=rec.image_w, info=info)


def test_npz_milvlg_layout(tmp_path):
    rec = region("4567")
    ids = rec.objects_id + 1
    ids[0] = 0  # the argmax of this region was the background
    save_milvlg(tmp_path / "4567.npz", rec, ids)
    out = NpzFeatureReader(tmp_path, num_classes=K1)["4567"]
    assert_same(out, rec, ("boxes", "features", "attrs_id", "attrs_conf"))
    assert out.objects_id.tolist() == [-1, *rec.objects_id[1:].tolist()]
    assert out.objects_conf[0] == 0 and out.objects_conf[1:].tolist() == rec.objects_conf[1:].tolist()
    assert out.cls_prob is None
    raw = parse_npz(tmp_path / "4567.npz", info_ids_include_background=False)
    assert raw.objects_id.tolist() == ids.tolist()


def test_npz_flat_layout_directory(tmp_path):
    recs = [region(f"{i:03d}", i) for i in range(3)]
    for r in reversed(recs):
        np.savez(tmp_path / f"{r.image_id}.npz", features=r.features.astype(np.float64), boxes=r.boxes,
                 num_boxes=np.int64(r.num_boxes), img_h=r.image_h, img_w=r.image_w, cls_prob=r.cls_prob,
                 objects_id=r.objects_id, objects_conf=r.objects_conf)
    (tmp_path / "notes.txt").write_text("not a feature file")
    reader = NpzFeatureReader(tmp_path, feature_dim=D, num_classes=K1)
    assert reader.image_ids == ["000", "001", "002"] and len(reader) == 3 and "001" in reader
    out = list(reader)
    for a, b in zip(out, recs, strict=True):
        assert_same(a, b, ("boxes", "features", "cls_prob", "objects_id", "objects_conf"))  # float64 -> float32
    with pytest.raises(FileNotFoundError, match="999.npz"):
        reader["999"]


def test_npz_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        NpzFeatureReader(tmp_path / "nowhere")


def test_npz_info_only_plain_numeric_arrays(tmp_path):
    """``info`` goes through safe_pickle: object arrays and nested numeric arrays load, string arrays do not."""
    rec = region("5")
    extra = {"nested": [np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.array([1, "a", None], dtype=object)]}
    np.savez(tmp_path / "5.npz", x=rec.features, bbox=rec.boxes, image_h=rec.image_h, image_w=rec.image_w,
             info={"objects_id": rec.objects_id + 1, "objects_conf": rec.objects_conf, **extra})
    assert NpzFeatureReader(tmp_path)["5"].objects_id.tolist() == rec.objects_id.tolist()
    np.savez(tmp_path / "5.npz", x=rec.features, bbox=rec.boxes, image_h=rec.image_h, image_w=rec.image_w,
             info={"names": np.array(["dog", "cat"])})
    with pytest.raises(BadRecord, match="5.npz.*refusing array dtype 'U3'"):
        parse_npz(tmp_path / "5.npz")


class _Exploit:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# ------------------------------------------------------------------------------------ Flickr30k Entities

SENTENCES_100 = [
    "[/EN#1/people A man] in [/EN#2/clothing a red shirt] rides [/EN#3/animals a horse] on "
    "[/EN#4/scene the beach] .",
    "[/EN#1/people The rider] and [/EN#3/animals/other his horses] walk near [/EN#0/notvisual something] "
    "by [/EN#5/other the sea] .",
]
SENTENCES_200 = ["[/EN#7/people Two men] stand under [/EN#8/other a sign] ."]


def xml_object(names: list[str], box: tuple[int, int, int, int] | None = None, nobndbox: int = 0,
               scene: int = 0) -> str:
    body = "".join(f"<name>{n}</name>" for n in names)
    if box is not None:
        body += "<bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box,
                                                                        strict=True)) + "</bndbox>"
    else:
        body += f"<nobndbox>{nobndbox}</nobndbox><scene>{scene}</scene>"
    return f"<object>{body}</object>"


def annotation_xml(objects: list[str], width: int = 500, height: int = 375) -> str:
    return (f"<annotation><filename>x.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>")


ANN_100 = annotation_xml([
    xml_object(["1"], (1, 1, 10, 20)), xml_object(["1"], (5, 5, 15, 25)), xml_object(["3"], (20, 20, 50, 60)),
    xml_object(["2", "3"], (2, 3, 8, 9)), xml_object(["4"], nobndbox=0, scene=1),
    xml_object(["5"], nobndbox=1, scene=0)])
ANN_200 = annotation_xml([xml_object(["7"], (10, 10, 100, 200)), xml_object(["8"], (30, 40, 31, 41))])


def write_flickr(root: Path, images: dict[str, tuple[list[str] | None, str | None]], split: str = "val") -> Path:
    """``root/{split}.txt``, ``Sentences/<id>.txt``, ``Annotations/<id>.xml`` (None: file not written)."""
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    for image_id, (lines, xml) in images.items():
        if lines is not None:
            (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if xml is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
    return root


def test_flickr30k_examples(tmp_path):
    root = write_flickr(tmp_path, {"100": (SENTENCES_100, ANN_100), "200": (SENTENCES_200, ANN_200)})
    exs = load_examples(root, "val")
    got = [(e.image_id, e.sentence_index, e.phrase, e.first_word_index, e.entity_id, e.phrase_type) for e in exs]
    assert got == [("100", 0, "A man", 0, "1", "people"), ("100", 0, "a red shirt", 3, "2", "clothing"),
                   ("100", 0, "a horse", 7, "3", "animals"), ("100", 1, "The rider", 0, "1", "people"),
                   ("100", 1, "his horses", 3, "3", "animals/other"), ("200", 0, "Two men", 0, "7", "people"),
                   ("200", 0, "a sign", 4, "8", "other")]
    assert exs[0].sentence == "A man in a red shirt rides a horse on the beach ."
    assert exs[3].sentence == "The rider and his horses walk near something by the sea ."
    # every box of the chain, 0-based; a box naming two chains counts for both
    np.testing.assert_array_equal(exs[0].ref_boxes, [[0, 0, 9, 19], [4, 4, 14, 24]])
    np.testing.assert_array_equal(exs[2].ref_boxes, [[19, 19, 49, 59], [1, 2, 7, 8]])
    np.testing.assert_array_equal(exs[1].ref_boxes, [[1, 2, 7, 8]])
    assert all(e.ref_boxes.dtype == np.float32 for e in exs)
    for e in exs:
        words = e.sentence.split(" ")
        assert " ".join(words[e.first_word_index:e.first_word_index + len(e.phrase.split())]) == e.phrase


def test_flickr30k_annotation_fields(tmp_path):
    root = write_flickr(tmp_path, {"100": (SENTENCES_100, ANN_100)})
    ann = read_annotation(root / "Annotations" / "100.xml")
    assert (ann.width, ann.height, ann.scene, ann.nobox) == (500, 375, ["4"], ["5"])
    assert sorted(ann.boxes) == ["1", "2", "3"]


def test_parse_caption_types_and_positions():
    cap = parse_caption("x [/EN#12/clothing/bodyparts her blue gloves] y [/EN#3/people Him] .", "f: line 1")
    assert cap.sentence == "x her blue gloves y Him ."
    assert [(p.first_word_index, p.phrase, p.entity_id, p.phrase_types) for p in cap.phrases] == [
        (1, "her blue gloves", "12", ("clothing", "bodyparts")), (5, "Him", "3", ("people",))]


SYNTH_WORDS = ("a man in red shirt rides horse on the beach . rider and his walk near something by sea two men "
               "stand under sign ##s").split()


def test_phrase_token_span_synthetic_vocab(tmp_path):
    tok = Tokenizer.from_words(SYNTH_WORDS)
    root = write_flickr(tmp_path, {"100": (SENTENCES_100, ANN_100), "200": (SENTENCES_200, ANN_200)})
    for e in load_examples(root):
        start, end = phrase_token_span(tok, e.sentence, e.first_word_index, e.phrase)
        ids, mask = tok.encode(e.sentence)
        assert ids[0] == tok.cls_id and end <= int(mask.sum()) - 1
        assert tok.convert_ids_to_tokens(ids[start:end]) == tok.tokenize(e.phrase)
    s = "The rider and his horses walk near something by the sea ."
    assert phrase_token_span(tok, s, 3, "his horses") == (4, 7)  # [CLS] the rider and | his horse ##s |
    assert tok.tokenize(s)[3:6] == ["his", "horse", "##s"]


def volta_span(tok: Tokenizer, sentence: str, start_word: int, phrase: str) -> tuple[int, int]:
    """Section 5.1's procedure written out plainly (for the test), in [CLS]-prefixed coordinates."""
    words, subwords, target = sentence.lower().split(), tok.tokenize(sentence), tok.tokenize(phrase)
    first, w, rec = {}, 0, ""
    for i, sw in enumerate(subwords):
        if not rec:
            first[w] = i
        rec += sw[2:] if sw.startswith("##") else sw
        if rec == words[w]:
            rec, w = "", w + 1
    got, i = [], first[start_word]
    while got != target:
        got.append(subwords[i])
        i += 1
    return first[start_word] + 1, i + 1


@pytest.fixture(scope="module")
def minilm_tokenizer(tmp_path_factory) -> Tokenizer:
    import json
    import zipfile

    with zipfile.ZipFile(minilm_zip()) as zf:
        vocab = json.loads(zf.read("tokenizer.json"))["model"]["vocab"]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    return Tokenizer.from_vocab_file(path)


REAL_CAPTIONS = [
    "[/EN#283585/people A child] in [/EN#283587/clothing a pink dress] is climbing up [/EN#283586/other a set of "
    "stairs] in [/EN#283588/scene an entry way] .",
    "[/EN#1/people Two young , White males] are outside near [/EN#2/other many bushes] .",
    "[/EN#3/people A man] wearing [/EN#4/clothing a wet-suit] surfs [/EN#5/scene the unaffable waves] at "
    "[/EN#6/scene 6:30pm] with [/EN#7/other his dog's toy] .",
]


def test_phrase_token_span_matches_volta_procedure(minilm_tokenizer):
    tok = minilm_tokenizer
    for line in REAL_CAPTIONS:
        cap = parse_caption(line, "captions")
        for p in cap.phrases:
            span = phrase_token_span(tok, cap.sentence, p.first_word_index, p.phrase)
            assert span == volta_span(tok, cap.sentence, p.first_word_index, p.phrase), p.phrase
            ids, _ = tok.encode(cap.sentence)
            assert ids[span[0]:span[1]].tolist() == tok.token_ids(p.phrase)


def test_phrase_token_span_accents_and_unknown(minilm_tokenizer):
    """Where VOLTA's walk derails (accents: it compares 'café' with 'cafe'; [UNK]), the span is still exact."""
    tok = minilm_tokenizer
    s = "A Café owner holds a ☃ near the door"
    assert phrase_token_span(tok, s, 5, "☃ near") == (6, 8)
    assert tok.encode(s)[0][6:8].tolist() == [tok.unk_id, tok.token_to_id("near")]
    assert phrase_token_span(tok, s, 6, "near the door") == (7, 10)


# -------------------------------------------------------------------------------------- Visual Genome


def vg_lines(n: int) -> list[str]:
    lines = [f"thing{i}" for i in range(n)]
    lines[0], lines[16], lines[-1] = "yolk", "stop sign,stopsign", "T-Shirt,tshirt, t shirt"
    return lines


def test_visual_genome_vocab(tmp_path):
    path = tmp_path / "objects_vocab.txt"
    path.write_text("\n".join(vg_lines(1600)) + "\n", encoding="utf-8")
    vocab = load_objects_vocab(path)
    assert len(vocab) == 1601 and vocab.num_classes == 1600
    assert vocab.labels[0] == "__background__" and vocab.label(1) == "yolk" and vocab.k_label(0) == "yolk"
    assert vocab.index("stopsign") == vocab.index("Stop Sign") == 17 and vocab.k_index("stopsign") == 16
    assert vocab.label(1600) == "t-shirt" and vocab.index("t shirt") == 1600 and "tshirt" in vocab
    assert vocab.synonyms[17] == ("stop sign", "stopsign")
    with pytest.raises(KeyError, match="unicorn"):
        vocab.index("unicorn")
    with pytest.raises(KeyError, match="null class"):
        vocab.k_index("__background__")
    attrs = tmp_path / "attributes_vocab.txt"
    attrs.write_text("\n".join(f"attr{i}" for i in range(400)), encoding="utf-8")
    av = load_attributes_vocab(attrs)
    assert len(av) == 401 and av.labels[0] == "__no_attribute__" and av.k_index("attr0") == 0


# --------------------------------------------------------------------------------- malformed corpus
# Each case writes its files under tmp_path and returns (run, exception type, substrings the message holds).

Case = Callable[[Path], tuple[Callable[[], object], type, list[str]]]


def _tsv_case(rows: list[str], **kw):
    def make(tmp: Path):
        path = write_tsv(tmp / "feats.tsv", rows)
        return (lambda: list(TsvFeatureReader(path, **kw))), BadRecord, [str(path)]
    return make


def _tsv_rec(mutate: Callable[[RegionFeatures], None], image_id: str = "555") -> str:
    rec = region(image_id)
    mutate(rec)
    return format_row(rec)


def _set(rec: RegionFeatures, name: str, index, value) -> None:
    getattr(rec, name)[index] = value


GOOD_ROW = format_row(region("111"))
TRUNCATED_ROW = GOOD_ROW[: len(GOOD_ROW) // 2]  # cut inside a base64 field
FIELDS = GOOD_ROW.split("\t")


def _fields(**changes: str) -> str:
    f = list(FIELDS)
    for k, v in changes.items():
        f[FIELDS_VOLTA.index(k)] = v
    return "\t".join(f)


def _npz_case(write: Callable[[Path], None], **kw):
    def make(tmp: Path):
        path = tmp / "9876.npz"
        write(path)
        return (lambda: list(NpzFeatureReader(tmp, **kw))), BadRecord, [str(path), "'9876'"]
    return make


def _npz_flat(**over):
    rec = region("9876")
    arrays = {"features": rec.features, "boxes": rec.boxes, "image_h": 480, "image_w": 640,
              "cls_prob": rec.cls_prob, "objects_id": rec.objects_id}
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    return lambda path: np.savez(path, **arrays)


def _flickr_case(images: dict[str, tuple[list[str] | None, str | None]], needle: Callable[[Path], list[str]]):
    def make(tmp: Path):
        root = write_flickr(tmp, images)
        return (lambda: load_examples(root)), BadRecord, needle(root)
    return make


def _sent(root: Path, image_id: str, line: int | None = None) -> list[str]:
    return [str(root / "Sentences" / f"{image_id}.txt")] + ([f"line {line}"] if line else [])


def _ann(root: Path, image_id: str) -> list[str]:
    return [str(root / "Annotations" / f"{image_id}.xml")]


def _phrase_case(tmp: Path):
    tok = Tokenizer.from_words(SYNTH_WORDS)
    src = f"{tmp / 'Sentences' / '100.txt'}: line 2"
    return (lambda: phrase_token_span(tok, "the rider and his horses walk", 2, "his horses", source=src),
            BadRecord, [src, "'his horses'", "does not occur"])


def _vg_case(lines: list[str], exc: type, needles: list[str]):
    def make(tmp: Path):
        path = tmp / "objects_vocab.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return (lambda: load_objects_vocab(path)), exc, [str(path), *needles]
    return make


def _evil_info(path: Path) -> None:
    rec = region("9876")
    np.savez(path, x=rec.features, bbox=rec.boxes, image_h=480, image_w=640,
             info=np.array({"objects_id": _Exploit(path.with_suffix(".pwned"))}, dtype=object))


MALFORMED: dict[str, Case] = {
    # TSV
    "tsv-truncated-record": _tsv_case([GOOD_ROW, TRUNCATED_ROW]),
    "tsv-too-few-fields": _tsv_case([GOOD_ROW, "\t".join(FIELDS[:7])]),
    "tsv-unknown-layout": _tsv_case(["\t".join(FIELDS[:4])]),
    "tsv-bad-base64": _tsv_case([_fields(features="@@not*base64@@")]),
    "tsv-features-wrong-size": _tsv_case([_fields(features=b64(np.zeros(R * D + 1), "<f4"))]),
    "tsv-boxes-wrong-shape": _tsv_case([_fields(boxes=b64(np.zeros((R, 3)), "<f4"))]),
    "tsv-num-boxes-not-int": _tsv_case([_fields(num_boxes="four")]),
    "tsv-nan-features": _tsv_case([_tsv_rec(lambda r: _set(r, "features", (2, 3), np.nan))]),
    "tsv-inf-features": _tsv_case([_tsv_rec(lambda r: _set(r, "features", (0, 0), np.inf))]),
    "tsv-box-outside-image": _tsv_case([_tsv_rec(lambda r: _set(r, "boxes", (1, 2), 900.0))]),
    "tsv-box-x2-lt-x1": _tsv_case([_tsv_rec(lambda r: _set(r, "boxes", (1, 2), r.boxes[1, 0] - 5))]),
    "tsv-feature-dim": _tsv_case([GOOD_ROW], feature_dim=2048),
    "tsv-cls-prob-classes": _tsv_case([_fields(cls_prob=b64(np.full((R, 10), 0.1), "<f4"))], num_classes=K1),
    "tsv-objects-id-range": _tsv_case([_fields(objects_id=b64(np.full(R, 1600), "<i8"))], num_classes=K1),
    # npz
    "npz-not-a-zip": _npz_case(lambda p: p.write_bytes(b"PK\x03\x04 this is not really a zip")),
    "npz-truncated": _npz_case(lambda p: (_npz_flat()(p), p.write_bytes(p.read_bytes()[:200]))),
    "npz-no-features": _npz_case(_npz_flat(features=None)),
    "npz-int-features": _npz_case(_npz_flat(features=np.ones((R, D), np.int32))),
    "npz-features-3d": _npz_case(_npz_flat(features=np.ones((R, D, 2), np.float32))),
    "npz-features-rows": _npz_case(_npz_flat(features=np.ones((R + 1, D), np.float32))),
    "npz-num-boxes": _npz_case(_npz_flat(num_bbox=R + 2)),
    "npz-nan-features": _npz_case(_npz_flat(features=np.full((R, D), np.nan, np.float32))),
    "npz-box-outside": _npz_case(_npz_flat(boxes=np.tile(np.float32([[0, 0, 700, 10]]), (R, 1)))),
    "npz-forbidden-pickle": _npz_case(_evil_info),
    # Flickr30k Entities
    "flickr-missing-annotation": _flickr_case({"100": (SENTENCES_100, None)}, lambda r: _ann(r, "100")),
    "flickr-empty-annotation": _flickr_case({"100": (SENTENCES_100, "")}, lambda r: _ann(r, "100")),
    "flickr-malformed-xml": _flickr_case({"100": (SENTENCES_100, ANN_100[:-30])}, lambda r: _ann(r, "100")),
    "flickr-non-integer-box": _flickr_case(
        {"100": (SENTENCES_100, annotation_xml([xml_object(["1"], (1, 2, "x3", 4))]))},
        lambda r: _ann(r, "100") + ["chain 1", "'x3'"]),
    "flickr-flipped-box": _flickr_case(
        {"100": (SENTENCES_100, annotation_xml([xml_object(["1"], (30, 2, 10, 4))]))},
        lambda r: _ann(r, "100") + ["chain 1", "xmax < xmin"]),
    "flickr-missing-sentences": _flickr_case({"100": (None, ANN_100)}, lambda r: _sent(r, "100")),
    "flickr-empty-sentences": _flickr_case({"100": (["", "  "], ANN_100)}, lambda r: _sent(r, "100")),
    "flickr-unclosed-bracket": _flickr_case(
        {"100": ([SENTENCES_100[0], "[/EN#1/people A man] rides [/EN#3/animals a horse ."], ANN_100)},
        lambda r: _sent(r, "100", 2) + ["never closes"]),
    "flickr-unknown-entity-format": _flickr_case(
        {"100": (["[/XX#1/people A man] rides ."], ANN_100)}, lambda r: _sent(r, "100", 1) + ["[/XX#1/people"]),
    "flickr-entity-id-not-numeric": _flickr_case(
        {"100": (["[/EN#one/people A man] rides ."], ANN_100)}, lambda r: _sent(r, "100", 1) + ["[/EN#one"]),
    "flickr-nested-bracket": _flickr_case(
        {"100": (["[/EN#1/people A [/EN#2/other man] rides ."], ANN_100)}, lambda r: _sent(r, "100", 1)),
    "flickr-phrase-not-in-sentence": _phrase_case,
    # Visual Genome vocabulary
    "vg-empty-line": _vg_case(["yolk", "", "goal"], BadRecord, ["line 2"]),
    "vg-empty-synonym": _vg_case(["yolk", "stop sign,,stopsign"], BadRecord, ["line 2"]),
    "vg-wrong-count": _vg_case(vg_lines(1599), ValueError, ["1599 classes, expected 1600"]),
}


def test_malformed_corpus_is_large_enough():
    assert len(MALFORMED) >= 14
    assert {k.split("-")[0] for k in MALFORMED} == {"tsv", "npz", "flickr", "vg"}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_names_file_and_record(tmp_path, name):
    run, exc, needles = MALFORMED[name](tmp_path)
    with pytest.raises(exc) as info:
        run()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


@pytest.mark.parametrize("name", ["tsv-truncated-record", "tsv-nan-features", "tsv-bad-base64"])
def test_tsv_messages_name_the_line_and_image(tmp_path, name):
    run, _, _ = MALFORMED[name](tmp_path)
    with pytest.raises(BadRecord, match=r"feats\.tsv: line \d+") as info:
        run()
    assert "111" in str(info.value) or "555" in str(info.value)


# ------------------------------------------------------------------------------------------- skip_bad


def test_tsv_skip_bad_counts_and_reports(tmp_path, caplog):
    rows = [format_row(region("1")), TRUNCATED_ROW, format_row(region("2", 2)),
            _tsv_rec(lambda r: _set(r, "features", (0, 0), np.nan), "3"), format_row(region("4", 4))]
    path = write_tsv(tmp_path / "mixed.tsv", rows)
    with pytest.raises(BadRecord):
        list(TsvFeatureReader(path))
    reader = TsvFeatureReader(path, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        out = list(reader)
    assert [r.image_id for r in out] == ["1", "2", "4"] and reader.skipped == 2
    assert f"{path}: skipped 2 bad records" in caplog.text
    assert len(list(reader)) == 3 and reader.skipped == 2  # a second pass counts afresh


def test_npz_skip_bad_counts_and_reports(tmp_path, caplog):
    for i in range(3):
        r = region(str(i), i)
        np.savez(tmp_path / f"{i}.npz", features=r.features, boxes=r.boxes, image_h=480, image_w=640)
    (tmp_path / "7.npz").write_bytes(b"garbage")
    _evil_info(tmp_path / "8.npz")
    reader = NpzFeatureReader(tmp_path, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        out = list(reader)
    assert [r.image_id for r in out] == ["0", "1", "2"] and reader.skipped == 2
    assert "skipped 2 bad records" in caplog.text


def test_flickr_skip_bad_counts_and_reports(tmp_path, caplog):
    bad_line = "[/EN#1/people The rider] and [/EN#3/animals his horse walk ."
    root = write_flickr(tmp_path, {"100": ([SENTENCES_100[0], bad_line, SENTENCES_100[1]], ANN_100),
                                   "150": (SENTENCES_200, None), "200": (SENTENCES_200, ANN_200)})
    with pytest.raises(BadRecord):
        load_examples(root)
    ds = Flickr30kEntities(root, "val", skip_bad=True)
    with caplog.at_level(logging.WARNING):
        exs = list(ds)
    assert ds.skipped == 2  # one caption line of image 100, and image 150 (no annotation file)
    assert [(e.image_id, e.sentence_index) for e in exs] == [("100", 0)] * 3 + [("100", 2)] * 2 + [("200", 0)] * 2
    assert "skipped 2 bad records" in caplog.text and "150.xml" in caplog.text


def test_flickr_missing_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        Flickr30kEntities(tmp_path, "test")


def test_vg_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="objects_vocab.txt"):
        load_objects_vocab(tmp_path / "objects_vocab.txt")


def test_pickle_exploit_is_refused_before_running(tmp_path):
    path = tmp_path / "9876.npz"
    _evil_info(path)
    with pytest.raises(BadRecord, match="refusing to unpickle global posix.system|refusing to unpickle global os"):
        parse_npz(path)
    assert not path.with_suffix(".pwned").exists()
    with np.load(path, allow_pickle=True) as z:  # the exploit is real: a plain pickle load runs it
        z["info"]
    assert path.with_suffix(".pwned").exists()
