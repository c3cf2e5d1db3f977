"""``jaxvl bench device`` (jaxvl.benchmarks.device, device_parts): the budget logic with fake parts and a fake
clock, the compilation settings, the torch part's plumbing with a fake CUDA, and the smoke run end to end in a
fresh process (where the autotuning flag must reach ``XLA_FLAGS`` before JAX's backend starts)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import types

import jax
import pytest

from jaxvl.benchmarks import device, device_parts
from jaxvl.benchmarks.device_parts import Budget, Context, Skip
from jaxvl.cli import main

TORCH_DOC = {"parts": {"pretrain": {"result": {"rows": [{"preset": "lxmert", "step_ms": 40.0, "batch": 4}]}}}}

STATUSES = {"done", "skipped"}


class FakeClock:
    """A clock that moves only when told (``advance``)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _fake_part(clock: FakeClock, seconds: float, calls: list[str], name: str, error: Exception | None = None):
    def fn(result: dict) -> None:
        calls.append(name)
        clock.advance(seconds)
        result["value"] = seconds
        if error is not None:
            raise error

    return fn


def test_run_parts_skips_what_does_not_fit_records_errors_and_saves_after_each():
    clock, calls, saves = FakeClock(), [], []
    budget = Budget(20, clock)
    records: dict = {}
    parts = [("a", _fake_part(clock, 6, calls, "a")),  # estimated 3, takes 6: later estimates x 2
             ("b", _fake_part(clock, 1, calls, "b", RuntimeError("boom"))),  # 2 x 2 = 4 fits 14 left; errors
             ("c", _fake_part(clock, 3, calls, "c")),  # 2 x 2 = 4 fits 13 left
             ("d", _fake_part(clock, 1, calls, "d")),  # 6 x 9/5 (a and c: 9 s for 5) = 10.8 > 10 left: skipped
             ("e", _fake_part(clock, 1, calls, "e", Skip("no CUDA here"))),  # 1.8 fits; skips itself
             ("f", _fake_part(clock, 20, calls, "f"))]  # 7.2 fits 9 left; runs over (the part's own checks)
    estimates = {"a": 3, "b": 2, "c": 2, "d": 6, "e": 1, "f": 4}
    device.run_parts(parts, estimates, budget, records,
                     lambda: saves.append({k: v["status"] for k, v in records.items()}))

    assert calls == ["a", "b", "c", "e", "f"]
    assert {k: r["status"] for k, r in records.items()} == {"a": "done", "b": "error", "c": "done", "d": "skipped",
                                                           "e": "skipped", "f": "done"}
    assert records["a"]["result"] == {"value": 6} and records["a"]["wall_s"] == 6
    assert records["b"]["error"] == "RuntimeError: boom" and "Traceback" in records["b"]["traceback"]
    assert records["b"]["result"] == {"value": 1}  # what a failing part measured is kept
    assert records["d"]["estimate_s"] == pytest.approx(10.8)
    assert records["d"]["reason"] == ("estimated 11 s (6 s x 1.80, the pace of the parts so far) > 10 s left of the "
                                      "20 s budget")
    assert "result" not in records["d"]
    assert records["e"]["reason"] == "no CUDA here"
    assert records["e"]["wall_s"] == 1 and records["f"]["estimate_s"] == pytest.approx(4 * 9 / 5)
    assert saves[0] == {"a": "running"} and saves[1] == {"a": "done"}  # before and after every part
    assert len(saves) == 2 * 5 + 1  # 5 parts started (running, then finished), 1 skipped by the budget


def test_run_parts_scale_stays_within_its_range():
    clock, calls = FakeClock(), []
    records: dict = {}
    parts = [("fast", _fake_part(clock, 0.01, calls, "fast")), ("next", _fake_part(clock, 1, calls, "next"))]
    device.run_parts(parts, {"fast": 100, "next": 10}, Budget(1000, clock), records, lambda: None)
    assert records["next"]["estimate_s"] == pytest.approx(10 * device.SCALE_RANGE[0])


def test_run_units_skips_units_slower_than_the_time_left():
    clock, done, skipped = FakeClock(), [], []
    budget = Budget(10, clock)

    def unit(name: str, seconds: float):
        return name, lambda: (done.append(name), clock.advance(seconds))

    device_parts.run_units(budget, [unit("u1", 4), unit("u2", 3), unit("u3", 1), unit("u4", 1)], skipped)
    assert done == ["u1", "u2"]  # after 4 s, 6 left: fits the slowest (4); after 7 s it does not
    assert [s["unit"] for s in skipped] == ["u3", "u4"]
    assert skipped[0]["reason"] == ("estimated 4 s (the slowest unit of this part so far) > 3 s left of the 10 s "
                                    "budget")


def test_ablate_part_drops_the_larger_specs_loop_when_it_cannot_fit(monkeypatch):
    clock, seen = FakeClock(), []

    def fake_bench_model(name, size, args, dev, mesh, result, save):
        seen.append((name, len(args.thresholds), args.no_loop, args.member_batch, args.scan_layers))
        clock.advance(30)

    monkeypatch.setattr(device_parts.ablate, "bench_model", fake_bench_model)
    sizes = dataclasses.replace(device_parts.SMOKE, ablate_specs=device_parts.FULL.ablate_specs)
    ctx = Context(sizes, jax.devices()[0], Budget(100, clock), {"parts": {}}, lambda: None)
    out: dict = {}
    device_parts.run_ablate(ctx, out)
    # 6 members took 30 s; 42 would take about 210 s > 70 s left: the sweep variants run, the loop does not
    assert seen == [("uniter", 1, False, [None, 1], True), ("uniter", 10, True, [None, 1], True)]
    assert [device_parts.members(spec) for spec in sizes.ablate_specs] == [6, 42]
    (dropped,) = out["loops_dropped"]
    assert (dropped["preset"], dropped["members"]) == ("uniter", 42)
    assert dropped["reason"].startswith("estimated 210 s (the 6-member run took 30 s, x 42/6 members) > 70 s left")


def test_torch_part_skips_without_torch_or_cuda():
    cpu = jax.devices()[0]
    ctx = Context(device_parts.SMOKE, cpu, Budget(100), TORCH_DOC, lambda: None)
    reason = ("needs JAX on a GPU and torch with CUDA; JAX runs on cpu" if importlib.util.find_spec("torch")
              else "torch is not installed")
    with pytest.raises(Skip, match=reason):
        device_parts.run_torch(ctx, {})


def test_torch_part_computes_ratios_with_a_fake_cuda(monkeypatch):
    pytest.importorskip("torch", reason="the torch part needs torch: pip install -e '.[test]'")
    doc = TORCH_DOC
    gpu = types.SimpleNamespace(platform="gpu", device_kind="fake GPU")
    monkeypatch.setattr(device_parts.models_torch, "torch_device", lambda d: "cuda")
    monkeypatch.setattr(device_parts.models_torch, "torch_device_name", lambda d: "cuda: fake GPU")
    monkeypatch.setattr(device_parts.models_torch, "bench_torch",
                        lambda name, cfg, inputs, args, where, warmup, iters: {
                            "torch_fwd_ms": 1.0, "torch_fwdbwd_ms": 20.0, "torch_params": 1,
                            "inputs": {k: v.shape for k, v in inputs.items()}, "autocast": args.dtype,
                            "dropout": args.dropout})
    out: dict = {}
    device_parts.run_torch(Context(device_parts.SMOKE, gpu, Budget(100), doc, lambda: None), out)
    assert out["torch_device"] == "cuda: fake GPU"
    lxmert, visualbert = out["rows"]
    assert lxmert["preset"] == "lxmert" and lxmert["inputs"]["input_ids"] == (4, 38)
    assert lxmert["inputs"]["features"][:2] == (4, 37) and lxmert["autocast"] == "bfloat16" and lxmert["dropout"]
    assert lxmert["jaxvl_step_ms_per_example"] == 10.0 and lxmert["torch_fwdbwd_over_jaxvl_step"] == 2.0
    assert "torch_fwdbwd_over_jaxvl_step" not in visualbert  # no jaxvl row to compare with
    table = device_parts.md_torch(out, dataclasses.asdict(device_parts.SMOKE))
    assert "| lxmert | transformers.LxmertModel | 4 | 1.000 | 20.000 | 10.000 | 2.00 |" in table


def test_compilation_settings_set_the_flag_once_and_the_cache_then_restore(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_gpu_autotune_level=4")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    before = jax.config.jax_compilation_cache_dir
    with device.compilation_settings(str(tmp_path / "cache"), 1) as settings:
        assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 --xla_gpu_autotune_level=1"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"  # a setting of the user's is kept
    assert settings["autotune_flag_effective"] is not settings["backend_started_before_flags"]
    assert jax.config.jax_compilation_cache_dir == before


def _cli(out, *flags: str) -> dict:
    """``jaxvl bench device --out OUT FLAGS`` in a fresh process (JAX's backend not started), as a user runs it: without
    conftest.py's 8 fake CPU devices (the benchmark measures ``jax.devices()[0]``; 8 fake devices sharing this
    machine's cores made the smoke run's pretraining part take about twice as long); its JSON."""
    cmd = [sys.executable, "-m", "jaxvl.cli", "bench", "device", "--out", str(out), *flags]
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "device.json").read_text())


def _flag_reached_xla_before_the_backend(doc: dict, level: int) -> None:
    settings = doc["settings"]
    assert settings["backend_started_before_flags"] is False and settings["autotune_flag_effective"] is True
    assert f"--xla_gpu_autotune_level={level}" in doc["machine"]["xla_flags"].split()


def test_tiny_budget_skips_every_part_with_a_reason(tmp_path):
    out = tmp_path / "device"
    doc = _cli(out, "--smoke", "--budget", "1", "--autotune-level", "2",
               "--parts", "pretrain,torch,sweep,ablate,decode")
    for name in ("pretrain", "torch", "sweep", "ablate", "decode"):
        assert doc["parts"][name]["status"] == "skipped"
        assert "s left of the 1 s budget" in doc["parts"][name]["reason"]
    assert doc["parts"]["data"] == {"status": "skipped", "reason": "not in --parts"}
    assert doc["elapsed_s"] < 30
    _flag_reached_xla_before_the_backend(doc, 2)
    markdown = (out / "device.md").read_text()
    assert markdown.startswith(f"# jaxvl bench device: {doc['device_kind']} (smoke run")
    assert "| pretrain |" in markdown and "s left of the 1 s budget" in markdown


def test_a_budget_of_zero_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "device", "--out", str(tmp_path), "--budget", "0"]) == 2
    assert capsys.readouterr().err.strip() == "jaxvl: error: --budget=0.0 must be > 0"


@pytest.mark.slow
def test_smoke_run_measures_every_part_in_a_fresh_process(tmp_path):
    out = tmp_path / "device"
    doc = _cli(out, "--smoke", "--budget", "900")
    parts = doc["parts"]
    assert set(parts) == {p.name for p in device_parts.PARTS}
    for name, record in parts.items():
        assert record["status"] in STATUSES, (name, record.get("error"))
        assert record["wall_s"] >= 0 and record["estimate_s"] > 0
        if record["status"] == "skipped":
            assert record["reason"]
    _flag_reached_xla_before_the_backend(doc, device.DEFAULT_AUTOTUNE_LEVEL)
    assert os.listdir(doc["settings"]["compilation_cache_dir"])  # every program cached
    assert parts["torch"]["status"] == "skipped"  # no CUDA torch here (or no torch: a test extra)
    assert "CUDA" in parts["torch"]["reason"] or parts["torch"]["reason"] == "torch is not installed"

    pretrain = parts["pretrain"]["result"]
    # the presets, then the weight-gradient preset again with bf16 weight gradients (the float32 default's cost)
    smoke = device_parts.SMOKE
    assert [r["preset"] for r in pretrain["rows"]] == [*smoke.presets, smoke.weight_grad_preset]
    assert [r["weight_grad_dtype"] for r in pretrain["rows"]] == ["float32", "float32", "compute"]
    for row in pretrain["rows"]:
        assert row["step_ms"] > 0 and row["examples_per_s"] > 0 and row["mfu"] > 0 and row["scan_layers"]
    (sweep,) = parts["sweep"]["result"]["sweeps"]
    assert sweep["k"] == 2 and sweep["sweep_member_steps_per_s"] > 0 and sweep["sequential_member_steps_per_s"] > 0
    ablation = parts["ablate"]["result"]["rows"]
    assert [r["member_batch_size"] for r in ablation] == [None, 1]
    for row in ablation:
        assert row["sweep_evals_per_s"] > 0 and row["loop_evals_per_s"] > 0 and row["sweep_projected_s"] > 0
    decode = parts["decode"]["result"]["decode"]
    assert [r["mode"] for r in decode] == ["batched", "per-image", "ort-style"]
    assert all(r["beam"] == 5 and r["captions_per_s"] > 0 for r in decode)
    data = parts["data"]["result"]
    assert data["best_pipeline"]["examples_per_s"] > 0 and data["pipeline_over_step"] > 0

    markdown = (out / "device.md").read_text()
    assert markdown.startswith(f"# jaxvl bench device: {doc['device_kind']}")
    for name in ("pretrain", "sweep", "ablate", "decode", "data"):
        assert f"## {name} (done)" in markdown
    assert markdown.count("| bfloat16 (weight grads bfloat16) |") == 1 and "what the float32 default costs" in markdown
    assert markdown.count(f"_Device: {doc['device_kind']} (`jax.devices()[0]`); jax {jax.__version__}; command: "
                          f"`") == 5
