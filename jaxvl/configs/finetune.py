"""Fine-tuning on VOLTA's downstream tasks (the controlled study's VQA, Flickr30k retrieval, RefCOCO+, NLVR2; and
SNLI-VE, GQA), with VOLTA's ctrl hyper-parameters per task.

    jaxvl finetune --config finetune:vqa,uniter,tiny --workdir runs/vqa_tiny
    jaxvl finetune --config finetune:vqa,uniter,tiny,sweep=seeds --workdir runs/vqa_seeds
    jaxvl finetune --config finetune:nlvr2,lxmert,tiny --workdir runs/nlvr2 --config.init.checkpoint=runs/lxmert_tiny
    jaxvl evaluate --config finetune:vqa,uniter,tiny --workdir runs/vqa_tiny

Argument: ``TASK,MODEL[,tiny][,sweep=NAME]``. ``TASK`` is a key of ``TASKS``; its values (head type, number of
labels, learning rate, batch size, epochs, text length and regions) are VOLTA's ``config_tasks/
ctrl_trainval_tasks.yml`` (VQA, retrieval, RefCOCO+, NLVR2) and ``all_trainval_tasks.yml`` (SNLI-VE, GQA); the
optimizer is ``train_task.py``'s as the ctrl scripts call it (``examples/ctrl_*/*/train.sh``: AdamW, eps 1e-6,
betas (0.9, 0.999), weight decay 1e-4 off biases and LayerNorms, warmup 10% then linear decay, gradients clipped
to norm 1.0). ``tiny``: a test-size model on the task's embedded synthetic world (``jaxvl.data.synthetic.tasks*``:
planted answers, no download), with a tiny run's learning rate, batch and step count. ``sweep=seeds`` /
``sweep=lrs``: members trained together as one vmapped program (``jaxvl.finetune.sweep``).

``init.checkpoint`` starts the encoder from a pretrained model: a jaxvl pretraining workdir, a sweep member
(``<sweep workdir>/members/<name>``) or a VOLTA ``.bin`` (a pretraining ``BertForVLPreTraining`` state dict, or a
``BertForVLTasks`` one whose heads for this task are then kept too). Empty: random (tiny runs) or, at full size,
an error: fine-tuning a random encoder is not VOLTA's study.
"""

from ml_collections import ConfigDict

from jaxvl.configs import parse_arg

MODELS = ("visualbert", "uniter", "vl-bert", "lxmert", "vilbert")

# task -> VOLTA's task entry: its clfs_dict key, head type, labels, lr, batch, epochs, max_seq_length, val split.
TASKS = {
    "vqa": dict(volta_task="TASK1", type="VL-classifier", num_labels=3129, learning_rate=1e-4, batch_size=256,
                eval_batch_size=1024, epochs=20.0, max_seq_length=23),
    "retrieval": dict(volta_task="TASK8", type="VL-logit", num_labels=1, learning_rate=2e-5, batch_size=64,
                      eval_batch_size=64, epochs=20.0, max_seq_length=30),
    "refcoco+": dict(volta_task="TASK10", type="V-logit", num_labels=1, learning_rate=1e-4, batch_size=256,
                     eval_batch_size=1024, epochs=20.0, max_seq_length=20),
    "nlvr2": dict(volta_task="TASK12", type="VL-binary-classifier", num_labels=2, learning_rate=1e-5, batch_size=64,
                  eval_batch_size=512, epochs=20.0, max_seq_length=40),
    "snli-ve": dict(volta_task="TASK13", type="VL-tri-classifier", num_labels=3, learning_rate=2e-5, batch_size=128,
                    eval_batch_size=1024, epochs=20.0, max_seq_length=56),
    "gqa": dict(volta_task="TASK15", type="VL-classifier-GQA", num_labels=1842, learning_rate=4e-5, batch_size=256,
                eval_batch_size=1024, epochs=20.0, max_seq_length=26),
}
# Tasks with an embedded synthetic world (``tiny`` runs); the others need their files.
SYNTHETIC_TASKS = ("vqa", "retrieval", "refcoco+", "nlvr2", "snli-ve")

# For `jaxvl finetune --help`.
ARGUMENT = "TASK,MODEL[,tiny][,sweep=NAME]"
VARIANTS = {
    **{task: f"VOLTA {v['volta_task']} ({v['type']}), lr {v['learning_rate']:g}, batch {v['batch_size']}, "
             f"{v['epochs']:g} epochs" for task, v in TASKS.items()},
    "tiny": "test-size model on the task's embedded synthetic world (no download; "
            + ", ".join(SYNTHETIC_TASKS) + ")",
    "sweep=seeds": "three seeds trained together as one vmapped program",
    "sweep=lrs": "three learning rates (the task's x 0.5, 1, 2) as one vmapped program",
}
REQUIRED = {
    "init.checkpoint": "the pretrained model: a jaxvl workdir, a sweep member directory or a VOLTA .bin "
                       "(tiny runs may start from random weights)",
    "data.dataset": "the task's prepared files (tiny runs use the synthetic world)",
}

# The tiny synthetic runs: learning rate, batch, steps (the task worlds are learnt in a few hundred steps).
TINY = dict(learning_rate=2e-3, batch_size=32, steps=300, max_seq_length=12, eval_batch_size=64)


def _sweep(name: str, learning_rate: float) -> list:
    if name == "":
        return []
    if name == "seeds":
        return [dict(name=f"seed{s}", seed=s) for s in (0, 1, 2)]
    if name == "lrs":
        return [dict(name=f"lr{f:g}x", learning_rate=learning_rate * f) for f in (0.5, 1.0, 2.0)]
    raise ValueError(f"sweep={name!r}; named sweeps are seeds, lrs")


def get_config(arg: str | None = None) -> ConfigDict:
    """The config of ``arg`` (``ARGUMENT``; the module doc)."""
    args = parse_arg(arg, task="vqa", model="uniter", tiny=False, sweep="")
    if args.task not in TASKS:
        raise ValueError(f"task {args.task!r}; expected one of {', '.join(TASKS)}")
    if args.model not in MODELS:
        raise ValueError(f"model {args.model!r}; expected one of {MODELS}")
    if args.tiny and args.task not in SYNTHETIC_TASKS:
        raise ValueError(f"task {args.task!r} has no synthetic world yet (tiny runs: {', '.join(SYNTHETIC_TASKS)})")
    task = TASKS[args.task]
    lr = TINY["learning_rate"] if args.tiny else task["learning_rate"]

    cfg = ConfigDict()
    cfg.seed = 0
    cfg.steps = TINY["steps"] if args.tiny else 0  # 0: epochs x the train split's batches
    cfg.epochs = task["epochs"]
    cfg.task = ConfigDict(dict(name=args.task, volta_task=task["volta_task"], type=task["type"],
                               num_labels=task["num_labels"], num_clf_layers=1))
    # weight_grad_dtype: with dtype bfloat16, "float32" or "compute" (jaxvl.configs.pretrain's model block)
    cfg.model = ConfigDict(dict(name=args.model, tiny=args.tiny, dtype="float32", scan_layers=False,
                                weight_grad_dtype="float32"))
    cfg.data = ConfigDict(dict(
        # synthetic-<task>: the embedded world; else VOLTA's task files with their feature store
        # (jaxvl.finetune.files: volta:ROOT,features=LMDB, ROOT the yml's dataroot, e.g.
        # volta:datasets/vqa/annotations,features=datasets/mscoco/.../trainval_feat.lmdb)
        dataset=f"synthetic-{args.task}" if args.tiny else "",
        vocab_file="",  # bert-base-uncased vocab.txt for the task files (VOLTA's tokenizer)
        # the synthetic world: images for training / held-out evaluation and its knobs
        train_images=384, val_images=96, world_seed=0, num_regions=6 if args.tiny else 36,
        seed=0,  # the order of the training examples (shared by a sweep's members, whatever their seeds)
        batch_size=TINY["batch_size"] if args.tiny else task["batch_size"],
        eval_batch_size=TINY["eval_batch_size"] if args.tiny else task["eval_batch_size"],
        max_seq_length=TINY["max_seq_length"] if args.tiny else task["max_seq_length"],
        num_threads=2 if args.tiny else 8,
    ))
    cfg.optimizer = ConfigDict(dict(learning_rate=lr, warmup_fraction=0.1, weight_decay=1e-4, clip_norm=1.0,
                                    b1=0.9, b2=0.999, eps=1e-6))
    cfg.init = ConfigDict(dict(checkpoint=""))
    cfg.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.checkpoint = ConfigDict(dict(every=100 if args.tiny else 2000, keep=2, async_save=True))
    cfg.log_every = 10 if args.tiny else 50
    cfg.eval_every = 100 if args.tiny else 2000
    cfg.fast_compile = bool(args.tiny)
    cfg.progress = True
    cfg.sweep = _sweep(args.sweep, lr)
    return cfg
