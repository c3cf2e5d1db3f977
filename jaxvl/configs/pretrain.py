"""Pretraining of VOLTA's five controlled V&L BERTs and the variants of the cross-modal ablation paper.

    jaxvl pretrain --config pretrain:uniter,learns,tiny,sweep=objectives --workdir runs/learns
    jaxvl pretrain --config pretrain:uniter,retrieval --workdir runs/retrieval
    jaxvl pretrain --config pretrain:uniter,tiny --workdir runs/uniter_tiny
    jaxvl pretrain --config pretrain:lxmert,xent,tiny --workdir runs/lxmert_xent_tiny
    jaxvl pretrain --config pretrain:uniter,bert-v-vl,tiny --workdir runs/uniter_bvvl_tiny
    jaxvl pretrain --config pretrain:uniter,tiny,sweep=objectives --workdir runs/sweep
    jaxvl pretrain --config pretrain:uniter --workdir runs/uniter \\
        --config.data.dataset=volta-cc:data/conceptual_captions --config.data.vocab_file=bert/vocab.txt \\
        --config.init.bert_checkpoint=bert/model.safetensors

``learns``, a recipe that learns, through the whole real-data path on a CPU in minutes (a synthetic world with
planted cross-modal structure written in VOLTA's file formats, prepared, pretrained as one sweep of an MRC-KL
and an MRC-XE member, ablated; the ``learns`` variant's defaults are the paths below)::

    jaxvl world export --out worlds/demo
    jaxvl prepare --source volta-cc:worlds/demo/conceptual_captions --out worlds/demo/data
    jaxvl prepare --out worlds/demo/data --source \\
        flickr30k-entities:worlds/demo/flickr30k_entities,features=worlds/demo/flickr30k/flickr30k_feat.lmdb
    jaxvl pretrain --config pretrain:uniter,learns,tiny,sweep=objectives --workdir runs/learns
    jaxvl ablate --config ablate:learns --workdir runs/learns_ablation \\
        --config.checkpoints=runs/learns/members/mrc-kl,runs/learns/members/mrc-xe --config.names=mrc-kl,mrc-xe

Every pretraining run ends with ``learned.md`` (also in ``summary.md`` of a sweep, ``learned.json``, and
``run.json``'s ``learned``): each trained objective's final evaluation loss beside its chance level and a
verdict, ``learned`` / ``not learned`` (``jaxvl.pretrain.chance``), so an untrained model is seen before its
ablation is read.

Argument: ``MODEL[,VARIANT[+VARIANT]][,tiny][,sweep=NAME]`` (``VARIANTS``; ``REQUIRED``: the keys a
full-size run must set).

- MODEL: ``visualbert``, ``uniter``, ``vl-bert``, ``lxmert``, ``vilbert`` (VOLTA's ctrl plans).
- VARIANT (several joined by ``+``): ``ctrl`` (default), ``xent`` (MRC-XE instead of MRC-KL),
  ``rnd-vl`` (no BERT initialisation), ``bert-v-vl`` / ``rnd-v-vl`` (a vision-only stage, MRC-KL only
  with one padding token as text, then the V&L stage from its parameters), ``thr02``/``thr04``/
  ``thr06``/``thr10`` (co-masking IoU threshold 0.2 / 0.4 (VOLTA's default) / 0.6 / none) and
  ``thr02iot``/``thr04iot``/``thr06iot`` (the same with IoT).
- ``learns``: the recipe above, for tiny models (``tiny`` implied): the demo's objective (``jaxvl demo``;
  ``LEARNS``): VOLTA's objective 2 (MLM and region losses, no ITM negatives), 40% of tokens and 30% of regions
  masked, learning rate 3e-3 with 5% warm-up, batch 32, 12 text positions, 1500 steps (at 600 the region heads
  have only begun to learn: README), evaluated on 3 held-out batches (the exported world's 96 validation
  pairs); data: the exported world's Conceptual Captions LMDBs
  prepared under ``worlds/demo/data`` and its ``vocab.txt`` (``LEARNS_DATA``; override ``data.dataset`` /
  ``data.vocab_file`` for another location, or ``data.dataset=synthetic:...`` with ``data.vocab_file=''`` for
  the embedded world). With VOLTA's objective 1 (``--config.objective.objective=1``, ITM with 50% negatives) ITM
  stays near chance (0.682 nats against log 2 = 0.693 after 1500 steps of a tiny UNITER on the demo world),
  ``not learned``: ``retrieval`` is the recipe that learns ITM.
- ``retrieval``: (``tiny`` implied) a recipe whose ITM head learns, for zero-shot retrieval (VOLTA's
  ``--zero_shot``: ``jaxvl.finetune.retrieval``); ``RETRIEVAL``, data ``RETRIEVAL_WORLD``. VOLTA's objective 1 (ITM with
  50% in-batch negatives, MLM and MRC-KL on the matched pairs, 15% of tokens and regions masked), learning rate
  5e-3 with 5% warm-up, batch 32, 12 text positions, 1000 steps, on the embedded synthetic world of one object
  per image, named by every caption, with 2 region rows (12 classes, a sharp detector) and 48 held-out images.
  ITM has a plateau at log 2 that a tiny model leaves late or never (measured, 1000 steps): at learning rate 2e-3
  it stayed there with or without MLM / MRC-KL, and ITM alone at 5e-3 left it for one seed of two; this recipe left
  it for each of 3 seeds (ITM eval loss 0.50 to 0.59; tests/test_zero_shot_pretrained.py).
- ``tiny``: test-size model on the embedded synthetic world (no download); the model's feature
  size, class count and vocabulary are read off the data. A tiny run with ``init.kind=bert`` and no
  ``init.bert_checkpoint`` starts from random weights (no BERT of the tiny text stream's shape ships
  anywhere) and says so in its log and ``run.json``.
- ``sweep=objectives`` (MRC-KL vs MRC-XE), ``sweep=seeds`` (3 seeds), ``sweep=comasking`` (thresholds):
  members trained together as one compiled program (``jaxvl.pretrain.sweep``).

At full size the data is VOLTA's Conceptual Captions LMDBs read in place (``data.dataset=volta-cc:PATH``, with
``data.vocab_file``: no prepare step, ``jaxvl.data.inplace``) or a dataset prepared by ``jaxvl prepare``
(``data.dataset``: its version directory), and BERT initialisation needs ``init.bert_checkpoint`` (a HF
``BertModel`` / ``BertForPreTraining`` ``.bin`` or ``.safetensors``: there is no model hub here).
"""

from ml_collections import ConfigDict

from jaxvl.configs import parse_arg

MODELS = ("visualbert", "uniter", "vl-bert", "lxmert", "vilbert")
THRESHOLDS = {"thr02": 0.2, "thr04": 0.4, "thr06": 0.6, "thr10": None}
SWEEPS = ("objectives", "seeds", "comasking")

# For `jaxvl pretrain --help`: the argument's form, its words, and the keys a full-size run must set.
ARGUMENT = "MODEL[,VARIANT[+VARIANT]][,tiny][,sweep=NAME]"
VARIANTS = {
    "visualbert, uniter, vl-bert, lxmert, vilbert": "MODEL: one of VOLTA's controlled V&L BERTs (default uniter)",
    "ctrl": "VOLTA's controlled setup (the default variant)",
    "xent": "MRC-XE instead of MRC-KL as the region objective",
    "rnd-vl": "no BERT initialisation of the text stream",
    "bert-v-vl, rnd-v-vl": "a vision-only stage (MRC-KL only) first, then the V&L stage from its parameters",
    "thr02, thr04, thr06, thr10": "co-masking IoU threshold 0.2 / 0.4 (VOLTA's) / 0.6 / none",
    "thr02iot, thr04iot, thr06iot": "the same thresholds with IoT instead of IoU",
    "learns": "(tiny implied) the recipe that learns an exported world in minutes (objective 2, 40% / 30% masking, lr "
              "3e-3, 1500 steps of 32; data: worlds/demo, see the config's doc)",
    "retrieval": "(tiny implied) a recipe whose ITM head learns, for zero-shot retrieval (objective 1, 15% masking, "
                 "lr 5e-3, 1000 steps of 32; data: a synthetic world of one object and 2 regions per image)",
    "tiny": "test-size model on the embedded synthetic world (no download); sizes read off the data",
    "sweep=objectives|seeds|comasking": "members trained together as one compiled program (MRC-KL vs MRC-XE, "
                                        "3 seeds, the co-masking thresholds)",
}
REQUIRED = {
    "data.dataset": "a dataset prepared by `jaxvl prepare` (its version directory) or a source string "
                    "(volta-cc:PATH is read in place); tiny runs default to the synthetic world",
    "init.bert_checkpoint": "a HF BertModel / BertForPreTraining .bin or .safetensors, unless rnd-vl / rnd-v-vl "
                            "(tiny runs without one start from random weights)",
}


# The ``learns`` recipe (the demo's, ``jaxvl.demo``): config key -> value.
LEARNS = {"objective.objective": 2, "objective.token_prob": 0.4, "objective.region_prob": 0.3,
          "optimizer.learning_rate": 3e-3, "optimizer.warmup_fraction": 0.05, "data.batch_size": 32,
          "data.max_seq_length": 12, "steps": 1500, "checkpoint.every": 1500, "eval_every": 300, "eval_batches": 3,
          "fast_compile": True}
# Where the module doc's commands put the exported world (`jaxvl world export --out worlds/demo`) and its preparation.
LEARNS_DATA = {"data.dataset": "worlds/demo/data/jaxvl_pretrain_pairs/volta_cc-training_feat_all/1.0.0",
               "data.vocab_file": "worlds/demo/vocab.txt"}
# The ``retrieval`` recipe: config key -> value (the module doc).
RETRIEVAL = {"objective.objective": 1, "objective.token_prob": 0.15, "objective.region_prob": 0.15,
             "optimizer.learning_rate": 5e-3, "optimizer.warmup_fraction": 0.05, "data.batch_size": 32,
             "data.max_seq_length": 12, "steps": 1000, "checkpoint.every": 1000, "eval_every": 500, "eval_batches": 3,
             "fast_compile": True}
# Its data: the embedded world with one object per image and 2 region rows, 48 held-out images (the val split).
RETRIEVAL_WORLD = ("synthetic:num_images=256,val_images=48,min_objects=1,max_objects=1,num_classes=12,num_regions=2,"
                   "captions_per_image=3,detector_rank_probs=1/0/0/0/0,detector_temperature=0.5")


def _sweep(name: str) -> list:
    """Named sweeps: members share shapes, so they train as one vmapped program."""
    if name == "":
        return []
    if name == "objectives":
        return [dict(name="mrc-kl", mrc_kl_weight=1.0, mrc_xe_weight=0.0),
                dict(name="mrc-xe", mrc_kl_weight=0.0, mrc_xe_weight=1.0)]
    if name == "seeds":
        return [dict(name=f"seed{s}", seed=s) for s in (0, 1, 2)]
    if name == "comasking":
        return [dict(name=f"thr{t}", overlap_threshold=t) for t in (0.2, 0.4, 0.6, 2.0)]
    raise ValueError(f"sweep={name!r}; named sweeps are {', '.join(SWEEPS)}")


def get_config(arg: str | None = None) -> ConfigDict:
    """The config of ``arg`` (``ARGUMENT``; the module doc)."""
    args = parse_arg(arg, model="uniter", variant="ctrl", tiny=False, sweep="")
    if args.model not in MODELS:
        raise ValueError(f"model {args.model!r}; expected one of {MODELS}")
    variants = set(args.variant.split("+")) - {"ctrl"}
    args.tiny = args.tiny or bool(variants & {"learns", "retrieval"})  # the recipes are for tiny models
    known = ({"xent", "rnd-vl", "bert-v-vl", "rnd-v-vl", "learns", "retrieval"} | set(THRESHOLDS)
             | {t + "iot" for t in THRESHOLDS})
    if variants - known:
        raise ValueError(f"variant(s) {sorted(variants - known)}; known: ctrl, {', '.join(sorted(known))}")

    cfg = ConfigDict()
    cfg.seed = 42  # VOLTA's default seed
    cfg.steps = 0  # optimizer updates; 0: derived from `epochs` and the train split's size
    cfg.epochs = 10.0
    # Gradient accumulation: each update averages the gradients of this many microbatches of
    # data.batch_size / grad_accum_steps rows (the global batch must divide); 1: one pass over the batch.
    cfg.grad_accum_steps = 1

    cfg.model = ConfigDict(dict(
        name=args.model,
        tiny=args.tiny,
        fit_data=args.tiny,  # take v_feature_size / num_object_classes / vocab_size from the data
        dtype="float32",  # matmul dtype: "bfloat16" on accelerators; params stay float32
        scan_layers=False,
        # Vocabulary and class heads padded to a multiple of this (e.g. 128, so the word table shards over
        # mesh.tensor); exact at any value: the padding is sliced off every output, export and param count.
        pad_to_multiple_of=1,
        # Activation rematerialisation in the backward pass: "none" (keep every activation), "full" (recompute
        # each encoder sub-layer / scanned block) or "dots" (keep only matmul outputs, recompute the rest).
        remat="none",
        # With dtype bfloat16: the dtype the dense layers' weight gradients are produced and all-reduced in:
        # "float32" (exact sums across devices) or "compute" (bf16 partials summed in bf16: up to half the
        # all-reduce bytes, an error growing with the device count; BENCHMARKS.md "bf16 weight gradients").
        weight_grad_dtype="float32",
        visual_target_weights={"3": 1.0} if "xent" in variants else {"0": 1.0},
    ))

    cfg.data = ConfigDict(dict(
        # A prepared dataset's version directory (`jaxvl prepare --out DIR` prints it), or a source string:
        # volta-cc:PATH (VOLTA's CC LMDBs) is read in place, with no prepare step (jaxvl.data.inplace); other
        # sources are prepared on first use into `prepare_dir` (default <workdir>/data).
        dataset="synthetic:num_images=256" if args.tiny else "",
        prepare_dir="",
        vocab_file="",  # bert-base-uncased vocab.txt for real data; empty: the dataset's word list
        train_split="train",
        eval_split="val",
        batch_size=16 if args.tiny else 256,
        max_seq_length=16 if args.tiny else 38,
        num_threads=2 if args.tiny else 8,
        skip_bad=False,  # a store read in place: log, count and replace a bad record by the next good one
    ))

    threshold, kind = 0.4, "iou"
    for v in variants:
        base = v.removesuffix("iot")
        if base in THRESHOLDS:
            threshold, kind = THRESHOLDS[base], ("iot" if v.endswith("iot") else "iou")
    cfg.objective = ConfigDict(dict(
        objective=1,  # VOLTA's mode 1: ITM, and no MLM / MRC targets on mismatched pairs
        token_prob=0.15, region_prob=0.15, region_zero_prob=0.9,
        overlap_threshold=2.0 if threshold is None else threshold,  # > 1: no co-masking ("thr10")
        overlap_kind=kind,
        volta_compat=True,  # VOLTA's released co-masking: the overlap only changes the [IMG] divisor
        itm_prob=0.5,
    ))

    cfg.optimizer = ConfigDict(dict(learning_rate=1e-3 if args.tiny else 1e-4, warmup_fraction=0.1,
                                    weight_decay=0.01, clip_norm=5.0, b1=0.9, b2=0.999, eps=1e-6))

    cfg.init = ConfigDict(dict(
        kind="random" if variants & {"rnd-vl", "rnd-v-vl"} else "bert",
        bert_checkpoint="",  # required for kind=bert at full size; tiny runs without one start random
        copy_visual_tables=False,
        checkpoint="",  # start from a jaxvl workdir/checkpoint directory or a VOLTA .bin instead
    ))

    # The vision-only stage of bert-v-vl / rnd-v-vl: MRC-KL only, one padding token as text.
    vision_first = bool(variants & {"bert-v-vl", "rnd-v-vl"})
    cfg.vision_stage = ConfigDict(dict(enabled=vision_first, epochs=10.0, steps=0))

    cfg.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.checkpoint = ConfigDict(dict(every=25 if args.tiny else 2000, keep=3, async_save=True))
    cfg.log_every = 1
    cfg.eval_every = 25 if args.tiny else 2000
    cfg.eval_batches = 2 if args.tiny else 50
    cfg.fast_compile = False  # XLA options that cut CPU compile time (tests, smoke runs)
    cfg.progress = True
    cfg.sweep = _sweep(args.sweep)
    if args.tiny:
        cfg.steps, cfg.vision_stage.steps = 60, 30
    recipe = {**LEARNS, **LEARNS_DATA} if "learns" in variants else {}
    if "retrieval" in variants:
        recipe.update({**RETRIEVAL, "data.dataset": RETRIEVAL_WORLD})
    for key, value in recipe.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    return cfg
