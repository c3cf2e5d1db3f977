"""Experiment configs: Python files returning an ``ml_collections.ConfigDict`` from ``get_config(arg)``.

The JAX-ecosystem convention (big_vision, scenic). The configs jaxvl ships live in this package and are
addressed by name; any other config file by its path::

    jaxvl pretrain --config pretrain:uniter,tiny --workdir runs/u     # jaxvl/configs/pretrain.py
    jaxvl models --config my_models:lxmert,tiny --config.model.scan_layers=True

``load_config("models:lxmert,tiny", ["model.scan_layers=True"])`` imports the config, calls
``get_config("lxmert,tiny")`` and applies the overrides. An override must name an existing key (a typo
is an error naming it) and is parsed as a Python literal, falling back to a string; its type must
match the key's current value type (ints widen to floats).

Each packaged config also says what ``jaxvl COMMAND --help`` shows of it: ``ARGUMENT`` (the form of its
argument), ``VARIANTS`` (its words, one line each) and ``REQUIRED`` (the keys a full-size run must set, and
when); its docstring opens with the commands that run it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import warnings
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


PACKAGED = ("pretrain", "finetune", "caption", "ablate", "probes", "models")


class ConfigError(ValueError):
    """A config that cannot be loaded or overridden; the message names the config and the key."""


def packaged_config_path(name: str) -> str:
    """The file of a packaged config (``pretrain``, ``caption``, ``ablate``, ``models``)."""
    return os.path.join(os.path.dirname(__file__), f"{name}.py")


def config_module(spec: str) -> Any:
    """The module of ``spec``'s config (``NAME[:arg]`` packaged, or ``path.py[:arg]``), imported."""
    path = spec.partition(":")[0]
    if path in PACKAGED:
        return importlib.import_module(f"jaxvl.configs.{path}")
    if not os.path.isfile(path):
        stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.basename(os.path.dirname(path)) == "configs" and stem in PACKAGED:
            warnings.warn(f"config file {path!r}: the configs moved into the package in jaxvl 0.2; "
                          f"use --config {stem}:ARG", DeprecationWarning, stacklevel=3)
            return importlib.import_module(f"jaxvl.configs.{stem}")
        raise ConfigError(f"config {path!r}: no such file, and not a packaged config ({', '.join(PACKAGED)})")
    module_spec = importlib.util.spec_from_file_location(f"jaxvl_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """``NAME[:arg]`` (a packaged config) or ``path.py[:arg]`` -> its ``get_config(arg)`` with
    ``key.sub=value`` overrides applied. Errors are ``ConfigError``s naming the config and the key."""
    arg = spec.partition(":")[2]
    module = config_module(spec)
    try:
        cfg = module.get_config(arg or None)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"config {spec!r}: {e}") from e
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override --config.{item}: expected --config.KEY=VALUE")
        _set(cfg, key, _literal(value), spec)
    return cfg


def _set(cfg: ConfigDict, dotted: str, value: Any, spec: str) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for name in parents:
        if name not in node:
            raise ConfigError(f"config {spec!r}: override key {dotted!r}: no field {name!r}")
        node = node[name]
    if leaf not in node:
        raise ConfigError(f"config {spec!r}: override key {dotted!r}: no field {leaf!r} (have {sorted(node.keys())})")
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and not isinstance(value, tuple):  # "--config.thresholds=0.5": one item
        value = (value,)
    if isinstance(current, tuple) and current and isinstance(current[0], float):
        value = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    if current is not None and value is not None and type(current) is not type(value):
        raise ConfigError(f"config {spec!r}: override {dotted}={value!r} has type {type(value).__name__}, "
                        f"the config holds {type(current).__name__}")
    node[leaf] = value
