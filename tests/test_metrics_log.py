"""``metrics.jsonl`` survives the kills a resumable run meets: a resume drops the records past its checkpoint by
replacing the file whole, a last line cut short by a kill is dropped, and a damaged line elsewhere is one error
naming the file and the line."""

from __future__ import annotations

import json

import pytest

from jaxvl.runtime.metrics_log import JSONL, MetricsLog, read_metrics


def _log(workdir, steps: range, resume_step: int | None = None) -> None:
    log = MetricsLog(workdir, resume_step=resume_step, tensorboard=False)
    for step in steps:
        log.write("train", step, {"loss": 1.0 / step})
    log.close()


def test_resume_keeps_the_records_up_to_its_step_and_appends(tmp_path):
    _log(tmp_path, range(1, 6))
    _log(tmp_path, range(4, 7), resume_step=3)  # killed after step 5, resumed from the step-3 checkpoint
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_a_line_cut_short_by_a_kill_is_dropped(tmp_path):
    _log(tmp_path, range(1, 4))
    with open(tmp_path / JSONL, "a") as f:
        f.write('{"split": "train", "step": 4, "lo')  # the kill came mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    _log(tmp_path, range(4, 5), resume_step=3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert all(json.loads(line) for line in (tmp_path / JSONL).read_text().splitlines())


@pytest.mark.parametrize("line", ['{"split": "train", "lo\n', '[1, 2]\n', '{"split": "train", "step": "4"}\n'])
def test_a_damaged_line_is_one_error_naming_file_and_line(tmp_path, line):
    _log(tmp_path, range(1, 3))
    text = (tmp_path / JSONL).read_text().splitlines(keepends=True)
    (tmp_path / JSONL).write_text(text[0] + line + text[1])
    with pytest.raises(ValueError, match=f"{tmp_path / JSONL}: line 2 is not"):
        MetricsLog(tmp_path, resume_step=2, tensorboard=False)
