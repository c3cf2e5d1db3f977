"""Probes of how much a trained V&L BERT uses each modality: EMAP (Hessel & Lee 2020) and MM-SHAP (Parcalabescu &
Frank 2023) on its ITM head.

    jaxvl probe emap --config probes:emap,tiny --workdir runs/emap --config.checkpoints=runs/uniter_tiny
    jaxvl probe emap --config probes:emap --workdir runs/emap_cc \\
        --config.checkpoints=runs/uniter,runs/lxmert --config.names=uniter,lxmert --config.n_items=1000
    jaxvl probe emap --config probes:emap --workdir runs/emap_volta \\
        --config.checkpoints=volta/ctrl_uniter/pytorch_model_9.bin --config.model.name=uniter \\
        --config.data.dataset=data/jaxvl_volta_cc/default/1.0.0 --config.data.vocab_file=vocab.txt
    jaxvl probe mmshap --config probes:mmshap,tiny --workdir runs/mmshap --config.checkpoints=runs/uniter_tiny

``checkpoints``: comma-separated jaxvl workdirs (a run, a stage such as ``<run>/vl``, or a sweep member
``<run>/members/<name>``) or VOLTA ``pytorch_model_*.bin`` files (their model is ``model.name`` at ctrl size, or
``model.volta_config``), as ``jaxvl ablate`` takes them; ``names``: optional labels, same order.

Argument: ``[emap|mmshap][,tiny]`` (``emap`` is the default; ``tiny``: small blocks and item count, fast
compilation, for tiny checkpoints on a CPU; ``VARIANTS``; ``REQUIRED``: the keys a run must set).
The items are ``n_items`` (text, image) pairs of ``data.split`` of a pretraining dataset, one per image (a
second caption of an item's image would count as a mismatched pair): the first met in split order, or in a
random order drawn with ``seed`` >= 0; each caption with its own image's regions, unmasked, each keeping its
own padding. An empty ``data.dataset`` (the default) reads the split of the dataset
each jaxvl checkpoint was pretrained on, with its vocabulary and text length (its ``run.json``); VOLTA ``.bin``
checkpoints need ``data.dataset`` (and ``data.vocab_file``). All N x N (text, image) pairings are scored by the
ITM head in compiled blocks of ``text_block`` x ``image_block`` pairs (``jaxvl.probes.pairs``); dual-stream models
run their unimodal prefix once per item (``cache_prefix``). Each checkpoint's ``emap.json`` and ``table.md`` go to
``<workdir>/<name>/``, all tables to ``<workdir>/table.md``.

``mmshap`` (``jaxvl.probes.mmshap``): per item (its caption with its own image) the Shapley values of its caption
sub-words and detector regions for the ITM match score (logit0 - logit1), ``permutations`` sampled permutations
each with its reverse, all coalitions of ``items_per_call`` items in one compiled call (``chunk`` coalitions per
model batch, split over the mesh's data devices);
regions removed by the dataset-mean feature (``removal=mean``, the mean over ``mean_items`` images of the split)
or by masking (``removal=mask``), sub-words by ``[MASK]``. T-SHAP / V-SHAP per item and their mean with a 95%
bootstrap interval: ``<workdir>/<name>/mmshap.json`` and ``table.md``.
"""

from ml_collections import ConfigDict

from jaxvl.configs import parse_arg

# For `jaxvl probe --help`: the argument's form, its words, and the keys a run must set.
ARGUMENT = "[emap|mmshap|mirror|colour][,tiny]"
VARIANTS = {
    "emap": "EMAP: the ITM logits of all N x N (text, image) pairings and their additive projection (default)",
    "mmshap": "MM-SHAP: Shapley values of caption sub-words and regions for the ITM match score; T-SHAP, V-SHAP",
    "mirror": "positional skew: boxes flipped left-right, with and without swapping left/right words; MLM on the "
              "left/right token and ITM consistency",
    "colour": "colour use: colour words swapped for other colours (ITM, MLM on the colour token) and a colour "
              "subspace of the region features projected out (colour.basis)",
    "tiny": "8 x 8 blocks, 16 items, fast compilation: tiny checkpoints on a CPU",
}
REQUIRED = {
    "checkpoints": "comma-separated jaxvl workdirs (a run, <run>/vl, <run>/members/<name>) or VOLTA .bin files; "
                   "every run",
    "data.dataset": "for VOLTA .bin checkpoints: a pretraining dataset prepared by `jaxvl prepare` or a source "
                    "string (jaxvl checkpoints default to the dataset they were pretrained on)",
    "model.name": "for VOLTA .bin checkpoints: the preset (or model.volta_config, a VOLTA config JSON)",
    "data.vocab_file": "for VOLTA .bin checkpoints on real data: bert-base-uncased vocab.txt",
}
PROBES = ("emap", "mmshap", "mirror", "colour")
# The basic colour terms swapped by the colour probe (Berlin & Kay's eleven, plus "gold" for the synthetic worlds).
COLOUR_WORDS = "red,green,blue,yellow,white,black,brown,orange,purple,pink,grey,gray,gold"


def get_config(arg: str | None = None) -> ConfigDict:
    """The config of ``arg`` (``ARGUMENT``; the module doc)."""
    args = parse_arg(arg, probe="emap", tiny=False)
    if args.probe not in PROBES:
        raise ValueError(f"probe {args.probe!r} is not one of {', '.join(PROBES)}")
    cfg = ConfigDict()
    cfg.probe = args.probe
    cfg.checkpoints = ""
    cfg.names = ""
    # Only for VOLTA .bin checkpoints (as in jaxvl/configs/ablate.py): the preset (ctrl size) or a VOLTA config
    # JSON, and the detector's class count when it is not Visual Genome's 1600.
    cfg.model = ConfigDict(dict(name="", volta_config="", num_object_classes=0))
    cfg.data = ConfigDict(dict(
        dataset="",  # a PretrainPairs dataset dir or a source string; empty: each jaxvl checkpoint's own (run.json)
        prepare_dir="",  # where a source string is prepared (default <workdir>/data)
        split="val",
        vocab_file="",  # empty: the checkpoint's (run.json), else the dataset's word list
        max_seq_length=0,  # 0: the checkpoint's pretraining text length (run.json), else 38
    ))
    cfg.n_items = 16 if args.tiny else 1000  # N: items of N distinct images (see seed); capped by the split
    cfg.text_block = 8 if args.tiny else 32  # texts x images per compiled call (a multiple of the data devices)
    cfg.image_block = 8 if args.tiny else 32
    cfg.cache_prefix = True  # dual-stream models: the unimodal prefix once per item (no effect on single-stream)
    cfg.per_item = True  # emap.json keeps the matched pairs' logits and their EMAP projections [N, C]
    cfg.seed = -1  # < 0: the first n_items images in split order; >= 0: in a random order drawn with it
    # mmshap: antithetic permutation pairs per item (the published code's 10), region removal, coalitions per model
    # batch, and the images whose mean region feature replaces removed regions (removal "mean")
    cfg.permutations = 10
    cfg.removal = "mean"
    cfg.chunk = 64 if args.tiny else 256
    cfg.items_per_call = 1  # mmshap: items whose coalitions one compiled call evaluates (the last call padded)
    cfg.mean_items = 64 if args.tiny else 1000
    # mirror: word pairs swapped as whole word tokens under the flip ("a:b,c:d")
    cfg.mirror = ConfigDict(dict(words="left:right"))
    # colour: the colour words (whole word tokens; a caption's colour word is swapped for another of them) and an
    # optional .npy [k, D] whose rows span the colour subspace of the region features (projected out; empty: none)
    cfg.colour = ConfigDict(dict(words=COLOUR_WORDS, basis=""))
    cfg.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.fast_compile = args.tiny
    cfg.progress = True
    return cfg
