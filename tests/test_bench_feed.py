"""Feeding an accelerator (issue 16, part 4): ``jaxvl bench data --feed`` and image stores at object-store URLs.

The feed mode's rows and projection carry their fields (no timings asserted); an image store named by a
``gs://`` URL is opened through the same source with the URL handed unchanged to ArrayRecord (the object store
itself mocked: ``etils.epath.testing.mock_epath`` maps the bucket to a local directory), and a URL whose scheme
has no file-system backend here is one error naming it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils.epath import testing as epath_testing

from jaxvl.benchmarks.data_feed import FEED_HOST_CORES, FEED_TARGET, H200_VISUALBERT_BF16_MS
from jaxvl.cli import main
from jaxvl.data.builders.pretrain import PretrainPairs
from jaxvl.data.grain import open_split
from jaxvl.data.imagestore import ImageStorePairs, is_image_store
from jaxvl.data.resolve import resolve_dataset
from jaxvl.data.sources import build_source

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

BUCKET = "gs://jaxvl-test-bucket/stores"


def test_feed_rows_and_projection(tmp_path):
    out = tmp_path / "feed.json"
    argv = ["bench", "data", "--feed", "--images", "8", "--regions", "6", "--feature-dim", "8", "--classes", "12",
            "--batch", "4", "--read-examples", "12", "--threads", "1", "--workers", "0", "1",
            "--data-dir", str(tmp_path / "d"), "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    feed = [r for r in result["rows"] if r["stage"] == "feed"]
    assert [(r["layout"], r["threads"], r["workers"]) for r in feed] == [
        (layout, 1, w) for layout in ("pairs", "images float32", "images float16") for w in (0, 1)]
    for r in feed:
        assert r["examples"] >= 12 and r["examples"] % 4 == 0 and r["batch"] == 4
        assert r["batch_shapes"]["features"] == [4, 7, 8] and r["batch_shapes"]["cls_prob"] == [4, 7, 13]
        assert r["cpu_s"] >= 0 and r["cores_used"] >= 0
        for key in ("examples_per_s", "cpu_ms_per_example", "first_batch_s", "loadavg_1m_start"):
            assert key in r
    s = result["summary"]
    consumption = 1e3 / H200_VISUALBERT_BF16_MS
    assert s["host_cores"] == FEED_HOST_CORES and s["target"] == FEED_TARGET
    assert s["consumer_examples_per_s"] == pytest.approx(consumption)
    assert s["needed_examples_per_s"] == {"1": pytest.approx(FEED_TARGET * consumption),
                                          "8": pytest.approx(8 * FEED_TARGET * consumption)}
    assert "linear scaling" in s["assumption"] and "H100" in s["assumption"]
    rates = {r["what"]: r["examples_per_core_s"] for r in feed if r["examples_per_core_s"]}
    assert {p["what"] for p in s["projections"]} == set(rates)
    for p in s["projections"]:
        assert p["host_examples_per_s"] == pytest.approx(rates[p["what"]] * FEED_HOST_CORES)
        assert p["over_8_accelerators"] == pytest.approx(p["over_1_accelerators"] / 8)
        reaches = p["over_1_accelerators"] >= FEED_TARGET
        assert p["processes"] == (p["workers"] > 0)
        assert (p["what"] in s["reaching_target"]["1"]) == (reaches and p["processes"])
        assert (p["what"] in s["reaching_target_threads_only"]["1"]) == (reaches and not p["processes"])
    assert not (tmp_path / "d" / "jaxvl_synthetic_pretrain_images").exists()  # removed without --keep


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A small image store on local disk."""
    builder = build_source("synthetic:num_images=6,val_images=0,num_regions=6,feature_dim=8,num_classes=12,"
                           "layout=images", str(tmp_path_factory.mktemp("data"))).builders[0]
    builder.download_and_prepare()
    return builder.data_dir


def test_image_store_at_a_gs_url_reaches_array_record_unchanged(store, monkeypatch):
    url = f"{BUCKET}/images/1.0.0"

    def local(path) -> str:
        path = os.fspath(path)
        return store + path[len(url):] if path.startswith(url) else path

    opened: list[str] = []
    real = grain.sources.ArrayRecordDataSource

    def array_record(paths):
        opened.extend(paths)
        return real([local(p) for p in paths])

    monkeypatch.setattr(grain.sources, "ArrayRecordDataSource", array_record)
    with epath_testing.mock_epath(exists=lambda fn, p: fn(local(p)), isdir=lambda fn, p: fn(local(p)),
                                  open=lambda fn, p, mode: fn(local(p), mode)):
        assert is_image_store(url)
        assert resolve_dataset(url, "", "/nonexistent-workdir", PretrainPairs) == url
        source, info = open_split(url, "train")
        assert isinstance(source, ImageStorePairs) and info.splits["train"].num_examples == len(source)
        assert opened == [f"{url}/train-images.array_record", f"{url}/train-captions.array_record"]
        assert source.captions_path.startswith("gs://")
        mine, _ = open_split(store, "train")
        for i in range(len(source)):
            a, b = source[i], mine[i]
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed: it would go to the network")
def test_gs_url_without_a_backend_is_one_error_naming_it():
    url = f"{BUCKET}/images/1.0.0"
    with pytest.raises(ValueError, match=r"gs://jaxvl-test-bucket/stores/images/1\.0\.0/imagestore\.json: "
                                         r"cannot read this URL here \(.*gcsfs"):
        open_split(url, "train")
