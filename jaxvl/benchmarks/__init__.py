"""Benchmarks: timing and compile-time measurements of jaxvl (``jaxvl bench models | data | pretrain | caption |
ablate | probe | finetune | topologies | device``), written to ``BENCHMARKS.md`` with the command and the machine.

Each command's module has ``add_arguments(parser)`` and ``run(args)``, which the CLI calls; what they share
(the machine, timing, ``Probe``, the markdown tables) is ``jaxvl.benchmarks.common``. Helper modules:
``models_torch`` (the PyTorch originals of ``bench models``) and ``caption_setup`` / ``caption_decode`` /
``caption_train`` (the halves of ``bench caption``), ``device_parts`` (the parts of ``bench device``, the one
timed GPU run that reuses the others). ``bench topologies`` compiles for TPU slices through ``jaxvl.aot``.
Benchmarks never import tests; ``bench pretrain`` /
``caption`` / ``ablate`` / ``finetune`` time the trainers' and the diagnostic's own compiled programs
(``jaxvl.pretrain``, ``jaxvl.caption``, ``jaxvl.ablation``, ``jaxvl.finetune``).
"""
