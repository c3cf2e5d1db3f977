"""Experiment configs: Python files returning an ``ml_collections.ConfigDict`` from ``get_config(arg)``.

The JAX-ecosystem convention (big_vision, scenic)::

    jaxvl models --config configs/models.py:lxmert,tiny --config.model.scan_layers=True

``load_config("configs/models.py:lxmert,tiny", ["model.scan_layers=True"])`` imports the file, calls
``get_config("lxmert,tiny")`` and applies the overrides. An override must name an existing key (a typo
is an error naming it) and is parsed as a Python literal, falling back to a string; its type must
match the key's current value type (ints widen to floats).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
    """``"lxmert,tiny,steps=10"`` -> ConfigDict of ``defaults`` updated by ``key=value`` items and bare words.

    A bare word sets the boolean default of that name to True if there is one, else fills the next
    string-valued default not yet filled by a bare word, in the order the defaults are given (the
    "variant" slots, e.g. ``model="uniter", variant="ctrl"`` takes ``"lxmert,xent"``).
    """
    out = ConfigDict(dict(defaults))
    slots = [k for k, v in defaults.items() if isinstance(v, str)]
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if sep:
            if key not in defaults:
                raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
            out[key] = _literal(value)
            if key in slots:
                slots.remove(key)
        elif isinstance(defaults.get(key), bool):
            out[key] = True
        else:
            if not slots:
                raise ValueError(f"config argument {item!r}: no such flag in {sorted(defaults)}, and no free "
                                 f"variant slot left")
            out[slots.pop(0)] = item
    return out


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """``path.py[:arg]`` -> the file's ``get_config(arg)`` with ``key.sub=value`` overrides applied."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"jaxvl_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config(arg) function")
    cfg = module.get_config(arg or None)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        _set(cfg, key, _literal(value), spec)
    return cfg


def _set(cfg: ConfigDict, dotted: str, value: Any, spec: str) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for name in parents:
        if name not in node:
            raise KeyError(f"{spec}: override key {dotted!r}: no field {name!r}")
        node = node[name]
    if leaf not in node:
        raise KeyError(f"{spec}: override key {dotted!r}: no field {leaf!r} (have {sorted(node.keys())})")
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and not isinstance(value, tuple):  # "--config.thresholds=0.5": one item
        value = (value,)
    if isinstance(current, tuple) and current and isinstance(current[0], float):
        value = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    if current is not None and value is not None and type(current) is not type(value):
        raise TypeError(f"{spec}: override {dotted}={value!r} has type {type(value).__name__}, "
                        f"the config holds {type(current).__name__}")
    node[leaf] = value
