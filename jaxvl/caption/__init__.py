"""The geometry-aware captioner (the Object Relation Transformer): everything ``jaxvl caption`` does.

- ``data``: the per-image Grain pipeline (regions once, C captions per image);
- ``loss``: XE (each image encoded once) and the SCST policy gradient; ``optimizers``: ORT's Noam Adam
  and SCST's staircase Adam; ``rewards``: CIDEr-D rewards on token-id strings, as ORT;
- ``trainer``: ``train_captioner(cfg, workdir)``: XE then SCST on the shared stage runner;
- ``decoding``: greedy, sampling and beam search as fixed-shape while_loops with a KV cache;
- ``evaluate``: decode a split, score it (BLEU, METEOR, ROUGE-L, CIDEr-D), the attention analyses;
- ``attention``: teacher-forced attention entropy, grounding share and geometry correlations
  (``attention_links``: phrase -> object links; ``attention_report``: tidy rows, files and plots).

The model itself is ``jaxvl.models.ort``; the vocabulary ``jaxvl.data.caption_vocab``.
"""
