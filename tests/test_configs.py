"""Config files: get_config(arg), overrides with type checks, `jaxvl models --config`, and the variants and
required keys each packaged config declares for `--help`."""

import importlib

import pytest

from jaxvl.cli import main
from jaxvl.configs import PACKAGED, ConfigError, load_config, packaged_config_path, parse_arg

MODELS = "models"


def test_parse_arg_flags_and_values():
    args = parse_arg("lxmert,tiny,steps=10", model="uniter", tiny=False, steps=100)
    assert (args.model, args.tiny, args.steps) == ("lxmert", True, 10)
    with pytest.raises(ValueError, match="stepz"):
        parse_arg("stepz=3", steps=1)


def test_load_config_with_overrides():
    cfg = load_config(MODELS + ":tiny", ["batch=4", "presets=lxmert"])
    assert (cfg.size, cfg.batch, cfg.presets) == ("tiny", 4, "lxmert")
    with pytest.raises(ConfigError, match="batchsize"):
        load_config(MODELS, ["batchsize=4"])
    with pytest.raises(ConfigError, match="batch"):
        load_config(MODELS, ["batch='four'"])
    with pytest.raises(ConfigError, match="nope.py"):
        load_config("configs/nope.py:tiny")
    with pytest.raises(ConfigError, match="not a packaged config"):
        load_config("pretrian:uniter")
    assert load_config(str(packaged_config_path("models")) + ":tiny") == load_config("models:tiny")  # by path


def test_models_command_from_config(capsys):
    assert main(["models", "--config", MODELS + ":tiny", "--config.presets=uniter", "--config.batch=1"]) == 0
    out = capsys.readouterr().out
    assert "uniter: single-stream, 24 sub-layers" in out and "114,497,405 parameters (VOLTA: 114,497,405, equal)" in out
    assert "text          (1, 38, 32)" in out


def test_parse_arg_fills_variant_slots_in_order():
    args = parse_arg("lxmert,xent,tiny", model="uniter", variant="ctrl", tiny=False)
    assert (args.model, args.variant, args.tiny) == ("lxmert", "xent", True)
    with pytest.raises(ValueError, match="no free variant slot"):
        parse_arg("lxmert,xent,extra", model="uniter", variant="ctrl")


def test_tuple_overrides_take_one_item_and_widen_ints():
    from ml_collections import ConfigDict

    from jaxvl.configs import _set

    cfg = ConfigDict(dict(thresholds=(0.1, 0.5)))
    _set(cfg, "thresholds", 0.3, "x")
    assert cfg.thresholds == (0.3,)
    _set(cfg, "thresholds", (0, 1), "x")
    assert cfg.thresholds == (0.0, 1.0) and isinstance(cfg.thresholds[0], float)


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_configs_describe_themselves(name):
    """What `jaxvl COMMAND --help` shows comes from the config module: its docstring opens with the commands that
    run it (``--config NAME:ARG``), every word of ``VARIANTS`` is accepted by ``get_config``, and every key of
    ``REQUIRED`` exists in the config."""
    module = importlib.import_module(f"jaxvl.configs.{name}")
    commands = [line.strip() for line in module.__doc__.split("\n\n")[1].splitlines()]
    assert commands and all(c.startswith("jaxvl ") or c.startswith("--config.") for c in commands)
    assert all(f"--config {name}" in c for c in commands if c.startswith("jaxvl "))
    assert module.ARGUMENT and module.VARIANTS
    first = {"pretrain": "uniter", "caption": "ort"}.get(name)  # the MODEL word the other words follow
    for entry in module.VARIANTS:
        for word in _variant_words(entry):
            candidates = [word] + ([f"{first},{word}"] if first else [])
            assert any(_loads(f"{name}:{c}") for c in candidates), f"{name}: variant {word!r} is refused"
    default = module.get_config(None)
    for key in module.REQUIRED:
        node = default
        for part in key.split("."):
            assert part in node, f"{name}: REQUIRED key {key!r}"
            node = node[part]


def _variant_words(entry: str) -> list[str]:
    """``"thr02, thr04"`` -> both words; ``"sweep=objectives|seeds"`` -> ``sweep=objectives``, ``sweep=seeds``;
    ``"(none)"`` -> the empty argument."""
    if entry == "(none)":
        return [""]
    key, _, values = entry.rpartition("=")
    return [f"{key}={v}" for v in values.split("|")] if key else entry.split(", ")


def _loads(spec: str) -> bool:
    try:
        load_config(spec)
    except ConfigError:
        return False
    return True
