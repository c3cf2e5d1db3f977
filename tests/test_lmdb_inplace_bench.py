"""``jaxvl bench data --in-place``: the in-place rows sit beside the ArrayRecord rows, over the same pairs."""

from __future__ import annotations

import json

from jaxvl.cli import main


def test_bench_data_reads_the_same_pairs_in_place(tmp_path):
    out = tmp_path / "data.json"
    argv = ["bench", "data", "--images", "8", "--regions", "6", "--feature-dim", "8", "--classes", "12",
            "--part-images", "4", "--part-examples", "8", "--batch", "4", "--read-examples", "32", "--threads", "1",
            "--workers", "0", "--no-model", "--in-place", "--data-dir", str(tmp_path / "d"), "--out", str(out)]
    assert main(argv) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if r["stage"] == "read"]
    kinds = [(r["path"], r["what"].split(" (")[0].split(":")[0]) for r in rows]
    assert kinds == [("ArrayRecord", "data source only"), ("ArrayRecord", "PretrainTransform only"),
                     ("ArrayRecord", "Grain pipeline"), ("in place", "data source only"),
                     ("in place", "Grain pipeline")]
    assert [r["examples"] for r in rows] == [8, 8, 28, 8, 28]  # the pipeline: 2 epochs of 16 pairs, first batch apart
    assert rows[2]["batch_shapes"] == rows[4]["batch_shapes"]
    assert not (tmp_path / "d" / "conceptual_captions").exists()  # removed with the ArrayRecord dataset
