"""The ``jaxvl`` command, built from ONE table of commands (``COMMANDS``): ``jaxvl --help`` lists them,
``jaxvl COMMAND --help`` describes one (examples, its config's variants and required keys, overrides).

Each ``Command`` row holds the command's name (``caption train``, ``bench models``: a group and a verb),
a one-line summary, a description paragraph, examples, the packaged config it reads (whose ``ARGUMENT``,
``VARIANTS`` and ``REQUIRED`` its ``--help`` lists), a function adding its own arguments and its handler,
``handler(args) -> exit status``. Only the command being run has its arguments built, so a benchmark module
is imported only by ``jaxvl bench NAME``.

Exit statuses: 0 done; 1 training diverged (or ``jaxvl models`` found a parameter count unlike VOLTA's);
2 a user error, printed as one line ``jaxvl: error: ...`` naming the key, file or record, without a
traceback (``--debug``, anywhere on the line, or ``JAXVL_DEBUG=1`` re-raises it); 130 Ctrl-C (in training:
``stopped at step N; last checkpoint: step M in DIR; rerun the same command to resume``); 143 SIGTERM,
after a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import textwrap
from collections.abc import Callable
from typing import NoReturn

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
WRAP = dict(width=110, break_on_hyphens=False, break_long_words=False)  # help text
DEBUG_HELP = "show the traceback of an error (or JAXVL_DEBUG=1)"
VERBOSE_HELP = "longer start-up reports, e.g. the compiled step's full memory block (or JAXVL_VERBOSE=1)"

# Exceptions that are the user's to fix: a bad config key or value, a missing path, malformed data, a refused
# checkpoint. Matched by class name among jaxvl's own classes (so this module imports none of them); besides
# these, the OS errors below and any ValueError raised by jaxvl's own code (config and data validation).
USER_ERRORS = ("UsageError", "ConfigError", "SourceError", "BadRecord", "UnsafeData", "BatchError", "StateDictError",
               "VocabMismatch", "MetricUnavailable")
OS_USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class UsageError(Exception):
    """A command line that cannot be run (argparse's complaints, overrides without ``--config``)."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One row of the command table (module doc)."""

    name: str
    summary: str
    description: str
    examples: tuple[str, ...]
    handler: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    config: str | None = None  # packaged config: --config NAME[:ARG], its variants and required keys in --help
    config_required: bool = True


# ------------------------------------------------------------------------------------------------ handlers

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


# ------------------------------------------------------------------------------------------ argument builders

def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", default="visualbert,uniter,vl-bert,lxmert,vilbert", help="comma-separated presets")
    p.add_argument("--size", choices=("tiny", "ctrl"), default="ctrl", help="size of the forward pass")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--text-len", type=int, default=38)
    p.add_argument("--regions", type=int, default=37, help="regions including the global [IMG] row")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, run.json; an existing workdir is resumed")
    p.add_argument("--coordinator", default=None, help="multi-host: coordinator host:port (or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="the fine-tuning workdir; evaluation.md / .json are written there")
    p.add_argument("--export-volta", default=None, metavar="FILE",
                   help="also write the parameters as a VOLTA BertForVLTasks state dict (.bin needs torch; "
                        ".safetensors does not)")


def _caption_args(verb: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workdir", required=True, help="the run: xe/ and scst/ stages" +
                       ("; an existing workdir is resumed" if verb == "train" else " (trained by `caption train`)"))
        if verb != "train":
            p.add_argument("--split", default="val" if verb == "analyze" else "test")
        if verb in ("decode", "evaluate"):
            p.add_argument("--method", choices=("beam", "greedy", "sample"), default="beam")
            p.add_argument("--beam", type=int, default=None, help="beam size (default: the config's decode.beam_size)")
        if verb in ("decode", "analyze"):
            p.add_argument("--out", default=None, help="default: under the workdir")
        if verb == "evaluate":
            p.add_argument("--captions", default=None, help="score this COCO-style JSON instead of decoding")
    return add


def _ablate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="results.csv/jsonl, table.md, per-example losses, plots")


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="<name>/emap.json and <name>/table.md per checkpoint, table.md")


def _probe_mmshap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="<name>/mmshap.json and <name>/table.md per checkpoint, table.md")


def _probe_mirror_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="<name>/mirror.json and <name>/table.md per checkpoint, table.md")


def _probe_colour_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="<name>/colour.json and <name>/table.md per checkpoint, table.md")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="where the runs and the report go (default runs/demo)")
    p.add_argument("--steps", type=int, default=1500,
                   help="pretraining steps per model (default 1500: at 600 region learning has only begun; README)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _module_args(module: str) -> Callable[[argparse.ArgumentParser], None]:
    """The ``add_arguments(parser)`` of ``module``, imported when the command is built."""
    return lambda p: importlib.import_module(module).add_arguments(p)


# ----------------------------------------------------------------------------------------------- the table

GROUPS = {"caption": "the geometry-aware captioner (ORT): train, decode, evaluate, analyze",
          "probe": "probes of how much a trained model uses each modality (EMAP, MM-SHAP, mirror, colour)",
          "world": "synthetic worlds with planted cross-modal structure: write one in VOLTA's file formats",
          "bench": "benchmarks: speed, compile time, memory (results go to BENCHMARKS.md)"}

BENCHMARKS = {  # name: (summary, description, example)
    "models": ("forward / backward / compile time and size of each preset, PyTorch beside",
               "Forward and forward+backward time, compile time (with and without scanned layers) and size of each "
               "VOLTA preset at VOLTA's input sizes, with the PyTorch originals timed beside them.",
               "jaxvl bench models --sizes tiny --no-torch --markdown"),
    "data": ("input pipeline records/s beside a training step's consumption",
             "Records per second through each stage of the data path (prepare, read, the Grain pipeline) at VOLTA's "
             "ctrl shapes, beside the rate a ctrl-size training step consumes.", "jaxvl bench data --no-model"),
    "pretrain": ("pretraining step speed, MFU and compile time; a K-member sweep vs K runs",
                 "The trainer's pretraining step per preset (steps/s, model FLOPs utilisation, compile time, memory) "
                 "and a K-member sweep trained as one program against K runs.", "jaxvl bench pretrain --sizes tiny"),
    "caption": ("captioner decoding captions/s (batched vs per-image) and XE / SCST steps/s",
                "Captioner decoding, batched against a per-image loop and an ORT-style decoder, and XE and SCST "
                "training steps per second.", "jaxvl bench caption --sizes tiny --parts decode"),
    "topologies": ("the pretraining step compiled for TPU slices: fits?, collectives, estimated step time",
                   "Each ctrl preset's pretraining step compiled ahead of time for TPU slices (v5e-16, v5e-256, "
                   "v5p-128, v6e-64) under data parallelism, FSDP and FSDP + tensor parallelism: memory per chip "
                   "against HBM, collective bytes, an estimated step time and MFU; and the largest model that fits. "
                   "Needs libtpu (the tpu extra).", "jaxvl bench topologies --presets uniter --topologies v5e-16"),
    "device": ("one GPU run that measures everything, within a time budget",
               "On one accelerator, within a time budget that includes compilation: the five ctrl pretraining steps "
               "in bf16 (MFU), sweeps vs sequential runs, the ablation sweep, beam decoding and the data pipeline; "
               "JSON and markdown written part by part. --smoke runs it all at tiny sizes on CPU.",
               "jaxvl bench device --smoke --out /tmp/device"),
    "ablate": ("the ablation as one compiled sweep vs a per-condition loop",
               "Examples x conditions per second of the cross-modal ablation as ONE compiled sweep over conditions, "
               "thresholds and stacked checkpoints, against a per-condition loop.", "jaxvl bench ablate --sizes tiny"),
    "finetune": ("fine-tuning steps/s per task; retrieval pairs/s against a per-pair loop",
                 "Fine-tuning steps per second of the trainer's compiled update for each VOLTA task (VQA, Flickr30k "
                 "retrieval, RefCOCO+, NLVR2, SNLI-VE) at VOLTA's ctrl batch sizes, and retrieval (caption, image) "
                 "pairs per second of the compiled RetrievalProgram (UNITER; LXMERT with and without its prefix "
                 "cache) against a per-pair loop, with the projected time of the Flickr30k test (5,000 captions x "
                 "1,000 images).", "jaxvl bench finetune --sizes tiny --parts retrieval"),
    "probe": ("EMAP pairs/s and MM-SHAP coalitions/s, projected to 1000 items; LXMERT's prefix cache",
              "EMAP (text, image) pairs per second and MM-SHAP coalitions per second of the compiled probe programs, "
              "the projected time for N = 1000 items (EMAP: 10^6 pairs) and 1000 examples (MM-SHAP), and the "
              "speed-up of running LXMERT's unimodal prefix once per item.", "jaxvl bench probe --sizes tiny"),
}

COMMANDS: tuple[Command, ...] = (
    Command("models", "build the five VOLTA presets, count parameters, run a forward pass",
            "Builds each of VOLTA's five controlled presets, checks its parameter count against VOLTA's own "
            "(exit 1 if one differs) and runs one jitted forward pass on a random batch, printing every output's "
            "shape. Flags or a config (which then replaces the flags).",
            ("jaxvl models --size tiny --presets uniter,lxmert",
             "jaxvl models --config models:tiny --config.presets=lxmert --config.batch=4"),
            cmd_models, _models_args, config="models", config_required=False),
    Command("prepare", "write a data source as TFDS ArrayRecord datasets",
            "Writes a data source (the synthetic worlds, VOLTA's Conceptual Captions LMDBs, bottom-up-attention "
            "TSVs, Flickr30k Entities, COCO Karpathy captions) as TFDS ArrayRecord datasets for the Grain "
            "pipelines, and prints each dataset's version directory: what a config's data.dataset takes.",
            ("jaxvl prepare --source synthetic:num_images=1024,val_images=64 --out data/",
             "jaxvl prepare --source volta-cc:data/conceptual_captions,num_regions=36 --out data/ --skip-bad"),
            cmd_prepare, _module_args("jaxvl.data.prepare")),
    Command("pretrain", "pretrain a V&L BERT (or a sweep of them) from a config",
            "Pretrains one of VOLTA's controlled V&L BERTs (MLM, masked region modelling, ITM), or a sweep of "
            "them as one compiled program, writing checkpoints, metrics and run.json to the workdir. Rerunning "
            "the same command resumes from the latest checkpoint; Ctrl-C stops it and says where it stopped.",
            ("jaxvl pretrain --config pretrain:uniter,tiny --workdir runs/uniter_tiny",
             "jaxvl pretrain --config pretrain:lxmert,xent --workdir runs/lxmert_xent "
             "--config.data.dataset=volta-cc:data/conceptual_captions --config.data.vocab_file=bert/vocab.txt "
             "--config.init.bert_checkpoint=bert/model.bin"),
            cmd_pretrain, _pretrain_args, config="pretrain"),
    Command("finetune", "fine-tune a V&L BERT on a downstream task (VQA, retrieval, RefCOCO+, NLVR2, ...)",
            "Fine-tunes a pretrained V&L BERT with VOLTA's task head, loss and ctrl hyper-parameters for the task, or "
            "a sweep of seeds / learning rates as one compiled program; writes checkpoints, metrics (JSONL, "
            "TensorBoard), run.json and, at the end, results.md (the held-out score with its 95% interval and the "
            "chance level). Rerunning the same command resumes.",
            ("jaxvl finetune --config finetune:vqa,uniter,tiny --workdir runs/vqa_tiny",
             "jaxvl finetune --config finetune:refcoco+,uniter,tiny,sweep=seeds --workdir runs/ref_seeds "
             "--config.init.checkpoint=runs/uniter_tiny"),
            cmd_finetune, _pretrain_args, config="finetune"),
    Command("evaluate", "evaluate a fine-tuned model (a workdir, every sweep member, or a VOLTA task .bin)",
            "Scores the final parameters of a fine-tuning workdir (each member of a sweep) on the task's held-out "
            "split, or with --config.init.checkpoint a VOLTA BertForVLTasks .bin; writes evaluation.md / .json.",
            ("jaxvl evaluate --config finetune:vqa,uniter,tiny --workdir runs/vqa_tiny",
             "jaxvl evaluate --config finetune:vqa,uniter,tiny --workdir runs/vqa_tiny --export-volta vqa.bin",
             "jaxvl evaluate --config finetune:vqa,uniter --workdir runs/volta_vqa "
             "--config.init.checkpoint=pytorch_model_19.bin --config.data.dataset=..."),
            cmd_evaluate, _evaluate_args, config="finetune"),
    Command("caption train", "train the captioner: cross-entropy, then self-critical (SCST)",
            "Trains the geometry-aware captioner with cross-entropy (<workdir>/xe), then self-critical sequence "
            "training with a CIDEr-D reward from the XE parameters (<workdir>/scst). Rerunning the same command "
            "resumes; Ctrl-C stops it and says where it stopped.",
            ("jaxvl caption train --config caption:ort,tiny --workdir runs/ort_tiny",
             "jaxvl caption train --config caption:ort --workdir runs/ort "
             "--config.data.dataset=data/jaxvl_caption_images/coco/1.0.0"),
            cmd_caption, _caption_args("train"), config="caption"),
    Command("caption decode", "caption a split with a trained captioner, write COCO-style JSON",
            "Captions every image of a split with the trained captioner of the workdir (its SCST stage if there "
            "is one, else XE) by beam search, greedy decoding or sampling, and writes COCO-style results JSON.",
            ("jaxvl caption decode --config caption:ort,tiny --workdir runs/ort_tiny --beam 5",),
            cmd_caption, _caption_args("decode"), config="caption"),
    Command("caption evaluate", "BLEU / METEOR / ROUGE-L / CIDEr-D of a split, as the ORT paper reports",
            "Decodes a split with the trained captioner (or reads --captions) and prints the metrics table the "
            "ORT paper reports: BLEU-1/4, METEOR, ROUGE-L and CIDEr-D against the split's references.",
            ("jaxvl caption evaluate --config caption:ort,tiny --workdir runs/ort_tiny --method greedy",),
            cmd_caption, _caption_args("evaluate"), config="caption"),
    Command("caption analyze", "attention entropy, grounding and geometry correlations, teacher-forced",
            "Teacher-forces the reference captions of a split through the trained captioner and writes the "
            "attention analyses: entropy, grounding on the named objects' regions, correlation with box "
            "geometry (CSV and plots).",
            ("jaxvl caption analyze --config caption:ort,tiny --workdir runs/ort_tiny --split val",),
            cmd_caption, _caption_args("analyze"), config="caption"),
    Command("ablate", "cross-modal input ablation of trained checkpoints (one compiled sweep)",
            "The cross-modal input ablation of Frank, Bugliarello & Elliott (2021): masks the other modality's "
            "inputs (vis4lang, lang4vis) at every IoT threshold, for every checkpoint, as one compiled sweep per "
            "model, and writes tidy results with bootstrap intervals, per-example losses, plots and the paper-style "
            "table.",
            ("jaxvl ablate --config ablate:tiny --workdir runs/ablate --config.checkpoints=runs/uniter_tiny",
             "jaxvl ablate --config ablate --workdir runs/ablate_f30k --config.checkpoints=runs/uniter/vl "
             "--config.data.dataset=data/jaxvl_ablation_phrases/f30k/1.0.0 --config.data.vocab_file=vocab.txt"),
            cmd_ablate, _ablate_args, config="ablate"),
    Command("probe emap", "EMAP: does the ITM head need cross-modal interactions? (N x N pairs, compiled blocks)",
            "EMAP (Hessel & Lee, 2020) of trained checkpoints: scores all N x N (text, image) pairings of N items of "
            "a pretraining split with the ITM head in compiled blocks (dual-stream models run their unimodal prefix "
            "once per item), projects the logits onto additive text + image effects, and reports the full model's "
            "and EMAP's accuracy and AUROC on matched vs mismatched pairs and the interaction share (emap.json, "
            "table.md).",
            ("jaxvl probe emap --config probes:emap,tiny --workdir runs/emap --config.checkpoints=runs/uniter_tiny",
             "jaxvl probe emap --config probes:emap --workdir runs/emap_volta --config.checkpoints=pytorch_model_9.bin "
             "--config.model.name=uniter --config.data.dataset=data/jaxvl_volta_cc/default/1.0.0 "
             "--config.data.vocab_file=vocab.txt"),
            cmd_probe, _probe_args, config="probes"),
    Command("probe mmshap", "MM-SHAP: how much of the ITM score is text vs image (Shapley values, compiled coalitions)",
            "MM-SHAP (Parcalabescu & Frank, 2023) of trained checkpoints: per item of a pretraining split (a caption "
            "with its own image), Shapley values of its caption sub-words and detector regions for the ITM match "
            "score, by antithetic permutation sampling with every coalition of an item in one compiled call; regions "
            "removed by the dataset-mean feature or masked, sub-words by [MASK]; T-SHAP and V-SHAP per item and "
            "their mean with a 95% bootstrap interval (mmshap.json, table.md).",
            ("jaxvl probe mmshap --config probes:mmshap,tiny --workdir runs/mmshap "
             "--config.checkpoints=runs/uniter_tiny",
             "jaxvl probe mmshap --config probes:mmshap --workdir runs/mmshap_volta "
             "--config.checkpoints=pytorch_model_9.bin --config.model.name=uniter "
             "--config.data.dataset=data/jaxvl_volta_cc/default/1.0.0 --config.data.vocab_file=vocab.txt "
             "--config.removal=mask"),
            cmd_probe, _probe_mmshap_args, config="probes"),
    Command("probe mirror", "positional skew: flip the boxes left-right, with and without swapping left/right",
            "The mirror probe of trained checkpoints: items of a pretraining split whose captions hold a mirrored word "
            "(left / right), scored as they are, with the boxes flipped horizontally (x -> 1 - x, the global box "
            "unchanged), with the words swapped, and with both: the MLM loss on the left/right token and the ITM "
            "match score; a model that reads geometry keeps its score under flip + swap and changes it under the flip "
            "alone (mirror.json, table.md).",
            ("jaxvl probe mirror --config probes:mirror,tiny --workdir runs/mirror "
             "--config.checkpoints=runs/uniter_tiny",),
            cmd_probe, _probe_mirror_args, config="probes"),
    Command("probe colour", "colour use: colour-word foils and a colour subspace of the features projected out",
            "The colour probe of trained checkpoints: items whose captions hold a colour word, scored with the word "
            "swapped for another colour (ITM match score; MLM preference for the true colour at the masked colour "
            "token) and, given colour.basis, with the colour subspace of every region feature projected out (MLM "
            "loss on the colour token) (colour.json, table.md).",
            ("jaxvl probe colour --config probes:colour,tiny --workdir runs/colour "
             "--config.checkpoints=runs/uniter_tiny --config.colour.basis=worlds/colour/colour_basis.npy",),
            cmd_probe, _probe_colour_args, config="probes"),
    Command("world export", "write a synthetic world in VOLTA's file formats (CC LMDBs, Flickr30k Entities)",
            "Writes a synthetic world with planted cross-modal structure as the files VOLTA's real data comes in: "
            "Conceptual Captions LMDBs (tensorpack layout, train and validation), a Flickr30k Entities tree "
            "(Sentences, Annotations, split files) with a per-image feature LMDB, a BERT vocab.txt and a Visual "
            "Genome style objects_vocab.txt; then prints the `jaxvl prepare` sources and what the world plants "
            "(planted.md). The whole path on these files: jaxvl/configs/pretrain.py, variant learns.",
            ("jaxvl world export --out worlds/demo",
             "jaxvl world export --out /tmp/w --world synthetic:num_images=512,val_images=64,vision_to_language=0.5"),
            cmd_world_export, _module_args("jaxvl.data.synthetic.volta_files")),
    Command("compile", "compile a config's train step for a TPU slice on this machine: memory, collectives, time",
            "Compiles a config's real train step (pretrain:..., caption:...) or the ablation sweep (--config ablate "
            "--config.model.name=lxmert) ahead of time for a TPU slice (v5e-16 ... v5e-256, v5p, v6e; "
            "several slices with --num-slices) or for this process's devices (--local), without the accelerator, "
            "and prints the memory per device against the chip's HBM, the step's FLOPs, the collectives per step and "
            "an estimated step time (a lower bound). TPU targets need libtpu: pip install 'jaxvl[tpu]'.",
            ("jaxvl compile --config pretrain:uniter --topology v5e-256 --config.model.dtype=bfloat16 "
             "--config.model.pad_to_multiple_of=128",
             "jaxvl compile --config pretrain:lxmert --topology v5p-128 --mesh fsdp+tp --batch 1024",
             "jaxvl compile --config pretrain:uniter,tiny --local --mesh data=2,fsdp=2,tensor=2"),
            cmd_compile, _module_args("jaxvl.aot.run"), config="pretrain"),
    Command("demo", "the main job: pretrain tiny models on the synthetic world, run the ablation",
            "The whole research loop in minutes on a CPU: a synthetic world with planted cross-modal structure, a "
            "tiny single-stream (UNITER) and dual-stream (LXMERT) model each pretrained as one compiled sweep "
            "(MRC-KL and MRC-XE), the cross-modal ablation of the four checkpoints, and the report.",
            ("jaxvl demo --out runs/demo", "jaxvl demo --out /tmp/demo --steps 50 --no-progress"),
            cmd_demo, _demo_args),
    *(Command(f"bench {name}", summary, description, (example,), cmd_bench, _module_args(f"jaxvl.benchmarks.{name}"))
      for name, (summary, description, example) in BENCHMARKS.items()),
)

OVERRIDES = ("overrides: --config.KEY=VALUE sets any key of the config, dotted for nested keys{nested}; "
             "VALUE is a Python literal, else a string. An unknown key or a value of another type is an error. "
             "Keys: {keys}.")


# --------------------------------------------------------------------------------------------- the parser

class _Parser(argparse.ArgumentParser):
    """argparse whose complaints are ``UsageError``s: one line, exit 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _rows(items: dict[str, str], indent: int = 2) -> list[str]:
    """``name  text`` rows, the texts aligned and wrapped."""
    width = max((len(k) for k in items), default=0)
    pad = " " * (indent + width + 2)
    return [textwrap.fill(text, **WRAP, initial_indent=f"{' ' * indent}{key:<{width}}  ", subsequent_indent=pad)
            for key, text in items.items()]


def _config_help(spec: Command) -> list[str]:
    """The config part of a command's ``--help``: the argument, variants, required keys, the override syntax."""
    from jaxvl.configs import config_module

    module = config_module(spec.config)
    required = module.REQUIRED
    keys = ", ".join(f"{k}.*" if hasattr(v, "keys") else k for k, v in module.get_config(None).items())
    nested = next((f" (--config.{k}=...)" for k in required if "." in k), "")
    where = (f"config: --config {spec.config}[:ARG] (jaxvl/configs/{spec.config}.py), or a file of your own: --config "
             f"PATH.py[:ARG]" + ("" if spec.config_required else "; it replaces the flags"))
    return ["", textwrap.fill(where, **WRAP), f"variants, ARG = {module.ARGUMENT}:", *_rows(module.VARIANTS),
            "required keys:" + ("" if required else " none"), *_rows(required),
            textwrap.fill(OVERRIDES.format(nested=nested, keys=keys), **WRAP)]


def _build(p: argparse.ArgumentParser, spec: Command) -> None:
    """The full parser of one command: its arguments, ``--config``, description and epilog."""
    if spec.arguments is not None:
        spec.arguments(p)
    if spec.config:
        p.add_argument("--config", required=spec.config_required, default=None, metavar="NAME[:ARG]",
                       help=f"the config: {spec.config}[:ARG] (packaged) or PATH.py[:ARG]; variants below")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = textwrap.fill(spec.description, **WRAP)
    epilog = ["examples:", *(textwrap.fill(e, **WRAP, initial_indent="  ", subsequent_indent="      ")
                             for e in spec.examples)]
    if spec.config:
        epilog += _config_help(spec)
    p.epilog = "\n".join(epilog) + (f"\n\n{p.epilog}" if p.epilog else "")


def _listing(prefix: str = "") -> str:
    """The ``commands:`` rows, of the commands whose name starts with ``prefix``."""
    return "commands:\n" + "\n".join(_rows({c.name: c.summary for c in COMMANDS if c.name.startswith(prefix)}))


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``jaxvl`` parser from ``COMMANDS``: every command's arguments, or only ``selected``'s (the others are
    bare stubs that still route and list)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="jaxvl", formatter_class=raw, epilog=_listing() +
                     "\n\n`jaxvl COMMAND --help` gives its description, examples, config variants and required keys."
                     "\nA user error prints one line `jaxvl: error: ...` and exits 2; --debug or JAXVL_DEBUG=1 "
                     "shows the traceback.",
                     description="Controlled vision-and-language transformer experiments in JAX.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    top = parser.add_subparsers(dest="jaxvl_name", metavar="COMMAND", required=True, help="one of those below")
    groups: dict[str, argparse._SubParsersAction] = {}
    for spec in COMMANDS:
        group, _, verb = spec.name.rpartition(" ")
        if group and group not in groups:
            g = top.add_parser(group, formatter_class=raw, description=GROUPS[group], epilog=_listing(group + " "))
            groups[group] = g.add_subparsers(dest=f"jaxvl_{group}", metavar="COMMAND", required=True,
                                             help="one of those below")
        sub = (groups[group] if group else top).add_parser(verb)
        sub.set_defaults(jaxvl_command=spec)
        if selected is None or selected == spec.name:
            _build(sub, spec)
    return parser


def _selected(argv: list[str]) -> str:
    """The command ``argv`` names (its first one or two words), or ``""``."""
    words = [a for a in argv if not a.startswith("-")][:2]
    names = {c.name for c in COMMANDS}
    return next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in names), "")


# ----------------------------------------------------------------------------------------------------- main

def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is the user's to fix (``USER_ERRORS``): printed as one line, exit 2."""
    if isinstance(e, OS_USER_ERRORS) or any(c.__module__.startswith("jaxvl") and c.__name__ in USER_ERRORS
                                            for c in type(e).__mro__):
        return True
    tb = e.__traceback__  # a ValueError raised by jaxvl's own code (the innermost frame is in the package)
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return isinstance(e, ValueError) and tb is not None and tb.tb_frame.f_code.co_filename.startswith(PACKAGE_DIR)


def _run(argv: list[str]) -> int:
    overrides = [a.removeprefix("--config.") for a in argv if a.startswith("--config.")]
    argv = [a for a in argv if not a.startswith("--config.")]
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--config.{item}: expected --config.KEY=VALUE (one argument, with '=')")
    try:
        args, unknown = build_parser(_selected(argv)).parse_known_args(argv)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    spec: Command = args.jaxvl_command
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see `jaxvl {spec.name} --help`)")
    if overrides and not getattr(args, "config", None):
        needs = "--config NAME[:ARG]" if spec.config else f"a config, and `jaxvl {spec.name}` takes none"
        raise UsageError(f"--config.{overrides[0]}: --config.KEY=VALUE overrides need {needs}")
    args.config_overrides = overrides
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's "Using custom data configuration" per dataset open
    return spec.handler(args)


def main(argv: list[str] | None = None) -> int:
    """Runs ``jaxvl ARGV``; returns the exit status (module doc)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("JAXVL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if "--verbose" in argv:
        os.environ["JAXVL_VERBOSE"] = "1"  # read where reports are printed (runtime.stage)
        argv = [a for a in argv if a != "--verbose"]
    try:
        return _run(argv)
    except (KeyboardInterrupt, Exception) as e:
        loop = sys.modules.get("jaxvl.runtime.loop")  # imported if training ran: its exceptions exist only then
        interrupted, diverged = getattr(loop, "TrainingInterrupted", ()), getattr(loop, "TrainingDiverged", ())
        if debug or not (isinstance(e, (KeyboardInterrupt, diverged)) or is_user_error(e)):
            raise
        if isinstance(e, KeyboardInterrupt):
            print(str(e) if isinstance(e, interrupted) else "jaxvl: interrupted", file=sys.stderr)
            return 130  # 128 + SIGINT
        message = " ".join(line.strip() for line in (str(e) or type(e).__name__).splitlines() if line.strip())
        print(f"jaxvl: error: {message}", file=sys.stderr)
        return 1 if isinstance(e, diverged) else 2


if __name__ == "__main__":
    sys.exit(main())
