"""``--workdir gs://...`` is refused with one line for every command that writes a workdir: the runs write with
``open`` and ``os`` paths, which would put the run in a local ``gs:/...`` directory (docs/launch.md)."""

from __future__ import annotations

import pytest

from jaxvl.cli import main


@pytest.mark.parametrize("argv", [
    ["pretrain", "--config", "pretrain:uniter,tiny"],
    ["finetune", "--config", "finetune:vqa,uniter,tiny"],
    ["caption", "train", "--config", "caption:ort,tiny"],
    ["ablate", "--config", "ablate:synthetic"],
    ["probe", "emap", "--config", "probe:emap"],
])
def test_a_url_workdir_is_one_error_and_writes_nothing(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--workdir", "gs://bucket/run"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jaxvl: error:")]
    assert "gs://bucket/run: a workdir must be a local or mounted path" in line
    assert not list(tmp_path.iterdir())
