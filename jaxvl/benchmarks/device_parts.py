"""The parts of ``jaxvl bench device`` (``jaxvl.benchmarks.device``), each a thin driver of an existing benchmark
module's public functions, with the sizes of a GPU run (``FULL``) and of a CPU smoke run (``SMOKE``):

- ``pretrain``: ``pretrain.bench_one`` per preset (the trainer's step), the matmul peak before each;
- ``torch``: ``models_torch.bench_torch`` (HF LXMERT and VisualBERT fwd+bwd under CUDA bf16 autocast) beside
  the ``pretrain`` rows; skipped, with the reason, unless torch has CUDA and JAX runs on a GPU;
- ``sweep``: ``pretrain.bench_one`` with a K-member sweep (``bench_sweep``) at each sweep size;
- ``ablate``: ``ablate.bench_model`` per ablation spec and preset (vmap, ``member_batch_size=1``, the loop);
- ``decode``: ``caption_decode.bench_decoding`` of beam search only;
- ``data``: ``data.bench_prepare`` + ``data.bench_read``, beside the ``pretrain`` part's UNITER step.

A part fills its own result dict (shaped like its module's ``run`` result, so the module's ``format_markdown``
prints it) and calls ``Context.save`` after every row. Units inside a part (a preset, a size, a spec) are
skipped, with the reason, once the slowest unit so far no longer fits the time left (``run_units``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxvl.ablation.spec import DEFAULT_THRESHOLDS
from jaxvl.benchmarks import ablate, caption, caption_decode, caption_setup, data, models, models_torch, pretrain
from jaxvl.benchmarks.common import fmt, log, markdown_table
from jaxvl.models.ort.captioner import Captioner
from jaxvl.models.params import count_params
from jaxvl.models.volta.model import get_model
from jaxvl.models.volta.presets import PRESETS
from jaxvl.runtime.sharding import make_mesh

ALL_LEVELS = (("none", "object", "all"), ("none", "phrase", "all"))  # (vis4lang, lang4vis) conditions


# ------------------------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size and count of a run. Batches are examples (images for decoding) per call; ``estimates`` are the
    seconds each part is expected to take (compile included, the compilation cache cold), read before it starts."""

    model_size: str  # VOLTA size of the pretraining, sweep and ablation models: ctrl | tiny
    caption_size: str  # captioner size: ort | tiny
    dtype: str  # matmul dtype of every model (parameters and optimizer state stay float32)
    presets: tuple[str, ...]  # presets of the pretraining step
    weight_grad_preset: str | None  # also timed with weight_grad_dtype="compute" (the default's cost), last
    batch: int  # pretraining step batch
    warmup: int  # untimed steps
    steps: int  # timed steps, median reported
    peak_n: int  # side of the square matmuls that measure the peak
    peak_reps: int  # chained matmuls per peak call
    peak_tries: int  # timed peak calls, best kept
    torch_warmup: int
    torch_iters: int
    sweep_preset: str
    sweep_k: int  # sweep members (and sequential runs)
    sweep_batch: int
    sweep_sizes: tuple[str, ...]
    sweep_steps: int  # timed steps of each sequential run and of the sweep
    ablate_presets: tuple[str, ...]
    ablate_batch: int
    ablate_specs: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]], ...]  # (vis4lang, lang4vis, T)
    ablate_warmup: int
    ablate_iters: int
    decode_batch: int  # images of the batched call
    decode_loop_images: int  # images through the per-image and no-cache loops
    decode_max_len: int
    beam: int
    decode_warmup: int
    decode_iters: int
    data_world: dict[str, int]  # knobs of the synthetic world the pipeline reads
    data_batch: int
    data_read_examples: int
    data_threads: tuple[int, ...]
    data_workers: tuple[int, ...]
    data_part_examples: int
    fast_compile: bool  # FAST_COMPILE for every compiled program (smoke runs only: slower programs)
    estimates: dict[str, float]


FULL = Sizes(
    model_size="ctrl", caption_size="ort", dtype="bfloat16", presets=PRESETS, weight_grad_preset="uniter",
    batch=256, warmup=3, steps=20, peak_n=4096, peak_reps=10, peak_tries=10, torch_warmup=3, torch_iters=10,
    sweep_preset="uniter", sweep_k=8, sweep_batch=32, sweep_sizes=("tiny", "ctrl"), sweep_steps=16,
    ablate_presets=("uniter", "lxmert"), ablate_batch=ablate.BATCH,
    ablate_specs=((*ALL_LEVELS, (0.5,)), (*ALL_LEVELS, DEFAULT_THRESHOLDS)), ablate_warmup=2, ablate_iters=5,
    decode_batch=64, decode_loop_images=16, decode_max_len=caption_setup.MAX_LEN, beam=5, decode_warmup=1,
    decode_iters=5,
    data_world=dict(num_images=128, num_regions=36, feature_dim=2048, num_classes=1600), data_batch=32,
    data_read_examples=4096, data_threads=(4,), data_workers=(0, 4), data_part_examples=128,
    fast_compile=False,
    estimates={"pretrain": 180, "torch": 45, "sweep": 100, "ablate": 150, "decode": 90, "data": 60})
SMOKE = dataclasses.replace(
    FULL, model_size="tiny", caption_size="tiny", presets=("uniter", "lxmert"),
    batch=4, warmup=1, steps=2, peak_n=128, peak_reps=1, peak_tries=2, torch_warmup=0, torch_iters=1,
    sweep_k=2, sweep_batch=4, sweep_sizes=("tiny",), sweep_steps=2,
    ablate_presets=("uniter",), ablate_batch=4, ablate_specs=((("none",), ("none",), (0.5,)),), ablate_warmup=0,
    ablate_iters=1,
    decode_batch=2, decode_loop_images=1, decode_max_len=4, decode_warmup=0, decode_iters=1,
    data_world=dict(num_images=8, num_regions=10, feature_dim=32, num_classes=20), data_batch=4,
    data_read_examples=32, data_threads=(1,), data_workers=(0,), data_part_examples=8,
    fast_compile=True,
    estimates={"pretrain": 60, "torch": 5, "sweep": 25, "ablate": 20, "decode": 20, "data": 5})


def members(spec: tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]]) -> int:
    """Members of an ablation spec: vis4lang ``object`` and every lang4vis condition once per threshold."""
    vis4lang, lang4vis, thresholds = spec
    return sum(len(thresholds) if c == "object" else 1 for c in vis4lang) + len(lang4vis) * len(thresholds)


# ------------------------------------------------------------------------------------------ budget


class Skip(Exception):  # noqa: N818 -- a part's "cannot run here", not an error
    """Raised by a part that cannot run on this machine; its message is the reason recorded."""


class Budget:
    """Wall-clock seconds for the whole run, counted from when it was made (``clock``: seconds, monotonic)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left (negative once over)."""
        return self.seconds - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        """Whether ``estimate_s`` more seconds stay within the budget."""
        return estimate_s <= self.left()

    def why_not(self, estimate_s: float, basis: str) -> str:
        """The recorded reason for skipping something estimated at ``estimate_s`` (``basis``: how estimated)."""
        return (f"estimated {estimate_s:.0f} s ({basis}) > {max(self.left(), 0):.0f} s left of the "
                f"{self.seconds:.0f} s budget")


def run_units(budget: Budget, units: Sequence[tuple[str, Callable[[], None]]], skipped: list[dict[str, str]]) -> None:
    """Runs ``(label, fn)`` units in order; each after the first runs only if the slowest so far fits the time
    left, else ``{"unit", "reason"}`` goes to ``skipped``."""
    slowest = 0.0
    for label, fn in units:
        if slowest and not budget.fits(slowest):
            skipped.append({"unit": label, "reason": budget.why_not(slowest, "the slowest unit of this part so far")})
            log(f"  skipped {label}: {skipped[-1]['reason']}")
            continue
        start = budget.elapsed()
        fn()
        slowest = max(slowest, budget.elapsed() - start)


# ------------------------------------------------------------------------------------------ context


@dataclasses.dataclass
class Context:
    """What every part reads: the sizes, the device, the budget, the whole document (earlier parts' results) and
    ``save()``, which writes the JSON and markdown."""

    sizes: Sizes
    device: jax.Device
    budget: Budget
    doc: dict[str, Any]
    save: Callable[[], None]

    def result(self, part: str) -> dict[str, Any]:
        """The result dict of ``part`` ({} if it has none)."""
        return self.doc["parts"].get(part, {}).get("result", {})


def module_args(module: Any, **values: Any) -> argparse.Namespace:
    """``module``'s ``add_arguments`` defaults with ``values`` set (each must be one of its options)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args([])
    unknown = set(values) - set(vars(args))
    if unknown:
        raise TypeError(f"{module.__name__} has no option {sorted(unknown)}")
    vars(args).update(values)
    return args


def _step_row(ctx: Context, preset: str) -> dict[str, Any] | None:
    """The ``pretrain`` part's row of ``preset``, if measured."""
    return next((r for r in ctx.result("pretrain").get("rows", [])
                 if r["preset"] == preset and r.get("weight_grad_dtype") != "compute"), None)


# ------------------------------------------------------------------------------------------- parts


def run_pretrain(ctx: Context, out: dict[str, Any]) -> None:
    """The trainer's step of every preset at ``model_size``, ``batch``, scanned layers; the peak before each."""
    s = ctx.sizes
    out.update(peaks={}, peak_measurements=[], rows=[], sweeps=[], skipped=[])
    settings = dict(batch=s.batch, warmup=s.warmup, steps=s.steps, dtype=s.dtype, scan_layers=True,
                    fast_compile=s.fast_compile)

    def save() -> None:
        pretrain.add_mfu(out)
        ctx.save()

    def one(name: str, weight_grad_dtype: str = "float32") -> None:
        pretrain.update_peak(out, pretrain.measure_matmul_peak(s.dtype, s.peak_n, s.peak_reps, s.peak_tries))
        args = module_args(pretrain, **settings, weight_grad_dtype=weight_grad_dtype)
        pretrain.bench_one(name, s.model_size, args, ctx.device, 0, out, save)

    units = [(name, functools.partial(one, name)) for name in s.presets]
    if s.weight_grad_preset and s.dtype != "float32":  # what the float32 weight-gradient default costs here
        units.append((f"{s.weight_grad_preset} weight_grad_dtype=compute",
                      functools.partial(one, s.weight_grad_preset, "compute")))
    run_units(ctx.budget, units, out["skipped"])


def run_torch(ctx: Context, out: dict[str, Any]) -> None:
    """HF LXMERT and VisualBERT fwd+bwd on CUDA under bf16 autocast at the ``pretrain`` part's batch and shapes."""
    where = models_torch.torch_device(ctx.device)
    if where is None:
        raise Skip("torch is not installed")
    if where != "cuda" or ctx.device.platform != "gpu":
        import torch

        raise Skip(f"needs JAX on a GPU and torch with CUDA; JAX runs on {ctx.device.platform}, torch "
                   f"{torch.__version__} has CUDA: {torch.cuda.is_available()}")
    import torch

    s = ctx.sizes
    args = module_args(models, dtype=s.dtype, dropout=True)
    out.update(torch_device=models_torch.torch_device_name(where), rows=[])
    for name, original in models_torch.TORCH_ORIGINALS.items():
        cfg = get_model(name, tiny=s.model_size == "tiny", dtype=s.dtype).cfg
        inputs = models.make_inputs(cfg, s.batch, pretrain.TEXT_LEN, pretrain.REGIONS, args.seed)
        row = {"preset": name, "torch_model": original, "batch": s.batch, "dtype": s.dtype, "dropout": True,
               "warmup": s.torch_warmup, "iters": s.torch_iters,
               **models_torch.bench_torch(name, cfg, inputs, args, where, s.torch_warmup, s.torch_iters)}
        step = _step_row(ctx, name)
        if step is not None:
            row["jaxvl_step_ms_per_example"] = step["step_ms"] / step["batch"]
            row["torch_fwdbwd_over_jaxvl_step"] = row["torch_fwdbwd_ms"] / row["jaxvl_step_ms_per_example"]
        out["rows"].append(row)
        ctx.save()
    torch.cuda.empty_cache()


def run_sweep(ctx: Context, out: dict[str, Any]) -> None:
    """A ``sweep_k``-member sweep against ``sweep_k`` sequential runs of ``sweep_preset`` at each sweep size."""
    s = ctx.sizes
    out.update(peaks={}, peak_measurements=[], rows=[], sweeps=[], skipped=[])
    args = module_args(pretrain, batch=s.sweep_batch, warmup=s.warmup, steps=s.sweep_steps, dtype=s.dtype,
                       scan_layers=True, sweep_k=s.sweep_k, fast_compile=s.fast_compile)
    pretrain.update_peak(out, pretrain.measure_matmul_peak(s.dtype, s.peak_n, s.peak_reps, s.peak_tries))

    def save() -> None:
        pretrain.add_mfu(out)
        ctx.save()

    units = [(size, functools.partial(pretrain.bench_one, s.sweep_preset, size, args, ctx.device, s.sweep_k, out,
                                      save)) for size in s.sweep_sizes]
    run_units(ctx.budget, units, out["skipped"])


def run_ablate(ctx: Context, out: dict[str, Any]) -> None:
    """Each ablation spec on each preset: vmap vs ``member_batch_size=1`` vs the per-condition loop. A larger
    spec's loop (one program per member) runs only if the smaller spec's time, scaled by members, fits."""
    s = ctx.sizes
    out.update(rows=[], skipped=[], loops_dropped=[])
    mesh = make_mesh(devices=[ctx.device])
    first_wall: dict[str, tuple[int, float]] = {}  # preset: (members, seconds) of its first spec

    def one(name: str, spec: tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]]) -> None:
        m = members(spec)
        no_loop = False
        if name in first_wall and m > first_wall[name][0]:
            m0, t0 = first_wall[name]
            estimate = t0 * m / m0
            no_loop = not ctx.budget.fits(estimate)
            if no_loop:
                reason = ctx.budget.why_not(estimate, f"the {m0}-member run took {t0:.0f} s, x {m}/{m0} members")
                out["loops_dropped"].append({"preset": name, "members": m, "reason": reason})
        args = module_args(ablate, batch=s.ablate_batch, models=[1], vis4lang=list(spec[0]), lang4vis=list(spec[1]),
                           thresholds=list(spec[2]), member_batch=[None, 1], dtype=s.dtype, warmup=s.ablate_warmup,
                           iters=s.ablate_iters, no_loop=no_loop, fast_compile=s.fast_compile, scan_layers=True)
        start = ctx.budget.elapsed()
        ablate.bench_model(name, s.model_size, args, ctx.device, mesh, out, ctx.save)
        first_wall.setdefault(name, (m, ctx.budget.elapsed() - start))

    units = [(f"{name}, {members(spec)} members", functools.partial(one, name, spec))
             for spec in s.ablate_specs for name in s.ablate_presets]
    run_units(ctx.budget, units, out["skipped"])


def run_decode(ctx: Context, out: dict[str, Any]) -> None:
    """Beam search of the captioner at ``caption_size``: batched vs per-image loop vs no-cache (ORT-style) loop."""
    s = ctx.sizes
    args = module_args(caption, sizes=[s.caption_size], batch=s.decode_batch, loop_images=s.decode_loop_images,
                       beam=s.beam, max_len=s.decode_max_len, warmup=s.decode_warmup, iters=s.decode_iters,
                       dtype=s.dtype, fast_compile=s.fast_compile)
    model = Captioner(caption_setup.model_config(s.caption_size, s.dtype))
    params = caption_setup.init_params(model, args.regions, args.seed, caption_setup.compiler_options(args))
    out.update(models={s.caption_size: {"config": caption_setup.config_summary(model.cfg),
                                        "params": count_params(params)}}, decode=[], train=[])
    caption_decode.bench_decoding(s.caption_size, model, params, args, ctx.device, out, ctx.save, methods=("beam",))


def run_data(ctx: Context, out: dict[str, Any]) -> None:
    """The Grain pipeline's examples/s on a freshly prepared synthetic dataset, beside the UNITER step's rate."""
    s = ctx.sizes
    knobs = dict(s.data_world, captions_per_image=data.CAPTIONS_PER_IMAGE, seed=0)
    args = module_args(data, batch=s.data_batch, read_examples=s.data_read_examples, threads=list(s.data_threads),
                       workers=list(s.data_workers), part_examples=s.data_part_examples)
    with tempfile.TemporaryDirectory(prefix="jaxvl_bench_device_") as tmp:
        prepared, dataset_dir = data.bench_prepare(knobs, tmp)
        out.update(world=knobs, rows=[prepared, *data.bench_read(dataset_dir, args)])
    pipeline = [r for r in out["rows"] if "first_batch_s" in r]
    best = max(pipeline, key=lambda r: r["examples_per_s"])
    out["best_pipeline"] = {"what": best["what"], "examples_per_s": best["examples_per_s"]}
    step = _step_row(ctx, "uniter")
    if step is not None:
        out["consumer"] = {k: step[k] for k in ("preset", "size", "batch", "dtype", "step_ms", "examples_per_s")}
        out["pipeline_over_step"] = best["examples_per_s"] / step["examples_per_s"]


# ------------------------------------------------------------------------------------------ markdown


def _skips(result: dict[str, Any]) -> list[str]:
    """Lines naming the units a part skipped, with the reasons."""
    lines = [f"- skipped {s['unit']}: {s['reason']}" for s in result.get("skipped", [])]
    lines += [f"- {d['preset']}, {d['members']} members: per-condition loop not run: {d['reason']}"
              for d in result.get("loops_dropped", [])]
    return lines


def md_pretrain(result: dict[str, Any], sizes: dict[str, Any]) -> str:
    """What was measured, the peak lines and the step table."""
    what = (f"Measured: the trainer's pretraining step (`jaxvl.pretrain.step`: ITM negatives, token and region "
            f"masking, forward, backward, clipped AdamW; dropout on) per preset, {sizes['model_size']} size, "
            f"{sizes['dtype']} matmuls, `scan_layers=True`, batch {sizes['batch']} x (38 tokens, 37 regions); "
            f"{sizes['warmup']} warm-up + {sizes['steps']} timed steps, median. Units: ms/step, examples/s; MFU = "
            f"analytic train FLOPs / step time / the measured {sizes['dtype']} matmul peak (the best so far); "
            f"compile s = AOT lower + compile.")
    if any(r.get("weight_grad_dtype") == "compute" for r in result.get("rows", [])):
        what += (f" The last row, {sizes['weight_grad_preset']} with its dense layers' weight gradients in "
                 f"{sizes['dtype']} (`model.weight_grad_dtype=compute`), is what the float32 default costs beside "
                 f"the same preset's row above.")
    return "\n".join([what, "", pretrain.format_markdown(result), *_skips(result)])


def md_torch(result: dict[str, Any], sizes: dict[str, Any]) -> str:
    """The HF PyTorch rows and their ratios to jaxvl's step."""
    what = (f"Measured: HF `transformers` LXMERT and VisualBERT with jaxvl's heads and loss "
            f"(`jaxvl.benchmarks.models_torch`), random init, dropout on, eager, {result.get('torch_device', '-')}, "
            f"bf16 autocast, batch {sizes['batch']}; {sizes['torch_warmup']} warm-up + {sizes['torch_iters']} timed "
            f"calls, median. Units: ms per example. torch fwd+bwd has no optimizer update, jaxvl's step has (and its "
            f"masking), so torch / jaxvl above 1 means jaxvl's whole step is faster than torch's fwd+bwd alone.")
    cols = ["preset", "torch model", "B", "torch fwd ms/ex", "torch fwd+bwd ms/ex", "jaxvl train step ms/ex",
            "torch fwd+bwd / jaxvl step"]
    rows = [[r["preset"], r["torch_model"], r["batch"], f"{r['torch_fwd_ms']:.3f}", f"{r['torch_fwdbwd_ms']:.3f}",
             fmt(r.get("jaxvl_step_ms_per_example"), ".3f"), fmt(r.get("torch_fwdbwd_over_jaxvl_step"), ".2f")]
            for r in result.get("rows", [])]
    return "\n".join([what, "", markdown_table(cols, rows)])


def md_sweep(result: dict[str, Any], sizes: dict[str, Any]) -> str:
    """The single-run rows and the sweep-vs-sequential table."""
    what = (f"Measured: one {sizes['sweep_k']}-member sweep of {sizes['sweep_preset']} (`jaxvl.pretrain.sweep`, "
            f"members differing in seed) against {sizes['sweep_k']} sequential single runs of the trainer's step, "
            f"{sizes['dtype']}, `scan_layers=True`, batch {sizes['sweep_batch']} per member; each run "
            f"{sizes['warmup']} warm-up + {sizes['sweep_steps']} timed steps, the sweep's steps interleaved with the "
            f"runs. Units: member-steps/s (members x steps per second); the first table is the single step at that "
            f"batch.")
    return "\n".join([what, "", pretrain.format_markdown(result), *_skips(result)])


def md_ablate(result: dict[str, Any], sizes: dict[str, Any]) -> str:
    """The ablation rows, with the Flickr30k Entities projection."""
    what = (f"Measured: the cross-modal ablation (`jaxvl.ablation.sweep.AblationSweep`) of one {sizes['model_size']} "
            f"checkpoint (K = 1), {sizes['dtype']}, `scan_layers=True`, batch {sizes['ablate_batch']} examples of 38 "
            f"tokens x 37 regions; 'vmap' evaluates every member at once, 'map 1' one member at a time inside one "
            f"program, the loop one compiled program per member called from Python; {sizes['ablate_warmup']} warm-up "
            f"+ {sizes['ablate_iters']} timed calls, median. Units: example-conditions/s (examples x members x K per "
            f"second); the Flickr30k Entities val projection is {ablate.FLICKR30K_VAL_EXAMPLES:,} examples x the "
            f"members (x 6 for the 6-member rows) at the measured time per batch, plus compile.")
    return "\n".join([what, "", ablate.format_markdown(result), *_skips(result)])


def md_decode(result: dict[str, Any], sizes: dict[str, Any]) -> str:
    """The beam-search rows."""
    what = (f"Measured: beam-{sizes['beam']} decoding of the captioner at {sizes['caption_size']} size "
            f"(`jaxvl.caption.decoding.beam_search`), random weights, {sizes['dtype']}, 36 regions, at most "
            f"{sizes['decode_max_len']} tokens: batched ({sizes['decode_batch']} images per call) vs a per-image "
            f"loop and a no-cache (ORT-style) loop over {sizes['decode_loop_images']} images; "
            f"{sizes['decode_warmup']} warm-up + {sizes['decode_iters']} timed calls each, median. Units: captions/s "
            f"(the best beam of each image).")
    return "\n".join([what, "", caption.format_markdown(result)])


def md_data(result: dict[str, Any], sizes: dict[str, Any]) -> str:
    """The pipeline rows and the step's consumption beside the best of them."""
    world = result.get("world", sizes["data_world"])
    what = (f"Measured: `jaxvl_synthetic_pretrain` prepared by its TFDS builder ({world['num_images']} images, "
            f"{world['num_regions']} regions x {world['feature_dim']} features, {world['num_classes']} classes), then "
            f"read by the Grain pipeline (`pretrain_dataset`, batch {sizes['data_batch']}, at least "
            f"{sizes['data_read_examples']} examples per row, the first batch timed apart). Units: examples/s on this "
            f"host, beside the examples/s the `pretrain` part's UNITER step consumes.")
    cols = ["stage", "what", "threads x workers", "examples", "s", "examples/s", "first batch s"]
    rows = [[r["stage"], r["what"], "-" if "threads" not in r else f"{r['threads']} x {r['workers']}", r["examples"],
             f"{r['seconds']:.2f}", fmt(r["examples_per_s"], ",.1f"), fmt(r.get("first_batch_s"), ".2f")]
            for r in result.get("rows", [])]
    lines = [what, "", markdown_table(cols, rows), ""]
    step = result.get("consumer")
    if step is None:
        lines.append("- the UNITER step was not measured (the `pretrain` part did not run it): no ratio")
    else:
        lines.append(f"- consumer: {step['preset']} {step['size']} train step, {step['dtype']}, B={step['batch']}: "
                     f"{step['step_ms']:.1f} ms/step = {step['examples_per_s']:,.1f} examples/s; the best pipeline "
                     f"row reads {result['best_pipeline']['examples_per_s']:,.1f} examples/s = "
                     f"**{result['pipeline_over_step']:.2f}x** the step's consumption")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Part:
    """One part: its name, what it measures (one line), its driver and its markdown section."""

    name: str
    summary: str
    run: Callable[[Context, dict[str, Any]], None]
    markdown: Callable[[dict[str, Any], dict[str, Any]], str]


PARTS = (  # the priority order
    Part("pretrain", "pretraining step of each preset: ms/step, examples/s, MFU", run_pretrain, md_pretrain),
    Part("torch", "HF PyTorch LXMERT / VisualBERT fwd+bwd beside jaxvl's step", run_torch, md_torch),
    Part("sweep", "K-member vmapped sweep vs K sequential runs: member-steps/s", run_sweep, md_sweep),
    Part("ablate", "ablation sweep vs member_batch_size=1 vs per-condition loop", run_ablate, md_ablate),
    Part("decode", "beam search: batched vs per-image vs no-cache loop, captions/s", run_decode, md_decode),
    Part("data", "Grain pipeline examples/s beside the UNITER step's consumption", run_data, md_data),
)
