"""Test setup: 8 fake CPU devices (before JAX starts), XLA:CPU's quicker-compiling fusion emitters where the
installed jaxlib has the choice, and float32 matmuls at full precision."""

import importlib.metadata
import os

FLAGS = ["--xla_force_host_platform_device_count=8"]
# jaxlib 0.10's XLA:CPU compiles fusions through its MLIR emitters by default; its older emitters compile the tests'
# programs in about half the time (the tiny UNITER train step on 8 devices: 4.1-5.0 s -> 2.5-2.7 s) and run them
# as fast, with the same losses to float32 rounding. jaxlib 0.12 has no such flag (XLA aborts on an unknown one)
# and compiles that step in 3.3 s anyway.
if tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2]) < (0, 12):
    FLAGS.append("--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
