"""The geometry-aware captioner (the Object Relation Transformer): cross-entropy, then self-critical training.

    jaxvl caption train --config caption:ort,tiny --workdir runs/ort_tiny
    jaxvl caption train --config caption:ort --workdir runs/ort \\
        --config.data.dataset=data/jaxvl_caption_images/coco/1.0.0
    jaxvl caption decode --config caption:ort,tiny --workdir runs/ort_tiny --beam 5
    jaxvl caption evaluate --config caption:ort,tiny --workdir runs/ort_tiny
    jaxvl caption analyze --config caption:ort,tiny --workdir runs/ort_tiny

Argument: ``ort[,tiny][,paper_geometry][,xe_only]`` (``VARIANTS``; ``REQUIRED``: the keys a full-size run
must set).

- ``ort``: ORT's sizes and recipe (reference captioning.md section 1.4): XE with Adam (0.9, 0.98, 1e-9)
  under the Noam schedule (warmup 10000, factor 1), element-wise gradient clamp 0.1, no label
  smoothing, batch 15 images x 5 captions, 30 epochs; then SCST (5 samples per image at temperature
  1, greedy baseline, CIDEr-D reward with training-reference document frequencies), Adam lr 5e-4
  decayed x0.8 every 3 epochs, batch 10, 30 more epochs.
- ``tiny``: a test-size captioner on the embedded synthetic captioning world (no download), a few
  hundred steps of each stage.
- ``paper_geometry``: the paper's box-embedding formula instead of ORT's ``+1`` widths and ``w_m/w_n``.
- ``xe_only``: no self-critical stage.
"""

from ml_collections import ConfigDict

from jaxvl.configs import parse_arg

# For `jaxvl caption ... --help`: the argument's form, its words, and the keys a full-size run must set.
ARGUMENT = "ort[,tiny][,paper_geometry][,xe_only]"
VARIANTS = {
    "ort": "ORT's sizes and recipe: XE (Adam, Noam schedule, batch 15 x 5), then SCST (CIDEr-D reward)",
    "tiny": "test-size captioner on the embedded synthetic captioning world (no download)",
    "paper_geometry": "the paper's box-embedding formula instead of ORT's +1 widths and w_m/w_n",
    "xe_only": "no self-critical stage",
}
REQUIRED = {
    "data.dataset": "a dataset prepared by `jaxvl prepare --source coco-karpathy:...` (its version directory) or "
                    "a source string; tiny runs default to the synthetic captioning world",
}


def get_config(arg: str | None = None) -> ConfigDict:
    """The config of ``arg`` (``ARGUMENT``; the module doc)."""
    args = parse_arg(arg, model="ort", tiny=False, paper_geometry=False, xe_only=False)
    if args.model != "ort":
        raise ValueError(f"model {args.model!r}; the captioner is 'ort'")
    tiny = args.tiny

    cfg = ConfigDict()
    cfg.seed = 0
    cfg.model = ConfigDict(dict(
        tiny=tiny,
        fit_data=True,  # vocab_size and feature_size from the dataset
        legacy_plus_one=not args.paper_geometry,
        legacy_size_ratio=not args.paper_geometry,
        dtype="float32",
        overrides={"d_model": 64, "num_heads": 4, "d_ff": 128, "num_encoder_layers": 2,
                   "num_decoder_layers": 2, "feature_dropout": 0.1} if tiny else {},
    ))
    cfg.data = ConfigDict(dict(
        dataset="synthetic-captions:num_images=512" if tiny else "",
        prepare_dir="",
        train_split="train",
        eval_split="val",
        test_split="test",
        captions_per_image=5,
        num_threads=2 if tiny else 8,
    ))
    cfg.xe = ConfigDict(dict(
        steps=300 if tiny else 0,  # 0: from epochs
        epochs=30.0,
        batch_size=16 if tiny else 15,
        noam_warmup=100 if tiny else 10000,
        noam_factor=1.0,
        label_smoothing=0.0,
        grad_clip=0.1,  # element-wise clamp (ORT's utils.clip_gradient), not a norm
    ))
    cfg.scst = ConfigDict(dict(
        enabled=not args.xe_only,
        steps=100 if tiny else 0,
        epochs=30.0,
        batch_size=16 if tiny else 10,
        learning_rate=5e-4,
        decay_every_epochs=3.0,
        decay_rate=0.8,
        grad_clip=0.1,
        temperature=1.0,
    ))
    cfg.decode = ConfigDict(dict(max_len=16, beam_size=5, length_penalty=0.0, batch_size=16 if tiny else 50))
    cfg.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.checkpoint = ConfigDict(dict(every=100 if tiny else 2000, keep=3, async_save=True))
    cfg.log_every = 1
    cfg.eval_every = 100 if tiny else 2000
    cfg.eval_batches = 2 if tiny else 20
    cfg.fast_compile = False
    cfg.progress = True
    return cfg
