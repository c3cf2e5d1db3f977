"""Shared pieces of the PyTorch -> jaxvl converters: safe loading and strict checking.

State dicts are read with ``torch.load(..., weights_only=True)`` (never a bare unpickle) or from
``.safetensors``; every converter checks what it reads against what it expects and raises a
``StateDictError`` listing all missing, unexpected and mis-shaped tensors at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

StateDict = dict[str, np.ndarray]
Params = dict[str, Any]  # a (nested) Flax parameter tree
Path = tuple[str, ...]  # a parameter's path in it
Shape = tuple[int, ...]


class StateDictError(ValueError):
    """A state dict does not match the model: lists missing, unexpected and mis-shaped tensors."""


def load_state_dict(path: str | os.PathLike, prefix_strip: str = "") -> StateDict:
    """Reads a PyTorch checkpoint (``.bin``/``.pt``/``.pth`` via ``weights_only=True``) or a
    ``.safetensors`` file into float32/int numpy arrays keyed by tensor name.

    A checkpoint holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped; keys starting
    with ``prefix_strip`` lose that prefix (e.g. ``"module."`` from DataParallel checkpoints).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        state = dict(load_file(path))
    else:
        try:
            import torch
        except ImportError as e:  # torch is a test extra only; jaxvl itself runs without it
            raise StateDictError(f"{path}: reading a PyTorch checkpoint needs torch (pip install torch; the CPU "
                                 "build is enough), or save the state dict as .safetensors") from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise StateDictError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({e})") from e
        for key in ("state_dict", "model"):
            if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
        if not isinstance(obj, Mapping):
            raise StateDictError(f"{path}: expected a mapping of tensor names to tensors, got {type(obj).__name__}")
        state = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    if prefix_strip:
        state = {k.removeprefix(prefix_strip): v for k, v in state.items()}
    return state


def save_state_dict(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> str:
    """Writes numpy ``state`` as a PyTorch checkpoint (``.bin`` / ``.pt`` / ``.pth``: ``torch.save`` of CPU
    tensors, what VOLTA's ``load_state_dict`` reads; needs torch) or ``.safetensors`` (no torch). Returns the path."""
    path = os.fspath(path)
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(state, path)
        return path
    try:
        import torch
    except ImportError as e:
        raise StateDictError(f"{path}: writing a PyTorch checkpoint needs torch (pip install torch; the CPU build "
                             "is enough), or write .safetensors") from e
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


def to_numpy_state_dict(state: Mapping) -> StateDict:
    """Torch tensors (or arrays) -> numpy arrays, keeping the names."""
    return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in state.items()}


def check_state_dict(state: Mapping, expected: Mapping[str, tuple[int, ...]], source: str = "state dict",
                     ignore: tuple[str, ...] = ()) -> None:
    """Raises ``StateDictError`` unless ``state`` has exactly the ``expected`` names and shapes.

    Names starting with any prefix in ``ignore`` are neither required nor reported as unexpected.
    """
    def skip(k: str) -> bool:
        return any(k.startswith(p) for p in ignore)

    missing = sorted(k for k in expected if k not in state and not skip(k))
    unexpected = sorted(k for k in state if k not in expected and not skip(k))
    misshaped = sorted(f"{k}: got {tuple(np.shape(state[k]))}, expected {tuple(expected[k])}"
                       for k in expected if k in state and tuple(np.shape(state[k])) != tuple(expected[k]))
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                parts.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise StateDictError("\n".join(parts))


def linear_to_kernel(weight: np.ndarray, in_shape: tuple[int, ...] = (), out_shape: tuple[int, ...] = ()) -> np.ndarray:
    """torch ``Linear.weight`` [out, in] -> flax kernel [*in_shape, *out_shape] (default [in, out])."""
    kernel = np.asarray(weight).T
    shape = (tuple(in_shape) or (kernel.shape[0],)) + (tuple(out_shape) or (kernel.shape[1],))
    return kernel.reshape(shape)


def kernel_to_linear(kernel: np.ndarray, n_in_dims: int = 1) -> np.ndarray:
    """Inverse of ``linear_to_kernel``: flax kernel -> torch [out, in]."""
    kernel = np.asarray(kernel)
    n_in = int(np.prod(kernel.shape[:n_in_dims]))
    return kernel.reshape(n_in, -1).T.copy()


def pad_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pads ``x`` at the end of each dim up to ``shape`` (``VLConfig.pad_to_multiple_of`` padding: the
    word table's rows, the class decoders' columns); ``x`` as it is when it already has ``shape``."""
    x = np.asarray(x)
    if x.shape == tuple(shape):
        return x
    if x.ndim != len(shape) or any(a > b for a, b in zip(x.shape, shape, strict=True)):
        raise ValueError(f"cannot pad shape {x.shape} to {tuple(shape)}")
    return np.pad(x, [(0, b - a) for a, b in zip(x.shape, shape, strict=True)])


def slice_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``pad_to_shape``: the leading ``shape`` block of ``x`` (drops padding rows / columns)."""
    x = np.asarray(x)
    if x.ndim != len(shape) or any(a < b for a, b in zip(x.shape, shape, strict=True)):
        raise ValueError(f"cannot slice shape {x.shape} to {tuple(shape)}")
    return x[tuple(slice(0, b) for b in shape)]
