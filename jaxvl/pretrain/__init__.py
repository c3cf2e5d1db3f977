"""Pretraining of VOLTA's five V&L BERTs and the ablation paper's variants (``jaxvl pretrain``).

- ``data``: the Grain pipeline of a prepared pairs dataset (deterministic, resumable, per host);
- ``loss``: ``pretraining_loss`` (masking, in-batch ITM negatives, VOLTA's objective modes) and
  ``ObjectiveConfig``; the pure masking and loss functions are ``jaxvl.models.volta.objectives``;
- ``step``: one pure update, the state created in its shards, jitted with donation;
- ``sweep``: K members (seeds, learning rates, objective weights, masking) as one vmapped program;
- ``trainer``: ``pretrain(cfg, workdir)``, the stages on the shared stage runner;
- ``flops``: analytic FLOPs of a step from the sub-layer plan (for MFU).

The optimizer (VOLTA's AdamW with warmup and linear decay, the peak injectable) is ``jaxvl.runtime.optimizer``,
shared with fine-tuning.
"""
