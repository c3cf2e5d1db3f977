"""The handlers of the ``jaxvl`` commands, ``cmd_*(args) -> exit status`` (the ``handler`` of each row of
``jaxvl.cli_commands.COMMANDS``), and what they share: reading the command's config with its overrides, and the
one-line report per finished training stage. Each handler imports the package it runs only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os

from jaxvl.cli_parser import UsageError


def cmd_models(args: argparse.Namespace) -> int:
    """``jaxvl models``: ``jaxvl.models.volta.summary.describe_presets`` (1 if a count differs from VOLTA's)."""
    if args.config:
        cfg = _config(args)
        for key in ("presets", "size", "batch", "text_len", "regions"):
            setattr(args, key, cfg[key])
    from jaxvl.models.volta.summary import describe_presets

    return describe_presets(args.presets.split(","), args.size, args.batch, args.text_len, args.regions)


def cmd_prepare(args: argparse.Namespace) -> int:
    """``jaxvl prepare``: ``jaxvl.data.prepare.run``."""
    from jaxvl.data import prepare

    return prepare.run(args)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Runs (or resumes) a pretraining config."""
    cfg = _config(args)  # config errors before any distributed setup
    from jaxvl.runtime.distributed import from_environment, initialize

    initialize(from_environment(args.coordinator, args.num_processes, args.process_id))
    from jaxvl.pretrain.trainer import pretrain

    return _report(pretrain(cfg, args.workdir))


def cmd_finetune(args: argparse.Namespace) -> int:
    """Runs (or resumes) a fine-tuning config; prints the results table at the end."""
    cfg = _config(args)
    from jaxvl.runtime.distributed import from_environment, initialize

    initialize(from_environment(args.coordinator, args.num_processes, args.process_id))
    from jaxvl.finetune.trainer import finetune

    return _report([finetune(cfg, args.workdir)])


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluates a fine-tuned workdir (or ``init.checkpoint``); prints and writes the results table."""
    cfg = _config(args)
    from jaxvl.finetune.trainer import evaluate

    print(evaluate(cfg, args.workdir, args.export_volta))
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    """``jaxvl caption train | decode | evaluate | analyze`` (decode, evaluate, analyze: of a trained workdir)."""
    verb = args.jaxvl_command.name.split()[-1]
    captions = getattr(args, "captions", None)
    cfg = _config(args, trained=verb != "train" and not captions)
    if captions and not os.path.isfile(captions):
        raise FileNotFoundError(f"--captions {captions}: no such file")
    if verb == "train":
        from jaxvl.caption.trainer import train_captioner

        return _report(train_captioner(cfg, args.workdir))
    from jaxvl.caption.evaluate import analyze_split, decode_split, evaluate_split

    if verb == "decode":
        print(f"wrote {decode_split(cfg, args.workdir, args.split, args.method, args.beam, args.out)}")
    elif verb == "evaluate":
        print(evaluate_split(cfg, args.workdir, split=args.split, method=args.method, beam_size=args.beam,
                             captions=captions))
    else:
        print(f"wrote the attention analyses to {analyze_split(cfg, args.workdir, args.split, args.out)}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """``jaxvl ablate``: prints the paper-style table."""
    cfg = _config(args)
    from jaxvl.ablation import ablate

    print(ablate(cfg, args.workdir))
    print(f"\nreport, per-example losses and plots in {args.workdir}")
    return 0


# verb -> the module of jaxvl.probes holding probe_<verb>
PROBE_MODULES = {"emap": "run", "mmshap": "run", "mirror": "mirror_run", "colour": "colour_run"}


def cmd_probe(args: argparse.Namespace) -> int:
    """``jaxvl probe emap|mmshap|mirror|colour``: prints the tables (``jaxvl.probes.<module>.probe_<verb>``)."""
    cfg = _config(args)
    verb = args.jaxvl_command.name.split()[-1]
    module = importlib.import_module(f"jaxvl.probes.{PROBE_MODULES[verb]}")
    print(getattr(module, f"probe_{verb}")(cfg, args.workdir))
    csv = f", {verb}.csv" if verb in ("mirror", "colour") else ""
    print(f"\n{verb}.json{csv}, table.md and {verb}.png per checkpoint in {args.workdir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``jaxvl demo``: ``jaxvl.demo.demo``."""
    from jaxvl.demo import demo

    demo(args.out, steps=args.steps, progress=not args.no_progress)
    return 0


def cmd_world_export(args: argparse.Namespace) -> int:
    """``jaxvl world export``: ``jaxvl.data.synthetic.volta_files.run``, then what the world plants (``planted.md``)."""
    from jaxvl.data.synthetic.volta_files import run, world_from_source
    from jaxvl.demo import planted

    world, _ = world_from_source(args.world)  # a bad knob fails before anything is written
    done = run(args)
    story = planted(world)
    with open(os.path.join(done.root, "planted.md"), "w", encoding="utf-8") as f:
        f.write(story)
    print(f"\n{story}(also in {os.path.join(done.root, 'planted.md')}; the commands that pretrain on these files and "
          "ablate: jaxvl/configs/pretrain.py, variant learns)")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """``jaxvl compile``: ``jaxvl.aot.run.run`` (the config read first, so its errors come before libtpu loads)."""
    cfg = _config(args)
    from jaxvl.aot.run import run

    run(args, cfg)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``jaxvl bench NAME``: ``jaxvl.benchmarks.NAME.run(args)``; its refusal of a flag is a user error."""
    name = args.jaxvl_command.name.split()[-1]
    try:
        importlib.import_module(f"jaxvl.benchmarks.{name}").run(args)
    except SystemExit as e:
        if isinstance(e.code, str):
            raise UsageError(e.code.removeprefix(f"jaxvl bench {name}: ")) from e
        raise
    return 0


def _config(args: argparse.Namespace, trained: bool = False):
    """The command's config with its ``--config.KEY=VALUE`` overrides; ``trained``: the workdir must exist."""
    from jaxvl.configs import load_config

    cfg = load_config(args.config, args.config_overrides)
    if trained and not os.path.isdir(args.workdir):
        raise FileNotFoundError(f"--workdir {args.workdir}: no such directory (train it with `jaxvl caption train`)")
    return cfg


def _report(results: list) -> int:
    """One line per stage: how it ended, its step and checkpoint, its last metrics. 143 if preempted."""
    from jaxvl.runtime.loop import PREEMPTED_EXIT_CODE

    for r in results:
        rows = r.last_metrics if isinstance(r.last_metrics, list) else [r.last_metrics]
        parts = " | ".join(", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("seconds", "lr"))
                           for row in rows)
        print(f"{r.workdir}: {r.status} at step {r.step} (checkpoint {r.checkpoint_step}); {parts}")
    return PREEMPTED_EXIT_CODE if results[-1].status == "preempted" else 0
