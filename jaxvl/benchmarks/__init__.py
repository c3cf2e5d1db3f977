"""Benchmarks: timing and compile-time measurements of jaxvl models (``jaxvl bench ...``).

Benchmarks never import tests or training code.
"""
