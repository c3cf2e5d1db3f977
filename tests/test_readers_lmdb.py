"""VOLTA LMDB readers: round trips in both layouts, hostile input refused, malformed input named and skippable."""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections import OrderedDict

import msgpack
import numpy as np
import pytest
from lmdb_fixtures import (
    CC_FIELDS,
    EvalCall,
    SystemCall,
    b64,
    cc_datapoint,
    dumps_msgpack,
    feature_entries,
    tensorpack_entries,
    tsv_row,
    write_lmdb,
)

from jaxvl.data.readers.volta_lmdb import (
    ConceptualCaptionsLMDB,
    FeatureLMDB,
    UnsafeData,
    read_caption_json,
    read_cc_lmdb,
    read_feature_lmdb,
    safe_pickle_loads,
)
from jaxvl.data.records import BadRecord

D, K = 8, 5  # small feature dim / class count (incl. background) for the tests
SMALL = {"feature_dim": D, "num_classes": K}


def _cc(tmp_path, n=4, serializer="msgpack", subdir=False, as_str=True, seed=0):
    rng = np.random.default_rng(seed)
    dps = [cc_datapoint(rng, str(1000 + i), num_boxes=2 + i, feature_dim=D, num_classes=K, as_str=as_str)
           for i in range(n)]
    return dps, tensorpack_entries(dps, serializer)


def _check_pair(pair, dp):
    f = dict(zip(CC_FIELDS, dp, strict=True))
    reg = pair.regions
    assert pair.caption == f["caption"] and reg.image_id == f["image_id"]
    assert (reg.image_h, reg.image_w, reg.num_boxes) == (int(f["h"]), int(f["w"]), int(f["num_boxes"]))
    for name in ("features", "cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "boxes"):
        got = getattr(reg, name)
        assert got.dtype == f[name].dtype, name
        np.testing.assert_array_equal(got, f[name], err_msg=name)


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("subdir", [False, True], ids=["single-file", "directory"])
@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
def test_cc_round_trip(tmp_path, subdir, serializer):
    dps, entries = _cc(tmp_path, serializer=serializer)
    path = write_lmdb(tmp_path / "training_feat_all.lmdb", entries.items(), subdir)
    assert path.is_dir() == subdir
    if not subdir:
        assert (tmp_path / "training_feat_all.lmdb-lock").exists()
    pairs = list(read_cc_lmdb(path, **SMALL))
    assert len(pairs) == len(dps)
    for pair, dp in zip(pairs, dps, strict=True):
        _check_pair(pair, dp)
    with ConceptualCaptionsLMDB(path, **SMALL) as reader:
        assert len(reader) == 4
        _check_pair(reader[2], dps[2])
        _check_pair(pickle.loads(pickle.dumps(reader))[1], dps[1])  # picklable for worker processes


def test_cc_int_fields_and_numpy_scalars(tmp_path):
    rng = np.random.default_rng(1)
    dp = cc_datapoint(rng, "7", feature_dim=D, num_classes=K, as_str=False)
    dp[8], dp[9] = np.int64(dp[8]), np.int32(dp[9])  # msgpack-numpy scalar maps ({b'nd': False})
    dp[11] = dp[11].encode()  # image id as bytes
    path = write_lmdb(tmp_path / "x.lmdb", tensorpack_entries([dp]).items(), False)
    (pair,) = read_cc_lmdb(path, **SMALL)
    assert pair.regions.image_id == "7" and pair.regions.image_h == 60 and pair.regions.num_boxes == 3


def test_cc_big_endian_arrays_read_as_native(tmp_path):
    rng = np.random.default_rng(2)
    dp = cc_datapoint(rng, "8", feature_dim=D, num_classes=K)
    want = dp[0].copy()
    dp[0] = dp[0].astype(">f4")
    path = write_lmdb(tmp_path / "x.lmdb", tensorpack_entries([dp]).items(), False)
    (pair,) = read_cc_lmdb(path, **SMALL)
    assert pair.regions.features.dtype == np.float32
    np.testing.assert_array_equal(pair.regions.features, want)


def test_cc_volta_sizes_by_default(tmp_path):
    rng = np.random.default_rng(3)
    dp = cc_datapoint(rng, "3391", num_boxes=36, feature_dim=2048, num_classes=1601, num_attrs=401, h=480, w=640)
    path = write_lmdb(tmp_path / "validation_feat_all.lmdb", tensorpack_entries([dp]).items(), False)
    (pair,) = read_cc_lmdb(path)
    _check_pair(pair, dp)
    with pytest.raises(BadRecord, match="expected 2047"):
        next(read_cc_lmdb(path, feature_dim=2047))


def test_cc_matches_real_msgpack_numpy(tmp_path):
    """Our writer's bytes equal msgpack-numpy's, so the reader is tested on the real encoding."""
    mn = pytest.importorskip("msgpack_numpy")
    dps, _ = _cc(tmp_path, n=2)
    for dp in dps:
        assert msgpack.packb(dp, use_bin_type=True, default=mn.encode) == dumps_msgpack(dp)


@pytest.mark.parametrize("protocol,ordered", [(3, True), (4, False), (2, True), (5, False)])
@pytest.mark.parametrize("subdir", [True, False], ids=["directory", "single-file"])
def test_feature_lmdb_round_trip(tmp_path, protocol, ordered, subdir):
    rng = np.random.default_rng(protocol)
    rows = [(str(i), *tsv_row(rng, str(i), num_boxes=1 + i % 3, feature_dim=D, num_classes=K, ordered=ordered))
            for i in (1000092795, 10002456, 1000268201)]
    path = write_lmdb(tmp_path / "flickr30k_feat.lmdb",
                      feature_entries([(i, r) for i, r, _ in rows], protocol).items(), subdir)
    db = FeatureLMDB(path, **SMALL)
    assert db.keys() == [i for i, _, _ in rows] and len(db) == 3
    assert 10002456 in db and "10002456" in db and "999" not in db
    for image_id, _, arrays in rows:
        for key in (image_id, int(image_id)):
            rec = db[key]
            assert rec.image_id == image_id and (rec.image_h, rec.image_w) == (60, 80)
            for name in ("features", "cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "boxes"):
                assert getattr(rec, name).dtype == arrays[name].dtype
                np.testing.assert_array_equal(getattr(rec, name), arrays[name], err_msg=name)
    assert [r.image_id for r in read_feature_lmdb(path, **SMALL)] == db.keys()
    with pytest.raises(KeyError, match="999"):
        db["999"]


def test_feature_lmdb_ten_column_tsv_and_array_rows(tmp_path):
    """LXMERT-style 10-column TSV rows (no cls_prob) and rows holding numpy arrays (VOLTA's fallback branch)."""
    rng = np.random.default_rng(9)
    short, arrays = tsv_row(rng, "1", feature_dim=D, num_classes=K)
    for k in ("cls_prob", "attrs", "classes"):
        short[k] = None  # DictReader's restval for missing columns
    as_arrays, arrays2 = tsv_row(rng, "2", feature_dim=D, num_classes=K)
    as_arrays["features"], as_arrays["boxes"] = arrays2["features"], arrays2["boxes"]
    path = write_lmdb(tmp_path / "f.lmdb", feature_entries([("1", short), ("2", as_arrays)]).items(), True)
    a, b = read_feature_lmdb(path, **SMALL)
    assert a.cls_prob is None and a.objects_id is not None
    np.testing.assert_array_equal(a.features, arrays["features"])
    np.testing.assert_array_equal(b.features, arrays2["features"])
    np.testing.assert_array_equal(b.boxes, arrays2["boxes"])


def test_read_caption_json(tmp_path):
    good = tmp_path / "caption_valid.json"
    good.write_text(json.dumps({"3391": "a dog on a beach", "12": ["one", "two"]}))
    assert read_caption_json(good) == {"3391": "a dog on a beach", "12": ["one", "two"]}
    for name, text, msg in [("bad.json", "{'a': 1", "not valid JSON"), ("list.json", '["a", "b"]', "JSON list"),
                            ("num.json", '{"5": 3}', "image '5'"), ("empty.json", '{"6": " "}', "image '6'"),
                            ("nested.json", '{"7": [["x"]]}', "image '7'")]:
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(ValueError, match=re.escape(str(p)) + ".*" + re.escape(msg)):
            read_caption_json(p)


# ------------------------------------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("attack", [SystemCall, EvalCall])
@pytest.mark.parametrize("where", ["cc-value", "cc-keys", "feature-row", "feature-field", "feature-keys"])
def test_malicious_pickle_refused_before_it_runs(tmp_path, attack, where):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(attack(control), protocol=3))  # the payload is live under plain pickle ...
    assert control.exists()
    marker = tmp_path / "pwned"
    evil = attack(marker)  # ... and never runs under the readers
    rng = np.random.default_rng(0)
    if where.startswith("cc"):
        _, entries = _cc(tmp_path, n=2)
        if where == "cc-value":
            entries[b"00000001"] = pickle.dumps(evil, protocol=3)
        else:
            entries[b"__keys__"] = pickle.dumps([b"00000000", evil], protocol=4)
        path = write_lmdb(tmp_path / "cc.lmdb", entries.items(), False)
        with pytest.raises(BadRecord, match="refusing to unpickle global (posix|os|nt).system|builtins.eval"):
            list(read_cc_lmdb(path, **SMALL))
    else:
        row, _ = tsv_row(rng, "5", feature_dim=D, num_classes=K)
        if where == "feature-field":
            row["features"] = evil
        entries = feature_entries([("5", evil if where == "feature-row" else row)])
        if where == "feature-keys":
            entries[b"keys"] = pickle.dumps([b"5", evil], protocol=3)
        path = write_lmdb(tmp_path / "f.lmdb", entries.items(), True)
        with pytest.raises(BadRecord, match="refusing to unpickle global"):
            FeatureLMDB(path, **SMALL)["5"]
    assert not marker.exists()


def test_safe_unpickler_refusals(tmp_path):
    marker = tmp_path / "pwned"
    od = OrderedDict(a="1", b=[b"x", (1, 2.5)], c={3, 4}, d=np.arange(4, dtype=np.int64).reshape(2, 2))
    for protocol in (2, 3, 4, 5):
        got = safe_pickle_loads(pickle.dumps(od, protocol=protocol))
        assert type(got) is OrderedDict and got.keys() == od.keys() and got["c"] == {3, 4}
        np.testing.assert_array_equal(got["d"], od["d"])
    for obj, msg in [(np.array([1, "a"], dtype=object), "dtype 'O8'"),
                     (np.zeros(2, dtype=[("x", "f4")]), "dtype 'V4'"),
                     (np.zeros(3, dtype="U2"), "dtype 'U2'"),
                     (np.ma.masked_array([1.0]), "numpy.ma"),
                     (pickle.loads, "_pickle.loads"), (getattr, "builtins.getattr")]:
        with pytest.raises(UnsafeData, match=re.escape(msg)):
            safe_pickle_loads(pickle.dumps(obj, protocol=3))
    # pickles written under numpy 1.x name numpy.core.multiarray (GLOBAL text opcodes in protocols <= 3)
    old = pickle.dumps([np.float32([[1.5, 2]]), np.int64(7)], protocol=3).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray\n_reconstruct" in old
    arr, scalar = safe_pickle_loads(old)
    assert arr.dtype == np.float32 and arr.tolist() == [[1.5, 2.0]] and scalar == 7 and type(scalar) is np.int64
    # NEWOBJ skips a stand-in's __init__; BUILD must not plant an arbitrary object in it
    planted = b"\x80\x02cnumpy.core.multiarray\nscalar\n)\x81}X\x05\x00\x00\x00valueccollections\nOrderedDict\nsb."
    with pytest.raises(UnsafeData, match="scalar state"):
        safe_pickle_loads(planted)
    with pytest.raises(UnsafeData, match="holds a type"):  # a class is not data
        safe_pickle_loads(b"\x80\x02ccollections\nOrderedDict\n.")
    with pytest.raises(UnsafeData, match="persistent id"):
        safe_pickle_loads(b"\x80\x03X\x01\x00\x00\x00aQ.")
    assert not marker.exists()


@pytest.mark.parametrize("kind,descr,msg", [(b"O", [["", "|O"]], "refusing msgpack-numpy array of kind b'O'"),
                                             (b"", "|O", "refusing array dtype '|O'")],
                         ids=["msgpack-numpy-0.4.8", "msgpack-numpy-0.4.4"])
def test_object_array_msgpack_refused(tmp_path, kind, descr, msg):
    marker = tmp_path / "pwned"
    _, entries = _cc(tmp_path, n=2)
    dp = msgpack.unpackb(entries[b"00000001"], raw=False)
    # msgpack-numpy writes an object array's data as a pickle (kind b'O' since 0.4.5, b'' before); its decoder
    # would pickle.loads it.
    dp[0] = {b"nd": True, b"type": descr, b"kind": kind, b"shape": [1],
             b"data": pickle.dumps(np.array([SystemCall(marker)], dtype=object), protocol=2)}
    entries[b"00000001"] = msgpack.packb(dp, use_bin_type=True)
    path = write_lmdb(tmp_path / "cc.lmdb", entries.items(), False)
    with pytest.raises(BadRecord, match=r"'00000001'.*" + re.escape(msg)):
        list(read_cc_lmdb(path, **SMALL))
    entries[b"00000001"] = msgpack.packb([msgpack.ExtType(5, b"x")] * 13, use_bin_type=True)
    path = write_lmdb(tmp_path / "cc2.lmdb", entries.items(), False)
    with pytest.raises(BadRecord, match="ext type 5"):
        list(read_cc_lmdb(path, **SMALL))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ malformed corpus


def _set(i, value):
    def mutate(dp):
        dp[CC_FIELDS.index(i)] = value(dp) if callable(value) else value
        return dp
    return mutate


def _nan(dp):
    f = dp[0].copy()
    f[1, 3] = np.nan
    return f


def _inf(dp):
    f = dp[0].copy()
    f[0, 0] = -np.inf
    return f


def _flip(dp):
    b = dp[7].copy()
    b[1, [0, 2]] = b[1, [2, 0]]
    return b


def _outside(dp):
    b = dp[7].copy()
    b[0, 2] = 500.0
    return b


# name -> (mutate datapoint, or (entries -> None) on the raw LMDB entries, message regex)
CC_CASES = {
    "truncated-value": (None, lambda e: e.update({b"00000002": e[b"00000002"][:-100]}), "cannot decode"),
    "garbage-value": (None, lambda e: e.update({b"00000002": b"\xc1\xff junk"}), "cannot decode"),
    "features-wrong-dim": (_set("features", lambda dp: np.zeros((4, D + 1), np.float32)), None, r"expected 8"),
    "features-1d": (_set("features", lambda dp: dp[0].reshape(-1)), None, "features must be 2-D"),
    "features-int-dtype": (_set("features", lambda dp: dp[0].astype(np.int32)), None, "floating point"),
    "ids-float-dtype": (_set("objects_id", lambda dp: dp[2].astype(np.float32)), None, "objects_id must be integer"),
    "features-nan": (_set("features", _nan), None, "NaN or Inf"),
    "features-inf": (_set("features", _inf), None, "NaN or Inf"),
    "box-outside-image": (_set("boxes", _outside), None, "outside the 80x60 image"),
    "box-x2-lt-x1": (_set("boxes", _flip), None, "x2 < x1"),
    "missing-field": (lambda dp: dp[:-1], None, "must have 13 fields"),
    "missing-caption": (_set("caption", None), None, "'caption' is missing"),
    "empty-caption": (_set("caption", ""), None, "caption is empty"),
    "blank-caption": (_set("caption", " \t"), None, "caption is empty"),
    "key-listed-but-absent": (None, lambda e: e.pop(b"00000002"), "listed in '__keys__' but absent"),
    "num-boxes-not-numeric": (_set("num_boxes", "thirty-six"), None, "num_boxes must be an integer"),
    "num-boxes-mismatch": (_set("num_boxes", "9"), None, "num_boxes is 9"),
    "cls-prob-wrong-classes": (_set("cls_prob", lambda dp: dp[1][:, 1:]), None, "4 classes, expected 5"),
    "height-not-numeric": (_set("h", "tall"), None, "h must be an integer"),
    "zero-width": (_set("w", "0"), None, "not positive"),
    "zero-boxes": (lambda dp: _set("num_boxes", "0")(_set("features", np.zeros((0, D), np.float32))(dp)), None,
                   "num_boxes must be positive"),
}


@pytest.mark.parametrize("case", list(CC_CASES))
def test_cc_malformed(tmp_path, case, caplog):
    mutate_dp, mutate_entries, msg = CC_CASES[case]
    rng = np.random.default_rng(0)
    dps = [cc_datapoint(rng, str(1000 + i), num_boxes=4, feature_dim=D, num_classes=K) for i in range(4)]
    if mutate_dp:
        dps[2] = mutate_dp(dps[2])
    entries = tensorpack_entries(dps)
    if mutate_entries:
        mutate_entries(entries)
    path = write_lmdb(tmp_path / "cc.lmdb", entries.items(), False)
    with pytest.raises(BadRecord, match=re.escape(str(path)) + r".*'00000002'.*" + msg):
        list(read_cc_lmdb(path, **SMALL))
    reader = ConceptualCaptionsLMDB(path, skip_bad=True, **SMALL)
    with caplog.at_level(logging.WARNING):
        got = [p.regions.image_id for p in reader]
    assert got == ["1000", "1001", "1003"] and reader.errors.skipped == 1
    assert f"{path}: skipped 1 bad records" in caplog.text


def _drop(name):
    def mutate(row):
        del row[name]
        return row
    return mutate


def _field(name, value):
    def mutate(row):
        row[name] = value(row) if callable(value) else value
        return row
    return mutate


def _f64_features(row):
    return b64(np.frombuffer(__import__("base64").b64decode(row["features"]), np.float32).astype(np.float64))


def _nan_features(row):
    f = np.frombuffer(__import__("base64").b64decode(row["features"]), np.float32).copy()
    f[5] = np.nan
    return b64(f)


def _flip_boxes(row):
    b = np.frombuffer(__import__("base64").b64decode(row["boxes"]), np.float32).reshape(-1, 4)[:, [2, 1, 0, 3]]
    return b64(b)


FEATURE_CASES = {
    "truncated-pickle": (None, lambda e: e.update({b"202": e[b"202"][:-50]}), "cannot decode"),
    "not-a-dict": (None, lambda e: e.update({b"202": pickle.dumps(["a"], protocol=3)}), "must be a dict"),
    "features-float64": (_field("features", _f64_features), None, "expected 3 x 8"),
    "features-wrong-length": (_field("features", lambda r: b64(np.zeros(25, np.float32))), None, "3 x 8"),
    "features-bad-base64": (_field("features", "@@not base64@@"), None, "not valid base64"),
    "features-nan": (_field("features", _nan_features), None, "NaN or Inf"),
    "box-outside-image": (_field("boxes", lambda r: b64(np.array([[0, 0, 90, 10]] * 3, np.float32))), None,
                          "outside"),
    "box-x2-lt-x1": (_field("boxes", _flip_boxes), None, "x2 < x1"),
    "missing-features": (_drop("features"), None, r"missing field\(s\) \['features'\]"),
    "missing-img-h": (_drop("img_h"), None, "missing field"),
    "num-boxes-not-numeric": (_field("num_boxes", "3 boxes"), None, "num_boxes must be an integer"),
    "cls-prob-wrong-classes": (_field("cls_prob", lambda r: b64(np.zeros((3, 7), np.float32))), None,
                               "7 classes, expected 5"),
    "objects-id-short": (_field("objects_id", lambda r: b64(np.zeros(2, np.int64))), None, "objects_id has 2"),
    "img-id-differs-from-key": (_field("img_id", "999"), None, "differs from its LMDB key"),
    "key-listed-but-absent": (None, lambda e: e.pop(b"202"), "listed in 'keys' but absent"),
}


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_feature_lmdb_malformed(tmp_path, case, caplog):
    mutate_row, mutate_entries, msg = FEATURE_CASES[case]
    rng = np.random.default_rng(0)
    rows = [(str(200 + i), tsv_row(rng, str(200 + i), feature_dim=D, num_classes=K)[0]) for i in range(4)]
    if mutate_row:
        rows[2] = (rows[2][0], mutate_row(rows[2][1]))
    entries = feature_entries(rows)
    if mutate_entries:
        mutate_entries(entries)
    path = write_lmdb(tmp_path / "feat.lmdb", entries.items(), True)
    pattern = re.escape(str(path)) + r".*'202'.*" + msg
    with pytest.raises(BadRecord, match=pattern):
        FeatureLMDB(path, **SMALL)["202"]
    with pytest.raises(BadRecord, match=pattern):
        list(read_feature_lmdb(path, **SMALL))
    reader = FeatureLMDB(path, skip_bad=True, **SMALL)
    with caplog.at_level(logging.WARNING):
        got = [r.image_id for r in reader]
    assert got == ["200", "201", "203"] and reader.errors.skipped == 1
    assert f"{path}: skipped 1 bad records" in caplog.text


@pytest.mark.parametrize("layout", ["cc", "feature"])
def test_file_level_errors(tmp_path, layout):
    """No key list, an empty key list, an empty LMDB, a non-LMDB: clear errors even with skip_bad."""
    if layout == "cc":
        reader, list_key = ConceptualCaptionsLMDB, b"__keys__"
        _, entries = _cc(tmp_path, n=2)
        empty_list = dumps_msgpack([])
    else:
        reader, list_key = FeatureLMDB, b"keys"
        entries = feature_entries([("1", tsv_row(np.random.default_rng(0), "1", feature_dim=D, num_classes=K)[0])])
        empty_list = pickle.dumps([], protocol=3)
    no_keys = {k: v for k, v in entries.items() if k != list_key}
    name = list_key.decode()
    for fname, ents, exc, msg in [("nokeys", no_keys, BadRecord, f"record '{name}': missing"),
                                  ("emptylist", {**entries, list_key: empty_list}, ValueError, "holds no records"),
                                  ("empty", {}, ValueError, "the LMDB is empty"),
                                  ("badlist", {**entries, list_key: b"\x80\x03K\x05."}, BadRecord, "list of bytes")]:
        path = write_lmdb(tmp_path / f"{fname}.lmdb", ents.items(), False)
        with pytest.raises(exc, match=re.escape(str(path)) + ".*" + msg):
            reader(path, skip_bad=True, **SMALL)
    not_lmdb = tmp_path / "plain.lmdb"
    not_lmdb.write_bytes(b"x" * 10000)
    with pytest.raises(ValueError, match=re.escape(str(not_lmdb)) + ".*cannot open as an LMDB"):
        reader(not_lmdb)
    with pytest.raises(FileNotFoundError, match="missing.lmdb"):
        reader(tmp_path / "missing.lmdb")
