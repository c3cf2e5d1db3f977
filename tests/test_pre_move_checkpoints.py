"""Workdirs written before the layout move (jaxvl 0.1, ``tests/data/pre_move``) restore and resume unchanged.

The fixture's README gives the commands that wrote them; ``expected.json`` holds what the 0.1 code computed
from them: every parameter's path, shape and sum, and the train metrics of steps 5 and 6 after resuming.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxvl.cli import main
from jaxvl.runtime.checkpoint import restore_params

FIXTURE = Path(__file__).parent / "data" / "pre_move"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
COMMON = ["--config.checkpoint.every=2", "--config.eval_every=2", "--config.fast_compile=True",
          "--config.progress=False"]


def manifest(params) -> dict[str, list]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(p): [list(np.shape(v)), float(np.asarray(v, np.float64).sum())] for p, v in flat}


@pytest.mark.parametrize("run", sorted(EXPECTED["params"]))
def test_parameters_restore_with_the_same_paths_and_values(run):
    params, step = restore_params(FIXTURE / run / "checkpoints")
    assert step == 4
    assert manifest(params) == EXPECTED["params"][run]


def train_rows(metrics: Path, steps: tuple[int, ...]) -> list[dict]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows
            if r["split"] == "train" and r["step"] in steps]


def assert_rows_close(got: list[dict], want: list[dict]) -> None:
    assert [(r["step"], r.get("member")) for r in got] == [(r["step"], r.get("member")) for r in want]
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        for key, value in w.items():
            if isinstance(value, float):
                np.testing.assert_allclose(g[key], value, rtol=1e-5, err_msg=f"step {w['step']} {key}")


@pytest.mark.slow
def test_a_pre_move_sweep_resumes_to_the_same_losses(tmp_path):
    workdir = tmp_path / "pretrain_sweep"
    shutil.copytree(FIXTURE / "pretrain_sweep", workdir)
    code = main(["pretrain", "--config", "pretrain:uniter,tiny,sweep=objectives", "--workdir", str(workdir),
                 "--config.data.dataset='synthetic:num_images=32,val_images=8'", "--config.steps=6",
                 "--config.data.batch_size=8", f"--config.data.prepare_dir={str(tmp_path / 'data')!r}", *COMMON])
    assert code == 0
    assert_rows_close(train_rows(workdir / "metrics.jsonl", (5, 6)),
                      EXPECTED["resumed_train_metrics"]["pretrain_sweep"])
    params, step = restore_params(workdir / "members" / "mrc-kl" / "checkpoints")
    assert step == 6
    shapes = {k: v[0] for k, v in EXPECTED["params"]["pretrain_sweep/members/mrc-kl"].items()}
    assert {k: v[0] for k, v in manifest(params).items()} == shapes


@pytest.mark.slow
def test_a_pre_move_caption_run_resumes_to_the_same_losses(tmp_path):
    workdir = tmp_path / "caption"
    shutil.copytree(FIXTURE / "caption", workdir)
    code = main(["caption", "train", "--config", "caption:ort,tiny,xe_only", "--workdir", str(workdir),
                 "--config.data.dataset='synthetic-captions:num_images=32'", "--config.xe.steps=6",
                 "--config.xe.batch_size=8", f"--config.data.prepare_dir={str(tmp_path / 'data')!r}", *COMMON])
    assert code == 0
    assert_rows_close(train_rows(workdir / "xe" / "metrics.jsonl", (5, 6)),
                      EXPECTED["resumed_train_metrics"]["caption/xe"])
