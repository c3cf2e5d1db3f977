"""The runtime every task runs on: the mesh and the logical rules that place parameters on it, placement
of host batches (``to_global``), the training state and its pure update, jit with donation and
ahead-of-time compile with a memory report, the loop, the one stage runner, Orbax checkpoints, the
metrics log and ``jax.distributed`` initialisation.

Tasks (``jaxvl.pretrain``, ``jaxvl.caption``, ``jaxvl.ablation``) import the runtime; the runtime imports
no task.
"""
