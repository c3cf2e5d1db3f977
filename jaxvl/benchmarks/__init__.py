"""Benchmarks: timing and compile-time measurements of jaxvl (``jaxvl bench models | data | pretrain | caption |
ablate``), written to ``BENCHMARKS.md`` with the command and the machine.

Benchmarks never import tests; ``bench pretrain`` / ``caption`` / ``ablate`` time the trainers' and the
diagnostic's own compiled programs (``jaxvl.train``, ``jaxvl.caption.decoding``, ``jaxvl.ablation``).
"""
