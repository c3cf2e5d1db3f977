"""``jaxvl prepare --workers N`` / ``--beam-runner``: the builders' splits as an Apache Beam pipeline
(``jaxvl.data.builders.beam``, shard plans in ``jaxvl.data.prepare_shards``).

Beam's DirectRunner with 2 worker processes writes the same records as the single-process build, compared
record by record, order aside: the synthetic world (pairs and grounded phrases) and a VOLTA-style CC LMDB
(``export_world``). A corrupted LMDB record fails the build with one line naming the file and key, or with
``--skip-bad`` is skipped and counted (a Beam counter, in the summary and the metadata).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from lmdb_fixtures import corrupt_record

from jaxvl.cli import main
from jaxvl.data.builders.beam import ShardedSplit, bad_record_in, index_ranges, pipeline_options
from jaxvl.data.grain import open_split
from jaxvl.data.prepare_shards import shard_plans
from jaxvl.data.records import BadRecord
from jaxvl.data.sources import parse_source
from jaxvl.data.synthetic.volta_files import CC_TRAIN_LMDB, export_world
from jaxvl.data.synthetic.world import WorldConfig

pytest.importorskip("apache_beam", reason="apache-beam is not installed (the beam extra: pip install 'jaxvl[beam]')")

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

SYNTHETIC = "synthetic:num_images=12,val_images=4,num_regions=5,feature_dim=8,num_classes=12,max_objects=3"
WORLD = WorldConfig(num_images=16, num_regions=4, feature_dim=6, num_classes=12, min_objects=1, max_objects=2)
VAL_IMAGES = 4  # 32 train pairs, 8 val pairs
BAD_KEY = b"00000005"


def prepare(capsys, source: str, out: Path, *flags: str) -> tuple[int, str, str]:
    """``jaxvl prepare --source SOURCE --out OUT --quiet FLAGS`` -> (exit status, stdout, stderr)."""
    rc = main(["prepare", "--source", source, "--out", str(out), "--quiet", *flags])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def records(out: Path, dataset: str, split: str) -> list[dict]:
    """Every stored example of a split, each as ``{field: numpy array}``, sorted by all their bytes."""
    (path,) = (out / dataset).glob("*/1.0.0")
    source, _ = open_split(path, split)
    examples = [{k: np.asarray(v) for k, v in source[i].items()} for i in range(len(source))]
    return sorted(examples, key=lambda ex: [ex[k].tobytes() for k in sorted(ex)])


def assert_same_records(a: Path, b: Path, dataset: str, splits: tuple[str, ...]) -> None:
    for split in splits:
        want, got = records(a, dataset, split), records(b, dataset, split)
        assert len(want) == len(got) > 0
        for x, y in zip(want, got, strict=True):
            assert sorted(x) == sorted(y)
            for k in x:
                assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), (dataset, split, k)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The small world in VOLTA's files, its train record ``00000005`` corrupted in a copy."""
    root = tmp_path_factory.mktemp("beam")
    good = export_world(WORLD, VAL_IMAGES, root / "good")
    bad = export_world(WORLD, VAL_IMAGES, root / "bad")
    corrupt_record(os.path.join(bad.cc_dir, CC_TRAIN_LMDB), BAD_KEY)
    return good, bad


# ------------------------------------------------------------------------------------------ same records


@pytest.mark.slow  # two pipelines (pairs and phrases): 13-26 s here
def test_synthetic_two_workers_write_the_single_process_records(tmp_path, capsys):
    rc, _, _ = prepare(capsys, SYNTHETIC, tmp_path / "one")
    assert rc == 0
    rc, out, _ = prepare(capsys, SYNTHETIC, tmp_path / "two", "--workers", "2")
    assert rc == 0 and "on DirectRunner" in out
    for dataset in ("jaxvl_synthetic_pretrain", "jaxvl_synthetic_ablation"):
        assert_same_records(tmp_path / "one", tmp_path / "two", dataset, ("train", "val"))


def test_volta_lmdb_two_workers_write_the_single_process_records(exported, tmp_path, capsys, monkeypatch):
    """... and neither leaves anything in the system's temp directory (TFDS left a ``tmp*tfds`` directory per
    builder and Beam's job server a ``beam-temp*`` one per pipeline: ``jaxvl.data.builders.scratch``)."""
    good, _ = exported
    source = f"volta-cc:{good.cc_dir}"
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    assert prepare(capsys, source, tmp_path / "one")[0] == 0
    assert prepare(capsys, source, tmp_path / "two", "--workers", "2")[0] == 0
    # only the pipelines' own directory, removed when the process exits (test_scratch_removed_at_exit)
    assert tempfile.gettempdir() == str(system_tmp)
    assert [p.name.startswith("jaxvl-tmp-") for p in system_tmp.iterdir()] == [True]
    assert_same_records(tmp_path / "one", tmp_path / "two", "jaxvl_pretrain_pairs", ("train", "val"))
    assert len(records(tmp_path / "two", "jaxvl_pretrain_pairs", "train")) == good.train_pairs


def test_scratch_removed_at_exit(tmp_path):
    """``own_temp_dir``: the block's temp files go to its directory; removed when the block ends, or with
    ``remove_at_exit`` when the process exits (after Beam's own exit handlers)."""
    code = ("import sys, tempfile; from jaxvl.data.builders.scratch import own_temp_dir\n"
            "with own_temp_dir() as now:\n"
            "    assert tempfile.mkdtemp().startswith(now)\n"
            "with own_temp_dir(remove_at_exit=True) as later:\n"
            "    assert tempfile.mkdtemp().startswith(later)\n"
            "import os; assert os.path.isdir(later) and not os.path.exists(now)\n"
            "print(later)")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    later = proc.stdout.strip()
    assert later.startswith(str(tmp_path)) and not os.path.exists(later) and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ bad records


def test_a_bad_record_fails_naming_file_and_key(exported, tmp_path, capsys):
    _, bad = exported
    rc, _, err = prepare(capsys, f"volta-cc:{bad.cc_dir},probe=2", tmp_path, "--workers", "2")
    (line,) = [line for line in err.splitlines() if line.startswith("jaxvl: error:")]
    assert rc == 2
    assert f"{os.path.join(bad.cc_dir, CC_TRAIN_LMDB)}: record '{BAD_KEY.decode()}'" in line
    assert "--skip-bad" in line
    assert not list(tmp_path.glob("jaxvl_pretrain_pairs/*/1.0.0"))  # nothing half-written is left as a dataset


def test_skip_bad_counts_the_bad_record(exported, tmp_path, capsys):
    _, bad = exported
    rc, out, _ = prepare(capsys, f"volta-cc:{bad.cc_dir},probe=2", tmp_path, "--workers", "2", "--skip-bad")
    what = f"train: bad records in {os.path.join(bad.cc_dir, CC_TRAIN_LMDB)}"
    assert rc == 0 and f"1 {what}" in out
    (path,) = tmp_path.glob("jaxvl_pretrain_pairs/*/1.0.0")
    assert json.loads((path / "metadata.json").read_text())["skipped"] == {what: 1}
    kept = records(tmp_path, "jaxvl_pretrain_pairs", "train")
    assert len(kept) == bad.train_pairs - 1


# ------------------------------------------------------------------------------------------ flags and helpers


@pytest.mark.parametrize("flags,message", [
    (["--workers", "2", "--beam-runner", "DataflowRunner"], "--workers runs local processes"),
    (["--beam-option", "project"], "must be key=value"),
    (["--workers", "0"], "must be >= 1"),
])
def test_unusable_flags_fail_before_anything_is_written(tmp_path, capsys, flags, message):
    rc, _, err = prepare(capsys, SYNTHETIC, tmp_path, *flags)
    assert rc == 2 and message in err and not list(tmp_path.glob("*/*/1.0.0"))


def test_a_source_without_a_shard_plan_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be prepared in parallel"):
        shard_plans(parse_source(f"coco-karpathy:{tmp_path}"), [], False)


def test_pipeline_options_and_shards():
    options = pipeline_options("DirectRunner", 3, ["--job_name=x"]).get_all_options()
    assert options["direct_num_workers"] == 3 and options["direct_running_mode"] == "multi_processing"
    assert options["job_name"] == "x"
    assert index_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)] and index_ranges(0, 4) == []
    with pytest.raises(ValueError, match="at least one shard"):
        ShardedSplit([], lambda shard, count: iter(()))


def test_bad_record_is_recovered_from_a_runner_error():
    text = ("Traceback ...\njaxvl.data.records.BadRecord: /d/x.lmdb: record '00000005': cannot decode the value "
            "[while running 'train/train_read']\n\nmore")
    assert str(bad_record_in(RuntimeError(text))) == "/d/x.lmdb: record '00000005': cannot decode the value"
    assert bad_record_in(RuntimeError("worker died")) is None
    assert isinstance(bad_record_in(BadRecord("x")), BadRecord)
