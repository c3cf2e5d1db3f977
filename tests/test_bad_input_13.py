"""Bad input named in one line before anything runs on it (issue 13, section 2).

- a truncated LMDB (single file or directory) is refused when opened, naming the file, instead of a SIGBUS
  from a memory-mapped read past its end (run in a subprocess, so a SIGBUS fails the test, not pytest);
- an empty caption in a CC LMDB is refused naming the record, or counted under ``--skip-bad``;
- a prepared dataset of another kind (an ablation dataset given to ``pretrain``) is named, not a ``KeyError``
  inside Grain; a dataset directory that does not exist is reported as such, not as an unknown source;
- a refused initialisation (a bad ``init.checkpoint``) leaves no empty ``checkpoints/`` behind.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lmdb_fixtures import cc_datapoint, feature_entries, tensorpack_entries, tsv_row, write_lmdb

from jaxvl.cli import main
from jaxvl.data.builders import AblationPhrases, PretrainPairs
from jaxvl.data.resolve import resolve_dataset
from jaxvl.data.sources import build_source

D, K1 = 8, 5  # fixture feature size and classes (with background)
PRETRAIN = ["pretrain", "--config", "pretrain:uniter,tiny", "--workdir"]
TINY = ["--config.fast_compile=True", "--config.progress=False", "--config.data.batch_size=8",
        "--config.data.max_seq_length=12", "--config.eval_every=0"]


def error_line(capsys) -> str:
    """The one stderr line of a user error."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvl: error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ truncated LMDB


def cc_lmdb(path: Path, subdir: bool, captions: list[str] | None = None) -> Path:
    """A CC LMDB (tensorpack layout) of 6 records of 20 regions: about 60 pages, most of them overflow pages."""
    rng = np.random.default_rng(0)
    captions = captions or [f"caption {i}" for i in range(6)]
    dps = [cc_datapoint(rng, str(i), num_boxes=20, feature_dim=64, num_classes=K1, caption=c)
           for i, c in enumerate(captions)]
    return write_lmdb(path, tensorpack_entries(dps).items(), subdir)


def cut(data_file: Path, keep: float) -> int:
    """Truncates ``data_file`` to ``keep`` of its size (at least 3 pages: both meta pages and part of a third)."""
    size = max(int(data_file.stat().st_size * keep), 3 * 4096 - 100)
    with open(data_file, "r+b") as f:
        f.truncate(size)
    return size


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
@pytest.mark.parametrize("subdir", [False, True], ids=["single-file", "directory"])
def test_truncated_cc_lmdb_is_one_line_naming_the_file(tmp_path, subdir, keep):
    path = cc_lmdb(tmp_path / "cc.lmdb", subdir)
    data_file = path / "data.mdb" if subdir else path
    full = data_file.stat().st_size  # a freshly written LMDB is exactly the pages it uses
    size = cut(data_file, keep)
    code = "import sys; from jaxvl.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = run_python(code, "prepare", "--source", f"volta-cc:{path}", "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # not -7 (SIGBUS)
    assert proc.stderr.splitlines() == [
        f"jaxvl: error: --source volta-cc: {data_file}: truncated LMDB: the file has {size} bytes but its header says "
        f"it uses {full // 4096} pages of 4096 bytes ({full} bytes); it was cut short (an interrupted copy or "
        "download?)"]


def test_truncated_feature_lmdb_and_empty_file(tmp_path):
    """The per-image feature LMDB (Flickr30k's) shares the check; a file cut to nothing is named too."""
    rows = [(str(i), tsv_row(np.random.default_rng(i), str(i), num_boxes=30, feature_dim=64)[0]) for i in range(4)]
    path = write_lmdb(tmp_path / "feat.lmdb", feature_entries(rows).items(), subdir=False)
    size = cut(path, 0.5)
    code = ("import sys; from jaxvl.data.readers.volta_lmdb import FeatureLMDB\n"
            "try:\n    print(len(list(FeatureLMDB(sys.argv[1], feature_dim=64, num_classes=int(sys.argv[2])))))\n"
            "except ValueError as e:\n    print(e)")
    proc = run_python(code, str(path), str(K1))
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.startswith(f"{path}: truncated LMDB: the file has {size} bytes"), proc.stdout
    path.write_bytes(b"")
    proc = run_python(code, str(path), str(K1))
    assert proc.stdout.strip() == f"{path}: the file is empty (0 bytes), not an LMDB", proc.stdout


# ---------------------------------------------------------------------------------------- empty caption in CC


def test_empty_caption_in_cc_lmdb_is_refused_or_skipped(tmp_path, capsys):
    path = cc_lmdb(tmp_path / "cc.lmdb", False, ["a dog", "", "a cat", "   ", "a bird", "a fish"])
    argv = ["prepare", "--source", f"volta-cc:{path}", "--out", str(tmp_path / "data"), "--quiet"]
    assert main(argv) == 2
    line = error_line(capsys)
    assert f"{path}: record '00000001' (image '1'): caption is empty ('')" in line and "--skip-bad" in line
    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "train 4 examples" in out and f"2 train: bad records in {path}" in out


# ------------------------------------------------------------------------------------------ dataset kind / path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[type, str]:
    """A small synthetic world, prepared: builder class -> its dataset's version directory."""
    out = tmp_path_factory.mktemp("data")
    dirs = {}
    for builder in build_source("synthetic:num_images=32,val_images=8", str(out)).builders:
        builder.download_and_prepare()
        dirs[PretrainPairs if isinstance(builder, PretrainPairs) else AblationPhrases] = builder.data_dir
    return dirs


def test_a_dataset_of_another_kind_is_named(world, tmp_path):
    ablation, pretrain = world[AblationPhrases], world[PretrainPairs]
    assert resolve_dataset(pretrain, "", str(tmp_path), PretrainPairs) == pretrain
    with pytest.raises(ValueError) as e:
        resolve_dataset(ablation, "", str(tmp_path), PretrainPairs)
    assert str(e.value) == (f"config data.dataset={ablation!r} holds a jaxvl_synthetic_ablation dataset "
                            "(AblationPhrases, read by `jaxvl ablate`), not the PretrainPairs dataset this task reads "
                            "(jaxvl_pretrain_pairs, jaxvl_synthetic_pretrain)")
    with pytest.raises(ValueError, match="holds a jaxvl_synthetic_pretrain dataset \\(PretrainPairs, read by `jaxvl "
                                         "pretrain`\\), not the AblationPhrases dataset"):
        resolve_dataset(pretrain, "", str(tmp_path), AblationPhrases)


def test_pretrain_on_an_ablation_dataset_is_one_line(world, tmp_path, capsys):
    ablation = world[AblationPhrases]
    assert main([*PRETRAIN, str(tmp_path / "w"), f"--config.data.dataset={ablation}", *TINY]) == 2
    line = error_line(capsys)
    assert f"config data.dataset='{ablation}' holds a jaxvl_synthetic_ablation dataset" in line
    assert "KeyError" not in line


def test_a_missing_dataset_directory_is_named(tmp_path, capsys):
    missing = tmp_path / "prepared" / "jaxvl_pretrain_pairs"
    assert main([*PRETRAIN, str(tmp_path / "w"), f"--config.data.dataset={missing}", *TINY]) == 2
    line = error_line(capsys)
    assert f"config data.dataset='{missing}': no such dataset directory" in line and "unknown --source" not in line
    with pytest.raises(FileNotFoundError, match="'mydata': no such dataset directory \\(nor a source string: sources "
                                                "are synthetic, "):
        resolve_dataset("mydata", "", str(tmp_path), PretrainPairs)
    with pytest.raises(ValueError, match="config data.dataset='volta-cc:/x,colour=red': --source volta-cc: unknown "
                                         "option 'colour'"):
        resolve_dataset("volta-cc:/x,colour=red", "", str(tmp_path), PretrainPairs)


# ------------------------------------------------------------------------------------------------ refused init


def test_a_refused_init_checkpoint_leaves_no_checkpoints_directory(world, tmp_path, capsys):
    junk = tmp_path / "pytorch_model_0.bin"
    junk.write_text("not a checkpoint")
    workdir = tmp_path / "w"
    argv = [*PRETRAIN, str(workdir), f"--config.data.dataset={world[PretrainPairs]}",
            f"--config.init.checkpoint={junk}", *TINY]
    assert main(argv) == 2
    unreadable = ("cannot be read as a weights-only PyTorch checkpoint" if importlib.util.find_spec("torch")
                  else "reading a PyTorch checkpoint needs torch")  # torch is a test extra
    assert f"{junk}: {unreadable}" in error_line(capsys)
    assert not (workdir / "checkpoints").exists()
