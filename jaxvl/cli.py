"""The ``jaxvl`` command.

    jaxvl models [--size ctrl|tiny] [--presets uniter,lxmert]   build each preset, count, run one forward pass
    jaxvl prepare --source synthetic[:key=value,...] --out DIR  write TFDS ArrayRecord datasets
    jaxvl bench models [...]                                    forward / backward / compile benchmarks
    jaxvl bench data [...]                                      input pipeline records/s beside a train step
    jaxvl bench pretrain | caption | ablate [...]               train step MFU, sweeps; decoding; the ablation sweep
    jaxvl pretrain --config pretrain:uniter,tiny --workdir DIR [--config.key=value ...]

    jaxvl caption train | decode | evaluate | analyze --config caption:ort,tiny --workdir DIR
    jaxvl ablate --config ablate:tiny --workdir DIR --config.checkpoints=RUN[,RUN...]
    jaxvl demo [--out runs/demo]                                the main job on the synthetic world
"""

from __future__ import annotations

import argparse
import sys
import time

# VOLTA's own BertForVLPreTraining parameter counts for the ctrl configs (shared tensors counted once).
VOLTA_PARAM_COUNTS = {"visualbert": 114_882_941, "uniter": 114_497_405, "vl-bert": 116_066_941,
                      "lxmert": 211_369_853, "vilbert": 242_076_029}


def _example_batch(cfg, batch: int, text_len: int, regions: int, seed: int = 0) -> dict:
    """A random valid batch: token ids, features, [x1, y1, x2, y2, area] boxes, one padded text row."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (batch, text_len)).astype(np.int32)
    text_mask = np.ones((batch, text_len), np.int32)
    text_mask[-1, text_len // 2:] = 0
    ids[text_mask == 0] = 0
    xy = rng.uniform(0, 0.5, (batch, regions, 2))
    wh = rng.uniform(0.05, 0.5, (batch, regions, 2))
    boxes = np.concatenate([xy, xy + wh, wh[..., :1] * wh[..., 1:]], -1).astype(np.float32)
    boxes[:, 0] = [0, 0, 1, 1, 1]  # the global [IMG] row
    return dict(input_ids=ids, features=rng.normal(size=(batch, regions, cfg.v_feature_size)).astype(np.float32),
                locations=boxes, text_mask=text_mask, region_mask=np.ones((batch, regions), np.int32))


def cmd_models(args: argparse.Namespace) -> int:
    """Builds each preset, checks its parameter count against VOLTA's, runs one jitted forward pass."""
    import jax

    from jaxvl.models import count_params, find_segments, get_model, validate_batch

    if args.config:
        from jaxvl.configs import load_config

        cfg = load_config(args.config, args.config_overrides)
        for key in ("presets", "size", "batch", "text_len", "regions"):
            setattr(args, key, cfg[key])

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} devices); "
          f"forward pass at {args.size} size, batch {args.batch}, text {args.text_len}, regions {args.regions}")
    mismatches = 0
    for name in args.presets.split(","):
        full = get_model(name)
        shapes = jax.eval_shape(lambda m=full: m.init(jax.random.key(0), **m.dummy_inputs()))
        n_params = count_params(shapes["params"])
        ok = n_params == VOLTA_PARAM_COUNTS[name]
        mismatches += not ok
        segments = " + ".join(f"{s.repeats}x{len(s.sublayers)}" for s in find_segments(full.cfg.sublayers))
        print(f"\n{name}: {'dual' if full.cfg.dual_stream else 'single'}-stream, {full.cfg.plan.depth} sub-layers "
              f"({segments}), {n_params:,} parameters (VOLTA: {VOLTA_PARAM_COUNTS[name]:,}, "
              f"{'equal' if ok else 'DIFFERENT'})")

        model = full if args.size == "ctrl" else get_model(name, tiny=True)
        batch = _example_batch(model.cfg, args.batch, args.text_len, args.regions)
        validate_batch(batch, model.cfg, source=f"{name} example batch")
        start = time.perf_counter()
        variables = jax.jit(lambda b, m=model: m.init(jax.random.key(0), **b))(batch)
        out = jax.jit(lambda v, b, m=model: m.apply(v, **b))(variables, batch)
        jax.block_until_ready(out)
        print(f"  forward ({time.perf_counter() - start:.1f} s incl. init and compile):")
        for field in ("text", "vision", "pooled", "mlm_logits", "itm_logits"):
            print(f"    {field:<13} {tuple(getattr(out, field).shape)}")
        for key, logits in out.visual_logits.items():
            print(f"    visual[{key}]     {tuple(logits.shape)}")
    return 1 if mismatches else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Runs (or resumes) a pretraining config; exit 143 when stopped by SIGTERM after checkpointing."""
    from jaxvl.runtime.distributed import from_environment, initialize

    initialize(from_environment(args.coordinator, args.num_processes, args.process_id))
    from jaxvl.configs import load_config
    from jaxvl.pretrain.trainer import pretrain

    return _run_stages("jaxvl pretrain", pretrain, load_config(args.config, args.config_overrides), args.workdir)


def _run_stages(command: str, train, cfg, workdir: str) -> int:
    """Runs a trainer's stages; prints how each ended. Exit 1 on divergence, 143 when stopped by SIGTERM."""
    from jaxvl.runtime.loop import PREEMPTED_EXIT_CODE, TrainingDiverged

    try:
        results = train(cfg, workdir)
    except TrainingDiverged as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 1
    for r in results:
        rows = r.last_metrics if isinstance(r.last_metrics, list) else [r.last_metrics]
        parts = " | ".join(", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("seconds", "lr"))
                           for row in rows)
        print(f"{r.workdir}: {r.status} at step {r.step} (checkpoint {r.checkpoint_step}); {parts}")
    return PREEMPTED_EXIT_CODE if results[-1].status == "preempted" else 0


def cmd_caption(args: argparse.Namespace) -> int:
    """``jaxvl caption train | decode | evaluate | analyze``."""
    from jaxvl.configs import load_config

    cfg = load_config(args.config, args.config_overrides)
    if args.caption == "train":
        from jaxvl.caption.trainer import train_captioner

        return _run_stages("jaxvl caption train", train_captioner, cfg, args.workdir)
    from jaxvl.caption.evaluate import analyze_split, decode_split, evaluate_split

    if args.caption == "analyze":
        print(f"wrote the attention analyses to {analyze_split(cfg, args.workdir, args.split, args.out)}")
        return 0
    if args.caption == "decode":
        path = decode_split(cfg, args.workdir, split=args.split, method=args.method, beam_size=args.beam,
                            out=args.out)
        print(f"wrote {path}")
        return 0
    table = evaluate_split(cfg, args.workdir, split=args.split, method=args.method, beam_size=args.beam,
                           captions=args.captions)
    print(table)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """``jaxvl ablate``: the cross-modal input ablation of checkpoints; prints the paper-style table."""
    from jaxvl.ablation import ablate
    from jaxvl.configs import load_config

    table = ablate(load_config(args.config, args.config_overrides), args.workdir)
    print(table)
    print(f"\nreport, per-example losses and plots in {args.workdir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``jaxvl demo``: pretrain tiny single- and dual-stream sweeps on the synthetic world, ablate, report."""
    from jaxvl.demo import demo

    demo(args.out, steps=args.steps, progress=not args.no_progress)
    return 0


def cmd_bench_models(args: argparse.Namespace) -> int:
    from jaxvl.benchmarks import models as bench_models

    bench_models.run(args)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``jaxvl bench pretrain | caption | ablate``: the module's ``run(args)``."""
    import importlib

    importlib.import_module(f"jaxvl.benchmarks.{args.bench}").run(args)
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from jaxvl.benchmarks import data as bench_data

    bench_data.run(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxvl", description="Controlled V&L transformer experiments in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="build the five VOLTA presets, count parameters, run a forward pass")
    models.add_argument("--presets", default="visualbert,uniter,vl-bert,lxmert,vilbert")
    models.add_argument("--size", choices=("tiny", "ctrl"), default="ctrl")
    models.add_argument("--batch", type=int, default=2)
    models.add_argument("--text-len", type=int, default=38)
    models.add_argument("--regions", type=int, default=37, help="regions including the global [IMG] row")
    models.add_argument("--config", default=None, help="config file instead of the flags, e.g. models:tiny")
    models.set_defaults(func=cmd_models)

    from jaxvl.data import prepare

    prep = sub.add_parser("prepare", help="write a data source (synthetic, volta-cc, tsv, flickr30k-entities, "
                                          "synthetic-captions, coco-karpathy) "
                                          "as TFDS ArrayRecord datasets")
    prepare.add_arguments(prep)
    prep.set_defaults(func=prepare.run)

    pre = sub.add_parser("pretrain", help="pretrain a V&L BERT (or a sweep of them) from a config")
    pre.add_argument("--config", required=True, help="e.g. pretrain:uniter,tiny")
    pre.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, tensorboard/, run.json; "
                                                      "an existing workdir is resumed")
    pre.add_argument("--coordinator", default=None,
                     help="multi-host: coordinator host:port (or JAX_COORDINATOR_ADDRESS)")
    pre.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    pre.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    pre.set_defaults(func=cmd_pretrain)

    dem = sub.add_parser("demo", help="the main job: pretrain tiny models on the synthetic world, run the ablation")
    dem.add_argument("--out", default="runs/demo", help="where the runs and the report go (default runs/demo)")
    dem.add_argument("--steps", type=int, default=600, help="pretraining steps per model")
    dem.add_argument("--no-progress", action="store_true", help="no progress bars")
    dem.set_defaults(func=cmd_demo)

    abl = sub.add_parser("ablate", help="cross-modal input ablation of trained checkpoints (one compiled sweep)")
    abl.add_argument("--config", required=True, help="e.g. ablate:tiny")
    abl.add_argument("--workdir", required=True, help="results.csv/jsonl, table.md, per-example losses, plots")
    abl.set_defaults(func=cmd_ablate)

    cap = sub.add_parser("caption", help="the geometry-aware captioner: train, decode, evaluate")
    cap_sub = cap.add_subparsers(dest="caption", required=True)
    for name, text in (("train", "XE then self-critical training from a config"),
                       ("decode", "caption a split, write COCO-style JSON"),
                       ("evaluate", "BLEU / METEOR / ROUGE-L / CIDEr-D of a split, as the ORT paper reports"),
                       ("analyze", "attention entropy, grounding and geometry correlations, teacher-forced")):
        p = cap_sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="e.g. caption:ort,tiny")
        p.add_argument("--workdir", required=True)
        if name != "train":
            p.add_argument("--split", default="val" if name == "analyze" else "test")
        if name in ("decode", "evaluate"):
            p.add_argument("--method", choices=("beam", "greedy", "sample"), default="beam")
            p.add_argument("--beam", type=int, default=None, help="beam size (default: the config's decode.beam_size)")
        if name in ("decode", "analyze"):
            p.add_argument("--out", default=None, help="default: under the workdir")
        if name == "evaluate":
            p.add_argument("--captions", default=None, help="score this COCO-style JSON instead of decoding")
        p.set_defaults(func=cmd_caption)

    bench = sub.add_parser("bench", help="benchmarks (results go to BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    from jaxvl.benchmarks import models as bench_models

    bench_model_parser = bench_sub.add_parser("models", help="forward/backward/compile time per preset vs PyTorch")
    bench_models.add_arguments(bench_model_parser)
    bench_model_parser.set_defaults(func=cmd_bench_models)
    from jaxvl.benchmarks import data as bench_data

    bench_data_parser = bench_sub.add_parser("data", help="records/s through prepare and the Grain pipeline")
    bench_data.add_arguments(bench_data_parser)
    bench_data_parser.set_defaults(func=cmd_bench_data)
    from jaxvl.benchmarks import pretrain as bench_pretrain

    bench_pretrain_parser = bench_sub.add_parser("pretrain", help="pretraining step speed, MFU and compile time; "
                                                                  "a K-member sweep vs K runs")
    bench_pretrain.add_arguments(bench_pretrain_parser)
    bench_pretrain_parser.set_defaults(func=cmd_bench)
    from jaxvl.benchmarks import caption as bench_caption

    bench_caption_parser = bench_sub.add_parser("caption", help="captioner decoding captions/s (batched vs a "
                                                                "per-image beam loop) and XE / SCST steps/s")
    bench_caption.add_arguments(bench_caption_parser)
    bench_caption_parser.set_defaults(func=cmd_bench)
    from jaxvl.benchmarks import ablate as bench_ablate

    bench_ablate_parser = bench_sub.add_parser("ablate", help="the ablation as one compiled sweep vs a per-condition "
                                                              "loop: examples x conditions per second")
    bench_ablate.add_arguments(bench_ablate_parser)
    bench_ablate_parser.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `--config.key=value` overrides (ml_collections style) are collected before argparse sees them.
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    if overrides and not getattr(args, "config", None):
        raise SystemExit("jaxvl: --config.KEY=VALUE overrides need --config FILE")
    args.config_overrides = overrides
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's "Using custom data configuration" per dataset open
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
