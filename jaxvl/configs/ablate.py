"""The cross-modal input ablation (Frank, Bugliarello & Elliott 2021) of trained V&L BERTs.

    jaxvl ablate --config ablate:tiny --workdir runs/ablate \\
        --config.checkpoints=runs/uniter_tiny,runs/lxmert_tiny
    jaxvl ablate --config ablate --workdir runs/ablate_f30k \\
        --config.checkpoints=runs/uniter/vl,volta/ctrl_uniter/pytorch_model_9.bin --config.model.name=uniter \\
        --config.data.dataset=data/jaxvl_ablation/flickr30k_val/1.0.0 --config.data.vocab_file=vocab.txt \\
        --config.labelmatch.objects_vocab=data/genome/1600-400-20/objects_vocab.txt

The ablation of the ``learns`` recipe's checkpoints on an exported synthetic world's Flickr30k Entities
(``jaxvl world export``; the whole path is in ``jaxvl/configs/pretrain.py``'s doc)::

    jaxvl ablate --config ablate:learns --workdir runs/learns_ablation \\
        --config.checkpoints=runs/learns/members/mrc-kl,runs/learns/members/mrc-xe --config.names=mrc-kl,mrc-xe

``checkpoints``: comma-separated jaxvl workdirs (a run, a stage such as ``<run>/vl``, or a sweep member
``<run>/members/<name>``) or VOLTA ``pytorch_model_*.bin`` files (their model is ``model.name`` at ctrl
size, or ``model.volta_config``, a VOLTA config JSON). ``names``: optional labels, same order.
Checkpoints with the same model config are stacked and evaluated by one compiled program.

Argument: ``[tiny|learns]`` (``tiny``: the synthetic world's ablation phrases, no download; ``learns``: the
Flickr30k Entities files of ``jaxvl world export --out worlds/demo`` prepared under ``worlds/demo/data``, with its
``vocab.txt`` and ``objects_vocab.txt`` and the ``learns`` recipe's text length 12 and batch 32 (``LEARNS``:
override those keys for another location); ``VARIANTS``; ``REQUIRED``: the keys a run must set). Every condition
(vis4lang none / object / all; lang4vis none / phrase / all) and every IoT threshold run together as one vmapped
sweep, with each condition's matched control at ``report_threshold`` (``controls``; ``jaxvl.ablation.controls``),
from which the report reads a verdict per model and effect (``jaxvl.ablation.verdicts``). VOLTA's quirks are on by
default (reference section 7); ``quirks.*`` turn each off.
"""

from ml_collections import ConfigDict

from jaxvl.configs import parse_arg

# For `jaxvl ablate --help`: the argument's form, its words, and the keys a run must set.
ARGUMENT = "[tiny|learns]"
VARIANTS = {
    "(none)": "real data: the Flickr30k Entities ablation phrases (set the keys below)",
    "tiny": "the synthetic world's ablation phrases (no download)",
    "learns": "the Flickr30k Entities of an exported synthetic world (jaxvl world export --out worlds/demo, prepared "
              "under worlds/demo/data), for checkpoints of pretrain:MODEL,learns,tiny",
}
# The ``learns`` variant: the exported world's files (where pretrain.py's documented commands put them) and the
# recipe's text length and batch.
LEARNS = {"data.dataset": "worlds/demo/data/jaxvl_ablation_phrases/flickr30k_entities-val-flickr30k_feat/1.0.0",
          "data.vocab_file": "worlds/demo/vocab.txt", "labelmatch.objects_vocab": "worlds/demo/objects_vocab.txt",
          "data.max_seq_length": 12, "data.batch_size": 32, "fast_compile": True}
REQUIRED = {
    "checkpoints": "comma-separated jaxvl workdirs (a run, <run>/vl, <run>/members/<name>) or VOLTA .bin files; "
                   "every run",
    "data.dataset": "an ablation dataset prepared by `jaxvl prepare --source flickr30k-entities:...` or a source "
                    "string (flickr30k-entities:ROOT,features=LMDB is read in place; tiny: the synthetic world)",
    "model.name": "for VOLTA .bin checkpoints: the preset (or model.volta_config, a VOLTA config JSON)",
    "data.vocab_file": "real data: bert-base-uncased vocab.txt",
    "labelmatch.objects_vocab": "real data: Visual Genome's objects_vocab.txt (LabelMatch)",
}


def get_config(arg: str | None = None) -> ConfigDict:
    """The config of ``arg`` (``ARGUMENT``; the module doc)."""
    args = parse_arg(arg, tiny=False, learns=False)
    cfg = ConfigDict()
    cfg.checkpoints = ""
    cfg.names = ""
    # Only for VOLTA .bin checkpoints: the preset (ctrl size) or a VOLTA config JSON, and the detector's class
    # count when it is not Visual Genome's 1600 (VOLTA's configs cannot say it).
    cfg.model = ConfigDict(dict(name="", volta_config="", num_object_classes=0))
    cfg.data = ConfigDict(dict(
        dataset="synthetic:num_images=256" if args.tiny else "",  # an ablation dataset dir, or a source string
        prepare_dir="",
        split="val",
        vocab_file="",
        batch_size=16,
        max_seq_length=16 if args.tiny else 38,
        skip_bad=False,
    ))
    cfg.vis4lang = "none,object,all"
    cfg.lang4vis = "none,phrase,all"
    cfg.thresholds = tuple(round(0.1 * i, 1) for i in range(10))  # IoT thresholds, each in [0, 1]
    cfg.report_threshold = 0.5
    # Each condition's matched control (as much input removed, none of it aligned with the phrase) runs at
    # report_threshold in the same sweep; the verdicts (found / not found / opposite) read effects against it.
    cfg.controls = True
    # bits: the smallest effect a verdict calls found / opposite; jaxvl.ablation.verdicts.EFFECT_FLOOR_BITS, measured
    # there on tiny models of synthetic worlds (scripts/calibrate_verdict_floor.py re-measures it for other setups)
    cfg.verdict_floor = 0.16
    # None: vmap every member (one batched program); 1: members one at a time inside the one program (faster and
    # leaner on CPU, BENCHMARKS.md "Cross-modal ablation"); n: chunks of n. The same for stacked checkpoints.
    cfg.member_batch_size = None
    cfg.model_batch_size = None
    cfg.quirks = ConfigDict(dict(  # jaxvl.ablation.conditions.Quirks; True = VOLTA's behaviour
        missing_target_as_zero=True,  # lang4vis: an example with no aligned region adds loss 0 to the mean
        lang4vis_stale_global=True,  # lang4vis: [IMG] keeps the mean of the un-ablated features
        xent_1601_off_by_one=True,  # lang4vis MRC-XE of KL-trained models against 1600-space ids
        global_mean_over_padding=True,  # a recomputed [IMG] divides by every region row, padding included
    ))
    cfg.labelmatch = ConfigDict(dict(enabled=True, objects_vocab=""))  # VG objects_vocab.txt for real data
    cfg.attention = True
    cfg.n_boot = 1000
    cfg.seed = 0
    cfg.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.fast_compile = False
    cfg.progress = True
    if args.learns:
        if args.tiny:
            raise ValueError("ablate: tiny (the embedded world) and learns (an exported world) exclude each other")
        for key, value in LEARNS.items():
            section, _, name = key.rpartition(".")
            (cfg[section] if section else cfg)[name] = value
    return cfg
