"""The runtime every task runs on: the mesh and the logical rules that place parameters on it, placement
of host batches (``to_global``), the training state and its pure update, jit with donation and
ahead-of-time compile with a memory report, the loop, the one stage runner, Orbax checkpoints, the
metrics log, ``jax.distributed`` initialisation and VOLTA's optimizer (``optimizer``: AdamW, warmup and
linear decay, the peak learning rate injectable for sweeps).

Tasks (``jaxvl.pretrain``, ``jaxvl.finetune``, ``jaxvl.caption``, ``jaxvl.ablation``) import the runtime; the
runtime imports no task.
"""
