"""The `jaxvl` command: one table of commands, `--help` that explains each, user errors as ONE line
`jaxvl: error: ...` with exit status 2 (the traceback only with --debug / JAXVL_DEBUG=1), and Ctrl-C."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxvl.cli import COMMANDS, USER_ERRORS, is_user_error, main

# what refusing a .bin that is no checkpoint says: torch's reading error, or without torch (a test extra) that it
# needs torch
UNREADABLE_BIN = ("cannot be read as a weights-only PyTorch checkpoint" if importlib.util.find_spec("torch")
                  else "reading a PyTorch checkpoint needs torch")

WORLD = "synthetic:num_images=32,val_images=8"
TINY = ["--config.fast_compile=True", "--config.progress=False", "--config.data.batch_size=8",
        "--config.data.max_seq_length=12", "--config.eval_every=0"]


def _words(text: str) -> str:
    return " ".join(text.split())


def _error_line(capsys) -> str:
    """The one stderr line of a user error."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvl: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------------- help

def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for spec in COMMANDS:
        assert re.search(rf"^  {re.escape(spec.name)} +{re.escape(spec.summary)}$", out, re.M), spec.name
    assert "jaxvl: error:" in out and "--debug" in out and "JAXVL_DEBUG=1" in out


@pytest.mark.parametrize("group", ["caption", "bench"])
def test_group_help_lists_its_commands(group, capsys):
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(spec.name in out for spec in COMMANDS if spec.name.startswith(group + " "))


@pytest.mark.parametrize("spec", COMMANDS, ids=[c.name for c in COMMANDS])
def test_help_of_each_command(spec, capsys):
    """Description, examples, --debug; for a config-backed command the config's variants and required keys
    (read off the config module) and the override syntax."""
    assert main([*spec.name.split(), "--help"]) == 0
    out = capsys.readouterr().out
    flat = _words(out)
    assert _words(spec.description) in flat and "examples:" in out and "--debug" in out
    assert spec.examples and all(_words(e) in flat for e in spec.examples)
    if spec.config:
        module = importlib.import_module(f"jaxvl.configs.{spec.config}")
        assert f"--config {spec.config}[:ARG]" in out and f"variants, ARG = {module.ARGUMENT}:" in out
        assert all(re.search(rf"^  {re.escape(v)}  ", out, re.M) for v in module.VARIANTS)
        assert all(re.search(rf"^  {re.escape(k)}  ", out, re.M) for k in module.REQUIRED)
        assert "required keys:" in out and "--config.KEY=VALUE" in out and "an error" in flat
        assert "--config.KEY=VALUE" in flat and all(f"--config {spec.config}" in e for e in spec.examples
                                                    if "--config" in e)


def test_only_the_command_run_is_built():
    """`jaxvl pretrain ...` never imports a benchmark module (their arguments are built on demand)."""
    code = ("import sys; from jaxvl.cli import main; main(['pretrain', '--help']); "
            "assert not [m for m in sys.modules if m.startswith('jaxvl.benchmarks.')], 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------- user errors

PRETRAIN = ["pretrain", "--config", "pretrain:uniter,tiny", "--workdir"]


@pytest.mark.parametrize("argv, names", [
    ([*PRETRAIN, "W", "--config.stepz=3"], "override key 'stepz'"),
    ([*PRETRAIN, "W", "--config.data.batch_sise=3"], "'data.batch_sise'"),
    ([*PRETRAIN, "W", "--config.steps=abc"], "override steps='abc' has type str, the config holds int"),
    (["pretrain", "--config", "pretrain:uniter,nope", "--workdir", "W"], "variant(s) ['nope']"),
    (["pretrain", "--config", "pretrain:bert-large", "--workdir", "W"], "model 'bert-large'"),
    (["pretrain", "--config", "pretrain:uniter,xent,tiny,extra", "--workdir", "W"], "sweep='extra'; named sweeps are"),
    (["ablate", "--config", "no/such/config.py", "--workdir", "W"], "config 'no/such/config.py': no such file"),
    (["ablate", "--config", "ablat:tiny", "--workdir", "W"], "'ablat'"),
    (["models", "--config.batch=2"], "--config.batch=2: --config.KEY=VALUE overrides need --config"),
    (["demo", "--config.steps=2"], "`jaxvl demo` takes none"),
    ([*PRETRAIN, "W", "--config.steps", "3"], "--config.steps: expected --config.KEY=VALUE"),
    ([*PRETRAIN, "W", "--bogus"], "unrecognized arguments: --bogus (see `jaxvl pretrain --help`)"),
    (["pretrain", "--config", "pretrain:uniter,tiny"], "required: --workdir"),
    (["pretrian"], "invalid choice: 'pretrian'"),
    (["bench", "nope"], "invalid choice: 'nope'"),
    (["bench", "ablate", "--warmup", "-1"], "--warmup"),
    (["caption", "decode", "--config", "caption:ort,tiny", "--workdir", "no/such/run"], "--workdir no/such/run"),
], ids=["unknown-key", "unknown-nested-key", "bad-type", "unknown-variant", "unknown-model", "extra-word",
        "missing-config-file", "unknown-packaged-config", "overrides-without-config", "command-without-config",
        "override-without-equals", "unknown-argument", "missing-argument", "unknown-command",
        "unknown-benchmark", "benchmark-flag", "missing-workdir"])
def test_user_error_is_one_line_exit_2(argv, names, capsys):
    """Errors found before anything heavy runs: one line naming the key, file or argument."""
    assert main(argv) == 2
    assert names in _error_line(capsys)


def test_ablate_refuses_missing_and_foreign_checkpoints(tmp_path, capsys):
    """--config.checkpoints: a path that does not exist, a directory that is not a run, a run without run.json,
    a file that is not a PyTorch checkpoint: each refused in one line naming it, before any data or compile."""
    common = ["ablate", "--config", "ablate:tiny", "--workdir", str(tmp_path / "out")]
    (tmp_path / "notarun").mkdir()
    (tmp_path / "norunjson" / "checkpoints").mkdir(parents=True)
    (tmp_path / "junk.bin").write_text("not a checkpoint")
    for checkpoint, extra, names in [(tmp_path / "missing", [], "missing: neither a jaxvl workdir"),
                                     (tmp_path / "notarun", [], "notarun: neither a jaxvl workdir"),
                                     (tmp_path / "norunjson", [], "norunjson: no run.json"),
                                     (tmp_path / "junk.bin", [], "junk.bin: a VOLTA checkpoint needs model.name"),
                                     (tmp_path / "junk.bin", ["--config.model.name=uniter"],
                                      f"junk.bin: {UNREADABLE_BIN}")]:
        assert main([*common, f"--config.checkpoints={checkpoint}", *extra]) == 2
        assert names in _error_line(capsys)


def test_malformed_dataset_is_one_line(tmp_path, capsys):
    """A data.dataset that is a directory but not a prepared dataset, and a source with an unknown knob."""
    (tmp_path / "notadataset").mkdir()
    assert main([*PRETRAIN, str(tmp_path / "w"), f"--config.data.dataset={tmp_path / 'notadataset'}"]) == 2
    assert f"config data.dataset='{tmp_path / 'notadataset'}' is neither a prepared dataset" in _error_line(capsys)
    assert main([*PRETRAIN, str(tmp_path / "w"), "--config.data.dataset=synthetic:colour=1",
                 f"--config.data.prepare_dir={tmp_path / 'data'}"]) == 2
    assert "'colour'" in _error_line(capsys)


def test_evaluate_missing_captions_file(tmp_path, capsys):
    argv = ["caption", "evaluate", "--config", "caption:ort,tiny", "--workdir", str(tmp_path),
            "--captions", str(tmp_path / "none.json")]
    assert main(argv) == 2
    assert f"--captions {tmp_path / 'none.json'}: no such file" in _error_line(capsys)


def test_debug_reraises_with_the_traceback(monkeypatch, capsys):
    from jaxvl.configs import ConfigError

    argv = ["pretrain", "--config", "pretrain:uniter,nope", "--workdir", "W"]
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ConfigError, match="nope"):
            main(debug)
    monkeypatch.setenv("JAXVL_DEBUG", "1")
    with pytest.raises(ConfigError, match="nope"):
        main(argv)
    monkeypatch.setenv("JAXVL_DEBUG", "0")
    assert main(argv) == 2


def test_the_installed_command_prints_one_line_or_a_traceback():
    """Through a real process: one line and exit 2; with --debug the traceback (exit 1)."""
    argv = [sys.executable, "-m", "jaxvl.cli", "pretrain", "--config", "pretrain:uniter,nope", "--workdir", "W"]
    env = {k: v for k, v in os.environ.items() if k != "JAXVL_DEBUG"}
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.splitlines() == [plain.stderr.strip()] and plain.stderr.startswith("jaxvl: error: config")
    debug = subprocess.run([*argv[:3], "--debug", *argv[3:]], capture_output=True, text=True, timeout=120, env=env)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "jaxvl.configs.ConfigError: config 'pretrain:uniter,nope'" in debug.stderr


def test_user_error_classes_exist():
    """Every class name the CLI treats as a user error is a jaxvl exception class (guards renames)."""
    homes = {"ConfigError": "jaxvl.configs", "SourceError": "jaxvl.data.sources", "BadRecord": "jaxvl.data.records",
             "UnsafeData": "jaxvl.data.readers.safe_pickle", "BatchError": "jaxvl.models.validate",
             "StateDictError": "jaxvl.convert.common", "VocabMismatch": "jaxvl.data.caption_vocab",
             "MetricUnavailable": "jaxvl.metrics.meteor", "UsageError": "jaxvl.cli"}
    assert set(homes) == set(USER_ERRORS)
    for name, module in homes.items():
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception) and is_user_error(cls("x"))


def _raised(fn, *args) -> BaseException:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 -- the exception itself is what is tested
        return e
    raise AssertionError("no exception")


def test_which_errors_are_the_users():
    """OS path errors and ValueErrors raised by jaxvl's own validation are; a ValueError from inside a library,
    and any other exception, are bugs: they keep their traceback."""
    import numpy as np

    from jaxvl.configs import parse_arg

    assert is_user_error(_raised(open, "/no/such/file"))
    assert is_user_error(_raised(parse_arg, "stepz=1"))  # plain ValueError, raised in jaxvl/configs
    assert not is_user_error(_raised(np.zeros, (-1,)))  # ValueError raised by numpy
    assert not is_user_error(RuntimeError("bug")) and not is_user_error(KeyError("x"))


def test_interrupts_and_bugs(monkeypatch, tmp_path, capsys):
    """Ctrl-C outside training: `jaxvl: interrupted`, 130; inside: the stopped-at line, 130; divergence: one line,
    exit 1; any other exception propagates with its traceback."""
    import jaxvl.demo
    from jaxvl.runtime.loop import TrainingDiverged, TrainingInterrupted

    argv = ["demo", "--out", str(tmp_path)]
    for raised, code, line in [
        (KeyboardInterrupt(), 130, "jaxvl: interrupted"),
        (TrainingInterrupted(7, 5, "/r/checkpoints"), 130,
         "stopped at step 7; last checkpoint: step 5 in /r/checkpoints; rerun the same command to resume"),
        (TrainingInterrupted(3, None, "/r/checkpoints"), 130,
         "stopped at step 3; last checkpoint: none in /r/checkpoints; rerun the same command to resume"),
        (TrainingDiverged("/r: non-finite loss nan at step 4"), 1, "jaxvl: error: /r: non-finite loss nan at step 4"),
    ]:
        def boom(*args, e=raised, **kwargs):
            raise e

        monkeypatch.setattr(jaxvl.demo, "demo", boom)
        assert main(argv) == code
        assert capsys.readouterr().err.splitlines() == [line]
    monkeypatch.setattr(jaxvl.demo, "demo", lambda *a, **k: {}["bug"])
    with pytest.raises(KeyError):
        main(argv)


# ------------------------------------------------------------------------------------------------- Ctrl-C

def test_train_loop_turns_ctrl_c_into_training_interrupted():
    """KeyboardInterrupt mid-loop: pending saves are waited for, then TrainingInterrupted names the step reached
    and the latest checkpoint; no checkpoint is written for the interrupted step."""
    import jax.numpy as jnp

    from jaxvl.runtime.loop import LoopConfig, TrainingInterrupted, train_loop

    class Checkpoints:
        directory = "/run/checkpoints"

        def __init__(self):
            self.saved, self.waits = [], 0

        def save(self, state, data_iter, meta=None):
            self.saved.append(state)

        def wait(self):
            self.waits += 1

        def latest_step(self):
            return self.saved[-1] if self.saved else None

    class Log:
        def write(self, *args, **kwargs):
            pass

    def step_fn(state, batch):
        if state == 5:
            raise KeyboardInterrupt
        return state + 1, {"loss": jnp.float32(1.0)}

    ckpt = Checkpoints()
    with pytest.raises(TrainingInterrupted) as info:
        train_loop(LoopConfig(steps=100, checkpoint_every=2, progress=False), step_fn, 0, iter(range(100)),
                   lambda b: b, ckpt, Log(), 0, "/run")
    assert (info.value.step, info.value.checkpoint_step, info.value.directory) == (5, 4, "/run/checkpoints")
    assert ckpt.saved == [2, 4] and ckpt.waits >= 1 and isinstance(info.value, KeyboardInterrupt)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}) before {path}"
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_stops_training_and_the_same_command_resumes(tmp_path):
    """SIGINT to `jaxvl pretrain` after its first checkpoint: exit 130 and `stopped at step N; last checkpoint:
    step M in DIR; rerun the same command to resume`; rerun, it resumes from step M."""
    workdir = tmp_path / "run"
    # `jaxvl ARGS` with Python's Ctrl-C handler even where this test runs with SIGINT ignored (a background job)
    jaxvl = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from jaxvl.cli import main; sys.exit(main(sys.argv[1:]))"]
    argv = [*jaxvl, *PRETRAIN, str(workdir), f"--config.data.dataset={WORLD}",
            f"--config.data.prepare_dir={tmp_path / 'data'}", "--config.checkpoint.every=5", *TINY]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("JAXVL_DEBUG", None)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([*argv, "--config.steps=100000"], stdout=out, stderr=err, env=env)
        try:
            _wait_for(workdir / "checkpoints" / "5" / "commit_success.txt", proc, timeout=400)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "err").read_text()
    match = re.search(r"^stopped at step (\d+); last checkpoint: step (\d+) in (\S+); rerun the same command to "
                      r"resume$", stderr, re.M)
    assert match, stderr
    stopped, last = int(match[1]), int(match[2])
    assert match[3] == str(workdir / "checkpoints") and 5 <= last <= stopped and last % 5 == 0
    assert "Traceback" not in stderr
    assert max(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == last

    rerun = subprocess.run([*argv, f"--config.steps={last + 2}"], capture_output=True, text=True, env=env,
                           timeout=400)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from {workdir / 'checkpoints'} step {last}" in rerun.stdout
    assert f"done at step {last + 2}" in rerun.stdout


def test_a_damaged_dataset_info_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "ds"
    bad.mkdir()
    (bad / "dataset_info.json").write_text("{not json")
    code = main(["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(tmp_path / "w"),
                 f"--config.data.dataset={str(bad)!r}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("jaxvl: error:") and "dataset_info.json" in err[-1], err
