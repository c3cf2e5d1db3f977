# ruff: noqa: E501 -- the HLO below keeps XLA's long lines as XLA prints them
"""``jaxvl compile``: the HLO collective reader, TPU slice names, meshes, the compile report on local devices,
its command-line errors, and (slow, with libtpu) the tiny UNITER step compiled for a v5e-16 slice."""

import argparse
import importlib.util
import json

import jax
import pytest

from jaxvl.aot.chips import CHIPS, gpu_spec, parse_slice
from jaxvl.aot.hlo import collectives
from jaxvl.aot.run import compile_report, parse_mesh, resolve_sizes
from jaxvl.cli import main
from jaxvl.configs import load_config

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None

# A hand-written module in XLA's spellings: a loop of 12 (TPU-style condition) holding an async all-gather and,
# nested, a loop of 3 (known_trip_count) holding an all-reduce; a reduce-scatter and an all-to-all at the top.
HLO = """HloModule jit_step, is_scheduled=true

%add (x: f32[], y: f32[]) -> f32[] {
  ROOT %a = f32[] add(%x, %y)
}

%inner_cond (p: (s32[], f32[64])) -> pred[] {
  %c = s32[] constant(99)
  ROOT %lt = pred[] compare(%g, %c), direction=LT
}

%inner_body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %ar = f32[64]{0} all-reduce(%x), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  ROOT %t = (s32[], f32[64]) tuple(%i, %ar)
}

%outer_cond (p: (s32[], bf16[8,16])) -> pred[] {
  %constant.7 = s32[]{:T(128)} constant(12)
  %gte = s32[] get-tuple-element(%p), index=0
  ROOT %lt.2 = pred[]{:T(512)} compare(%gte, %constant.7), direction=LT, metadata={op_name="cond"}
}

%outer_body (p: (s32[], bf16[8,16])) -> (s32[], bf16[8,16]) {
  %ags = (bf16[1,16]{1,0}, bf16[8,16]{1,0}) all-gather-start(%y), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}
  %agd = bf16[8,16]{1,0} all-gather-done(%ags)
  %w = (s32[], f32[64]) while(%t0), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %t = (s32[], bf16[8,16]) tuple(%i, %agd)
}

ENTRY %main (a: f32[1024]) -> f32[128] {
  %loop = (s32[], bf16[8,16]) while(%init), condition=%outer_cond, body=%outer_body
  %rs = f32[128]{0} reduce-scatter(%a), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=8] {'axis_1'}, dimensions={0}, to_apply=%add
  ROOT %a2a = f32[128]{0} all-to-all(%rs), channel_id=4, replica_groups=[2,4]<=[8], dimensions={0}
}
"""


def test_collectives_counted_per_step_with_loop_trip_counts():
    s = collectives(HLO, 8)
    assert s.counts == {"all-gather": 12, "all-reduce": 36, "reduce-scatter": 1, "all-to-all": 1}
    assert s.unknown_loops == 0
    ag = 12 * (7 / 8) * 8 * 16 * 2  # the gathered [8, 16] bf16 output, 8 participants
    ar = 36 * 2 * (3 / 4) * 64 * 4  # groups of 4
    rs = 7 * 128 * 4  # output shard x (n - 1), 8 participants ('axis_1')
    a2a = (3 / 4) * 128 * 4
    assert s.bytes == pytest.approx({"all-gather": ag, "all-reduce": ar, "reduce-scatter": rs, "all-to-all": a2a})


def test_loop_without_a_readable_trip_count_counts_once_and_is_reported():
    hlo = HLO.replace("compare(%gte, %constant.7), direction=LT", "compare(%gte, %gte), direction=NE")
    s = collectives(hlo, 8)
    assert s.counts["all-gather"] == 1 and s.counts["all-reduce"] == 3 and s.unknown_loops == 1


def test_slice_names():
    v5e = parse_slice("v5e-256")
    assert (v5e.chips, v5e.shape, v5e.topology_name, v5e.wrap) == (256, (16, 16), "v5e:16x16", (True, True, False))
    v5p = parse_slice("v5p-128")  # TensorCores: 64 chips
    assert (v5p.chips, v5p.shape, v5p.topology_name, v5p.accelerator_type) == (64, (4, 4, 4), "v5:4x4x4", "v5p-128")
    assert parse_slice("v6e-64").shape == (8, 8) and parse_slice("v5litepod-16").chips == 16
    assert CHIPS["v5e"].hbm_bytes == 16 * 2**30 and CHIPS["v5p"].hbm_bytes == 95 * 2**30
    assert gpu_spec("NVIDIA H100 80GB HBM3").name == "H100" and gpu_spec("cpu") is None
    for bad, words in [("v7-8", "expected CHIP-N"), ("v5e-12", "no v5e slice of 12 chips"),
                       ("v5p-7", "2 per chip")]:
        with pytest.raises(ValueError, match=words):
            parse_slice(bad)


def test_mesh_specs():
    cfg_mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    assert resolve_sizes(parse_mesh(None, cfg_mesh), 16) == {"data": 16, "fsdp": 1, "tensor": 1}
    assert resolve_sizes(parse_mesh("fsdp+tp", cfg_mesh), 64) == {"data": 1, "fsdp": 16, "tensor": 4}
    assert resolve_sizes(parse_mesh("data=2,fsdp=-1", cfg_mesh), 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="expected AXIS=SIZE"):
        parse_mesh("model=4", cfg_mesh)
    with pytest.raises(ValueError, match="has 6 devices; the target has 8"):
        resolve_sizes(parse_mesh("data=3,fsdp=2", cfg_mesh), 8)


def test_local_data_parallel_report_counts_the_gradient_all_reduce():
    """On 8 CPU devices, pure data parallelism: the all-reduce bytes are at least the ring cost of the float32
    gradient, 2 (n - 1) / n x 4 bytes x parameters, and at most a quarter more (XLA reduces some gradients in
    parts before summing them, e.g. the word table's from the lookup and from the tied MLM decoder); no
    parameter is gathered."""
    cfg = load_config("pretrain:uniter,tiny")
    report = compile_report(cfg, "pretrain:uniter,tiny", None, 1, "data=8", 16)
    n_params = report.params  # the config's model: its heads are the ones its objective weighs
    gradient = 2 * 7 / 8 * 4 * n_params
    assert gradient <= report.collective_bytes["all-reduce"] <= 1.25 * gradient
    # No parameter is gathered: the only all-gathers are the text rows ITM swaps between examples ([B, T] x 3).
    assert report.collective_bytes.get("all-gather", 0) <= 3 * 16 * 16 * 4 and "reduce-scatter" not in report.collective_counts
    assert report.memory["argument_size_in_bytes"] > 4 * n_params  # params + two Adam moments, replicated
    text = report.format()
    assert "data=8 x fsdp=1 x tensor=1" in text and "no estimated step time" in text
    assert json.loads(report.to_json())["devices"] == 8


def test_caption_and_ablation_targets_lower():
    """The captioner's XE step and the ablation sweep as `jaxvl compile` builds them (``jaxvl.aot.targets``) for 8
    data-parallel devices, traced and lowered but not compiled (XLA's compile is most of a compile report's time):
    the descriptions, matmul FLOPs counted from the traced step, and the sweep's FLOPs growing with its members.
    The two tests below (slow) compile both and read the report."""
    from jaxvl.aot.targets import ablate_target, caption_target
    from jaxvl.models.volta.presets import tiny_overrides
    from jaxvl.runtime.sharding import make_mesh

    mesh = make_mesh(8, 1, 1)
    caption = caption_target(load_config("caption:ort,tiny"), mesh, 16)
    assert caption.description.startswith("caption XE tiny") and caption.model_flops > 0 and caption.params > 0
    cfg = load_config("ablate")
    cfg.model.name, cfg.checkpoints, cfg.thresholds = "lxmert", "a,b", (0.5,)
    sweep = ablate_target(cfg, mesh, 16, model_overrides=tiny_overrides("lxmert"))
    assert sweep.description.startswith("ablate lxmert") and "2 checkpoint(s) x 10 members" in sweep.description
    cfg.lang4vis = "none"
    fewer = ablate_target(cfg, mesh, 16, model_overrides=tiny_overrides("lxmert"))
    assert 0 < fewer.model_flops < sweep.model_flops
    with jax.set_mesh(mesh):
        for target in (caption, sweep):
            assert target.jitted.lower(*target.args).as_text()


def test_pretrain_description_names_the_weight_gradient_sum():
    """A bf16 pretraining target says in which dtype its weight gradients are summed (a compile table's rows then
    say which setting they compiled); a float32 one says nothing of it. Built, not lowered."""
    from jaxvl.aot.targets import pretrain_target
    from jaxvl.runtime.sharding import make_mesh

    mesh = make_mesh(8, 1, 1)
    described = {wg: pretrain_target(load_config("pretrain:uniter,tiny", ["model.dtype='bfloat16'",
                                                                          f"model.weight_grad_dtype={wg!r}"]),
                                     mesh).description for wg in ("float32", "compute")}
    assert "bfloat16, weight gradients summed in float32)" in described["float32"]
    assert "bfloat16, weight gradients summed in bfloat16)" in described["compute"]
    assert "weight gradients" not in pretrain_target(load_config("pretrain:uniter,tiny"), mesh).description


# The compiled caption and ablation programs (~20 s each): -m slow; not slow, the same targets lowered (above) and
# the compile report's path (test_local_data_parallel_report_counts_the_gradient_all_reduce).
@pytest.mark.slow
def test_local_caption_report():
    """The captioner's XE step compiles through the same path: data parallel over 8 devices, its gradient
    all-reduced (ring cost of the float32 gradient at least), matmul FLOPs counted from the traced step."""
    report = compile_report(load_config("caption:ort,tiny"), "caption:ort,tiny", None, 1, "dp", 16)
    assert report.description.startswith("caption XE tiny") and report.model_flops > 0
    assert report.collective_bytes["all-reduce"] >= 2 * 7 / 8 * 4 * report.params


@pytest.mark.slow
def test_local_ablation_sweep_report():
    """The ablation sweep compiles through the same path: K stacked checkpoints x every member of the config on
    a batch sharded over 8 devices; nothing crosses devices (each example is evaluated where it lies), and
    the FLOPs grow with the members."""
    from jaxvl.models.volta.presets import tiny_overrides

    cfg = load_config("ablate")
    cfg.model.name, cfg.checkpoints, cfg.thresholds = "lxmert", "a,b", (0.5,)
    report = compile_report(cfg, "ablate", None, 1, "data=8", 16, model_overrides=tiny_overrides("lxmert"))
    assert report.description.startswith("ablate lxmert") and "2 checkpoint(s) x 10 members" in report.description
    assert not report.collective_counts, report.collective_counts
    cfg.lang4vis = "none"
    fewer = compile_report(cfg, "ablate", None, 1, "data=8", 16, model_overrides=tiny_overrides("lxmert"))
    assert 0 < fewer.model_flops < report.model_flops


@pytest.mark.parametrize("argv, words", [
    (["--topology", "v9-16"], "topology 'v9-16': expected CHIP-N"),
    (["--local", "--mesh", "data=3"], "mesh {'data': 3, 'fsdp': 1, 'tensor': 1} has 3 devices; the target has 8"),
    (["--local", "--num-slices", "2"], "--num-slices needs --topology"),
    (["--topology", "v5e-16", "--local"], "not allowed with argument"),
    (["--local", "--config", "ablate:tiny"], "needs the model: --config.model.name=uniter"),
], ids=["unknown-chip", "mesh-does-not-cover", "slices-without-topology", "two-targets", "ablation-without-model"])
def test_compile_command_errors_are_one_line(argv, words, capsys):
    assert main(["compile", "--config", "pretrain:uniter,tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu absent: install the tpu extra (pip install 'jaxvl[tpu]')")
def test_tiny_uniter_compiles_for_v5e_16(tmp_path, capsys):
    """The tiny UNITER step for a v5e-16 slice on this CPU: the memory report against v5e's 16 GiB, data
    parallelism's gradient all-reduce over 16 chips, FSDP's all-gathers, an estimate from v5e's figures."""
    out = tmp_path / "dp.json"
    assert main(["compile", "--config", "pretrain:uniter,tiny", "--topology", "v5e-16", "--mesh", "dp", "--batch", "32",
                 "--json", str(out)]) == 0
    dp = json.loads(out.read_text())
    assert dp["devices"] == 16 and dp["hbm_bytes"] == 16 * 2**30 and dp["fits"]
    assert 0 < dp["peak_bytes"] < 2**30 and dp["memory"]["temp_size_in_bytes"] > 0
    assert dp["collective_counts"].get("all-reduce", 0) >= 1 and dp["collective_bytes"]["all-reduce"] > 0
    assert dp["peak_flops_per_chip"] == 197e12 and dp["estimate_s"] > 0
    assert "FITS" in capsys.readouterr().out
    assert main(["compile", "--config", "pretrain:uniter,tiny", "--topology", "v5e-16", "--mesh", "fsdp",
                 "--batch", "32", "--json", str(out)]) == 0
    fsdp = json.loads(out.read_text())
    assert fsdp["collective_counts"].get("all-gather", 0) >= 1
    assert fsdp["memory"]["argument_size_in_bytes"] < dp["memory"]["argument_size_in_bytes"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu absent: install the tpu extra (pip install 'jaxvl[tpu]')")
def test_scan_trip_count_read_from_a_tpu_program():
    """A 12-step scan over FSDP-split weights compiled for v5e-16: XLA all-reduces each step's partial product
    inside the loop, so the reader must count 12 executions (its trip count read from the TPU loop condition),
    the same all-reduce traffic as the unrolled loop to within its one reshaped step."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxvl.aot.chips import topology_devices
    from jaxvl.runtime.sharding import make_mesh

    mesh = make_mesh(1, 16, 1, devices=topology_devices(parse_slice("v5e-16")))
    ws = jax.ShapeDtypeStruct((12, 256, 256), jnp.float32, sharding=NamedSharding(mesh, P(None, "fsdp", None)))
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=NamedSharding(mesh, P()))

    def scanned(ws, x):
        return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0]

    with jax.set_mesh(mesh):
        text = jax.jit(scanned, out_shardings=NamedSharding(mesh, P())).lower(ws, x).compile().as_text()
    s = collectives(text, 16)
    assert s.unknown_loops == 0 and s.counts["all-reduce"] == 12
    assert s.bytes["all-reduce"] == pytest.approx(12 * 2 * 15 / 16 * 64 * 256 * 4)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu absent: install the tpu extra (pip install 'jaxvl[tpu]')")
def test_multislice_mesh_and_report(tmp_path):
    """Two v5e-16 slices: ``runtime.sharding.make_mesh`` puts the data axis across the slices (each slice holds
    whole fsdp x tensor groups), refuses a data size that the slices do not divide, and the compiled report
    adds the data-centre network term for the cross-slice gradient reduction."""
    from jaxvl.aot.chips import topology_devices
    from jaxvl.runtime.sharding import make_mesh

    devices = topology_devices(parse_slice("v5e-16"), num_slices=2)
    mesh = make_mesh(2, 16, 1, devices=devices)
    assert [{d.slice_index for d in mesh.devices[k].flat} for k in range(2)] == [{0}, {1}]
    with pytest.raises(ValueError, match="must be a multiple of the number of slices"):
        make_mesh(1, 32, 1, devices=devices)
    out = tmp_path / "multi.json"
    assert main(["compile", "--config", "pretrain:uniter,tiny", "--topology", "v5e-16", "--num-slices", "2",
                 "--mesh", "data=2,fsdp=16", "--batch", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["devices"] == 32 and report["target"] == "v5e-16 x 2 slices" and report["dcn_s"] > 0


def test_topologies_bench_bisection_and_table(monkeypatch):
    """``jaxvl bench topologies``: the global batch rule, the largest-model bisection (over a fake compile whose
    memory grows with the rung) and the table's cells for a compiled row and for one that failed."""
    from jaxvl.benchmarks import topologies

    assert [topologies.global_batch(c, 16) for c in (4, 16, 64, 256, 512)] == [256, 256, 1024, 4096, 4096]
    ladder = tuple((256 * (i + 1), 12) for i in range(7))
    compiled = []

    def fake_row(preset, topology, strategy, per_chip, overrides=None, hlo_dir=None, remat="none"):
        compiled.append(overrides["hidden_size"])
        gib = overrides["hidden_size"] / 256 * 3.0  # rung i needs 3 (i + 1) GiB
        return dict(preset=preset, slice=topology, strategy=strategy, batch=256, fits=gib <= 16,
                    peak_bytes=int(gib * 2**30), params=overrides["hidden_size"] * 1000)

    monkeypatch.setattr(topologies, "compile_row", fake_row)
    best = topologies.largest_that_fits("v5e-16", 16, ladder)
    assert best["largest"] == (1280, 12) and best["tried"] == len(compiled) <= 3  # 5 x 3 = 15 GiB <= 16
    row = dict(preset="uniter", slice="v5e-16", strategy="fsdp", batch=256, mesh={"data": 1, "fsdp": 16, "tensor": 1},
               fits=False, peak_bytes=20 * 2**30, hbm_bytes=16 * 2**30, collective_bytes={"all-gather": 2**30},
               estimate_s=0.0123, mfu_estimate=0.42, compile_s=61.0)
    assert topologies.table_row(row)[3:] == ["(1,16,1)", "256", "**no**", "20.00 (16)", "1.00", "12.3", "42%", "61"]
    failed = dict(preset="uniter", slice="v5e-16", strategy="dp", batch=256, error="ValueError: boom", wall_s=3.0)
    assert topologies.table_row(failed)[5:7] == ["error", "ValueError: boom"]


def test_topologies_bench_a_compile_refused_for_memory_does_not_fit(monkeypatch):
    """XLA refuses to compile a program whose temporaries exceed HBM: the row records ``fits=False`` (so the
    largest-model bisection steps down) and the table quotes the compiler's figures; other errors stay errors."""
    import jaxvl.aot.run
    from jaxvl.benchmarks import topologies

    def refused(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                           "temporaries (99.23G) exceeds available HBM (95.74G).\nmore lines")

    monkeypatch.setattr(jaxvl.aot.run, "compile_report", refused)
    row = topologies.compile_row("uniter", "v5p-128", "fsdp", 8, {"hidden_size": 10240})
    assert row["fits"] is False and "RESOURCE_EXHAUSTED" in row["error"]
    assert topologies.table_row(row)[5:7] == ["**no** (compile refused)", "HLO temporaries 99.23G > HBM 95.74G"]
    assert topologies._fit_text(row) == "does not fit (compiler: HLO temporaries 99.23G > HBM 95.74G)"
    monkeypatch.setattr(jaxvl.aot.run, "compile_report", lambda *a, **k: 1 / 0)
    other = topologies.compile_row("uniter", "v5p-128", "fsdp", 8)
    assert "fits" not in other and topologies.table_row(other)[5] == "error"

    def silent(*args, **kwargs):
        raise AssertionError()

    monkeypatch.setattr(jaxvl.aot.run, "compile_report", silent)  # an error without a message is still a row
    assert topologies.compile_row("uniter", "v5p-128", "fsdp", 8)["error"] == "AssertionError: "


def test_topologies_bench_ladder_option(monkeypatch, capsys, tmp_path):
    """``--ladder`` parses HIDDENxLAYERS rungs, refuses malformed or shrinking ones in one line, and the
    largest-model search compiles only its rungs, with ``--remat``'s policy."""
    from jaxvl.benchmarks import topologies

    assert topologies.parse_ladder("4096x32,5120X40") == ((4096, 32), (5120, 40))
    for bad in ("4096", "4096x32,2560x32", "100x12", "4096x0", "4096x32,4096x32", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            topologies.parse_ladder(bad)
    parser = argparse.ArgumentParser()
    topologies.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--ladder", "4096x32,2560x32"])
    assert "rungs must grow" in capsys.readouterr().err
    assert parser.parse_args([]).ladder == topologies.LADDER
    compiled, out = [], tmp_path / "largest.json"

    def fake_row(preset, topology, strategy, per_chip, overrides=None, hlo_dir=None, remat="none"):
        assert remat == "full"
        saved = json.loads(out.read_text())["largest_rows"] if out.exists() else []
        assert len(saved) == len(compiled)  # the JSON holds every rung compiled before this one
        compiled.append((overrides["hidden_size"], len(overrides["t_ff_sublayers"])))
        return dict(preset=preset, slice=topology, strategy=strategy, batch=4096, fits=True, peak_bytes=2**30,
                    params=1)

    monkeypatch.setattr(topologies, "compile_row", fake_row)
    result = topologies.run(parser.parse_args(["--topologies", "v5e-256", "--largest-only",
                                               "--ladder", "2560x32,4096x32", "--remat", "full",
                                               "--out", str(out)]))
    assert result["rows"] == [] and result["largest"][0]["largest"] == (4096, 32)
    assert result["largest"][0]["remat"] == "full" and "| v5e-256 | fsdp | full | 4096 x 32 |" in \
        topologies.format_markdown(result)
    assert sorted(compiled) == [(2560, 32), (4096, 32)]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu absent: install the tpu extra (pip install 'jaxvl[tpu]')")
def test_mesh_axis_that_splits_a_physical_axis():
    """tensor=4 on a v6e-64 slice (an 8x8 torus: no product of physical axes is 4): the mesh splits one."""
    from jaxvl.aot.chips import topology_devices
    from jaxvl.runtime.sharding import make_mesh

    mesh = make_mesh(1, 16, 4, devices=topology_devices(parse_slice("v6e-64")))
    assert mesh.devices.shape == (1, 16, 4) and len({d.id for d in mesh.devices.flat}) == 64
