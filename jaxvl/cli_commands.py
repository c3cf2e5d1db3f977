"""The table of ``jaxvl`` commands, ``COMMANDS``: one ``Command`` row per command (its name, summary, description,
examples, handler from ``jaxvl.cli_handlers``, argument builder and packaged config), the command groups
(``GROUPS``) and the benchmarks (``BENCHMARKS``, one ``jaxvl bench NAME`` row each); and the argument builders,
``add(parser)``, of the commands whose options are not their module's own ``add_arguments``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from jaxvl.cli_handlers import (
    cmd_ablate,
    cmd_bench,
    cmd_caption,
    cmd_compile,
    cmd_demo,
    cmd_evaluate,
    cmd_finetune,
    cmd_models,
    cmd_prepare,
    cmd_pretrain,
    cmd_probe,
    cmd_world_export,
)
from jaxvl.cli_parser import Command, workdir_path

# ------------------------------------------------------------------------------------------ argument builders

def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", default="visualbert,uniter,vl-bert,lxmert,vilbert", help="comma-separated presets")
    p.add_argument("--size", choices=("tiny", "ctrl"), default="ctrl", help="size of the forward pass")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--text-len", type=int, default=38)
    p.add_argument("--regions", type=int, default=37, help="regions including the global [IMG] row")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, type=workdir_path,
                   help="checkpoints, metrics, run.json; an existing workdir is resumed")
    p.add_argument("--coordinator", default=None, help="multi-host: coordinator host:port (or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, type=workdir_path,
                   help="the fine-tuning workdir; evaluation.md / .json are written there")
    p.add_argument("--export-volta", default=None, metavar="FILE",
                   help="also write the parameters as a VOLTA BertForVLTasks state dict (.bin needs torch; "
                        ".safetensors does not)")


def _caption_args(verb: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workdir", required=True, type=workdir_path,
                       help="the run: xe/ and scst/ stages" +
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


def _workdir_args(what: str) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of a command whose only flag is ``--workdir`` (a local or mounted path), ``what`` its help."""
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workdir", required=True, type=workdir_path, help=what)
    return add


def _probe_workdir_args(probe: str) -> Callable[[argparse.ArgumentParser], None]:
    return _workdir_args(f"<name>/{probe}.json and <name>/table.md per checkpoint, table.md")


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
            cmd_ablate, _workdir_args("results.csv/jsonl, table.md, per-example losses, plots"), config="ablate"),
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
            cmd_probe, _probe_workdir_args("emap"), config="probes"),
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
            cmd_probe, _probe_workdir_args("mmshap"), config="probes"),
    Command("probe mirror", "positional skew: flip the boxes left-right, with and without swapping left/right",
            "The mirror probe of trained checkpoints: items of a pretraining split whose captions hold a mirrored word "
            "(left / right), scored as they are, with the boxes flipped horizontally (x -> 1 - x, the global box "
            "unchanged), with the words swapped, and with both: the MLM loss on the left/right token and the ITM "
            "match score; a model that reads geometry keeps its score under flip + swap and changes it under the flip "
            "alone (mirror.json, table.md).",
            ("jaxvl probe mirror --config probes:mirror,tiny --workdir runs/mirror "
             "--config.checkpoints=runs/uniter_tiny",),
            cmd_probe, _probe_workdir_args("mirror"), config="probes"),
    Command("probe colour", "colour use: colour-word foils and a colour subspace of the features projected out",
            "The colour probe of trained checkpoints: items whose captions hold a colour word, scored with the word "
            "swapped for another colour (ITM match score; MLM preference for the true colour at the masked colour "
            "token) and, given colour.basis, with the colour subspace of every region feature projected out (MLM "
            "loss on the colour token) (colour.json, table.md).",
            ("jaxvl probe colour --config probes:colour,tiny --workdir runs/colour "
             "--config.checkpoints=runs/uniter_tiny --config.colour.basis=worlds/colour/colour_basis.npy",),
            cmd_probe, _probe_workdir_args("colour"), config="probes"),
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
