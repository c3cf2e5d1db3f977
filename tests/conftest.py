"""Test setup: 8 fake CPU devices (before JAX starts), XLA:CPU's quicker-compiling fusion emitters where the
installed jaxlib has the choice, and float32 matmuls at full precision."""

import importlib.metadata
import os

FLAGS = ["--xla_force_host_platform_device_count=8"]
# jaxlib 0.10's XLA:CPU compiles fusions through its MLIR emitters by default; its older emitters compile the
# tests' programs in 14-36% less time and run them up to ~18% slower (`jaxvl bench pretrain --presets uniter,lxmert
# --sizes tiny --fast-compile`, one CPU device: compile 6.1 -> 3.9 s and 10.5 -> 9.0 s, 35.5 -> 41.8 and 70.9 ->
# 76.9 ms/step), with the same results to float32 rounding: a net gain for tests, which mostly compile (the Python
# 3.11 suite on 2 workers: 36-38 min -> 25-29 min). Left out of jaxvl's own `fast_compile`, whose runs (`jaxvl
# demo`: 1500 steps) mostly step. jaxlib 0.12 has no such flag (XLA aborts on an unknown one).
if tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2]) < (0, 12):
    FLAGS.append("--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
