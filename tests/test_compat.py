"""Old import paths (jaxvl 0.1's layout by layer) still work for one release, each with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from jaxvl.compat import MOVED

# A public name per old module, and where it lives now.
SAMPLES = {
    "jaxvl.main": ("main", "jaxvl.cli"),
    "jaxvl.objectives": ("mlm_loss", "jaxvl.models.volta.objectives"),
    "jaxvl.decoding": ("beam_search", "jaxvl.caption.decoding"),
    "jaxvl.captioning": ("decode_split", "jaxvl.caption.evaluate"),
    "jaxvl.models.vlbert": ("VLBertForPreTraining", "jaxvl.models.volta.model"),
    "jaxvl.models.captioner": ("Captioner", "jaxvl.models.ort.captioner"),
    "jaxvl.train.step": ("FAST_COMPILE", "jaxvl.runtime.compile"),
    "jaxvl.train.optimizer": ("current_learning_rate", "jaxvl.runtime.state"),
    "jaxvl.train.pretrain": ("params_from_workdir", "jaxvl.runtime.checkpoint"),
    "jaxvl.train.caption_trainer": ("token_strings", "jaxvl.caption.rewards"),
    "jaxvl.data.pipeline": ("pretrain_dataset", "jaxvl.pretrain.data"),
    "jaxvl.data.global_batch": ("to_global", "jaxvl.runtime.sharding"),
    "jaxvl.diagnostics": ("run_ablation", "jaxvl.ablation"),
    "jaxvl.diagnostics.caption_attention": ("analyze", "jaxvl.caption.attention"),
}


def fresh_import(name: str):
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(SAMPLES))
def test_old_path_warns_and_gives_the_same_object(old):
    attr, new = SAMPLES[old]
    parent = old.rpartition(".")[0]
    if parent in MOVED:  # an old package (jaxvl.train): imported first, so its own warning does not leak out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module(parent)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to .*{new}"):
        module = fresh_import(old)
    assert getattr(module, attr) is getattr(importlib.import_module(new), attr)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_imports(old):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = fresh_import(old)
    assert dir(module)  # every target imports
    with pytest.raises(AttributeError, match="moved to"):
        module.no_such_name  # noqa: B018


def test_from_import_of_an_old_submodule_and_the_old_entry_point():
    for key in [k for k in sys.modules if k.startswith("jaxvl.train")]:
        del sys.modules[key]
    with pytest.warns(DeprecationWarning, match="jaxvl.train"):
        from jaxvl.train import sweep  # jaxvl.train is an old package
    assert sweep.members_from_config is importlib.import_module("jaxvl.pretrain.sweep").members_from_config
    # The new code itself uses no old path, and no deprecated API is used from jaxvl's own modules. Only those are
    # errors: a newer dependency's own deprecated use of another (orbax importing jax 0.12's deprecated
    # jax.sharding.SingleDeviceSharding) is not jaxvl's.
    out = subprocess.run([sys.executable, "-c",
                          "import warnings; "
                          "warnings.filterwarnings('error', r'jaxvl\\.\\S+ moved to', DeprecationWarning); "
                          "warnings.filterwarnings('error', category=DeprecationWarning, module=r'jaxvl(\\.|$)'); "
                          "import jaxvl.cli, jaxvl.runtime.stage, jaxvl.pretrain.trainer, jaxvl.caption.trainer, "
                          "jaxvl.ablation.run, jaxvl.demo"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
