"""jaxvl: controlled vision-and-language transformer experiments in JAX/Flax."""

__version__ = "0.1.0"
