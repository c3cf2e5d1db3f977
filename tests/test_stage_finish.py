"""A stage stopped after its last step but before its ``on_done`` finished (Ctrl-C while a sweep exports its
members) finishes when the same command runs again: the missing member is exported, without training again; a
finished stage then has nothing to do."""

from __future__ import annotations

import pytest

import jaxvl.pretrain.trainer as pretrain_trainer
from jaxvl.configs import load_config
from jaxvl.pretrain.trainer import pretrain
from jaxvl.runtime.checkpoint import Checkpointer
from jaxvl.runtime.metrics_log import read_metrics
from jaxvl.runtime.stage import FINISHED, finished_step

FAST = ["fast_compile=True", "progress=False", "eval_batches=1", "data.batch_size=8", "data.max_seq_length=12",
        "steps=2", "eval_every=2", "checkpoint.every=2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    from jaxvl.data.builders.pretrain import PretrainPairs
    from jaxvl.data.sources import build_source

    out = tmp_path_factory.mktemp("data")
    builder = next(b for b in build_source("synthetic:num_images=16", str(out)).builders
                   if isinstance(b, PretrainPairs))
    builder.download_and_prepare()
    return builder.data_dir


@pytest.mark.slow  # three tiny sweep runs (two compile): ~40 s here
def test_a_sweep_stopped_while_exporting_finishes_when_run_again(dataset, tmp_path, monkeypatch):
    cfg = load_config("pretrain:uniter,tiny,sweep=objectives", [f"data.dataset={dataset!r}", *FAST])
    workdir = tmp_path / "sweep"
    real_save = pretrain_trainer.save_member

    def stopped_at_the_second(workdir_, name, state, meta):
        if name == "mrc-xe":
            raise KeyboardInterrupt
        real_save(workdir_, name, state, meta)

    monkeypatch.setattr(pretrain_trainer, "save_member", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, str(workdir))
    assert (workdir / "members" / "mrc-kl" / "checkpoints" / "2").is_dir()
    assert not (workdir / "members" / "mrc-xe").exists() and finished_step(str(workdir)) is None

    monkeypatch.setattr(pretrain_trainer, "save_member", real_save)
    pretrain(cfg, str(workdir))  # the same command again
    for name in ("mrc-kl", "mrc-xe"):
        assert Checkpointer(workdir / "members" / name / "checkpoints").latest_step() == 2
    assert finished_step(str(workdir)) == 2 and (workdir / FINISHED).is_file()
    assert "mrc-xe" in (workdir / "summary.md").read_text()
    assert [r["step"] for r in read_metrics(workdir, "train", "mrc-xe")] == [1, 2]  # not trained again

    def no_export(*args):
        raise AssertionError("a finished stage exported again")

    monkeypatch.setattr(pretrain_trainer, "save_member", no_export)
    pretrain(cfg, str(workdir))  # nothing to do
