"""Old import paths of the public API, kept for one release (0.2) with a ``DeprecationWarning``.

jaxvl 0.1 was laid out by technical layer (``jaxvl.train``, ``jaxvl.diagnostics``, ``jaxvl.decoding``,
...); 0.2 groups code by task over one runtime (``jaxvl.runtime``, ``jaxvl.pretrain``, ``jaxvl.caption``,
``jaxvl.ablation``, ``jaxvl.models.volta``, ``jaxvl.models.ort``). ``install()`` (called by
``jaxvl/__init__.py``) puts a finder at the end of ``sys.meta_path`` that answers only the names in
``MOVED``, so a real module always wins. Importing an old name warns once and gives a module whose
attributes are looked up, in order, in the new modules it was split into::

    from jaxvl.train.step import TrainState     # DeprecationWarning: jaxvl.train.step moved to ...
    from jaxvl.runtime.state import TrainState  # the new home (the same object)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

REMOVAL = "jaxvl 0.3"

# old module -> the new modules that hold its public names (looked up in this order)
MOVED: dict[str, tuple[str, ...]] = {
    "jaxvl.main": ("jaxvl.cli",),
    "jaxvl.objectives": ("jaxvl.models.volta.objectives",),
    "jaxvl.decoding": ("jaxvl.caption.decoding",),
    "jaxvl.captioning": ("jaxvl.caption.evaluate",),
    "jaxvl.models.vlbert": ("jaxvl.models.volta.model",),
    "jaxvl.models.plan": ("jaxvl.models.volta.plan",),
    "jaxvl.models.presets": ("jaxvl.models.volta.presets",),
    "jaxvl.models.config": ("jaxvl.models.volta.config",),
    "jaxvl.models.embeddings": ("jaxvl.models.volta.embeddings",),
    "jaxvl.models.encoder": ("jaxvl.models.volta.encoder",),
    "jaxvl.models.heads": ("jaxvl.models.volta.heads",),
    "jaxvl.models.captioner": ("jaxvl.models.ort.captioner",),
    "jaxvl.models.geometry": ("jaxvl.models.ort.geometry",),
    "jaxvl.train": ("jaxvl.runtime", "jaxvl.pretrain"),
    "jaxvl.train.step": ("jaxvl.runtime.state", "jaxvl.runtime.compile", "jaxvl.pretrain.step"),
    "jaxvl.train.sharding": ("jaxvl.runtime.sharding",),
    "jaxvl.train.loop": ("jaxvl.runtime.loop",),
    "jaxvl.train.checkpoint": ("jaxvl.runtime.checkpoint",),
    "jaxvl.train.metrics_log": ("jaxvl.runtime.metrics_log",),
    "jaxvl.train.distributed": ("jaxvl.runtime.distributed",),
    "jaxvl.train.datasets": ("jaxvl.data.resolve",),
    "jaxvl.train.objective": ("jaxvl.pretrain.loss",),
    "jaxvl.train.optimizer": ("jaxvl.runtime.optimizer", "jaxvl.runtime.state"),
    "jaxvl.train.sweep": ("jaxvl.pretrain.sweep",),
    "jaxvl.pretrain.optimizer": ("jaxvl.runtime.optimizer",),
    "jaxvl.finetune.heads": ("jaxvl.models.volta.task_heads",),
    "jaxvl.train.flops": ("jaxvl.pretrain.flops",),
    "jaxvl.train.pretrain": ("jaxvl.pretrain.trainer", "jaxvl.runtime.checkpoint"),
    "jaxvl.train.caption_objective": ("jaxvl.caption.loss", "jaxvl.caption.optimizers", "jaxvl.models.ort.geometry"),
    "jaxvl.train.caption_trainer": ("jaxvl.caption.trainer", "jaxvl.caption.rewards"),
    "jaxvl.data.pipeline": ("jaxvl.data.grain", "jaxvl.pretrain.data"),
    "jaxvl.data.global_batch": ("jaxvl.runtime.sharding",),
    "jaxvl.data.caption_pipeline": ("jaxvl.caption.data",),
    "jaxvl.data.caption_world": ("jaxvl.data.synthetic.captions",),
    "jaxvl.data.ablation_pipeline": ("jaxvl.ablation.data",),
    "jaxvl.diagnostics": ("jaxvl.ablation",),
    "jaxvl.diagnostics.ablate": ("jaxvl.ablation.sweep",),
    "jaxvl.diagnostics.alignment": ("jaxvl.ablation.alignment",),
    "jaxvl.diagnostics.conditions": ("jaxvl.ablation.conditions",),
    "jaxvl.diagnostics.labelmatch": ("jaxvl.ablation.labelmatch",),
    "jaxvl.diagnostics.attention": ("jaxvl.ablation.attention",),
    "jaxvl.diagnostics.report": ("jaxvl.ablation.report",),
    "jaxvl.diagnostics.caption_attention": ("jaxvl.caption.attention",),
}
# Old packages: their old submodules are imported through the finder too.
PACKAGES = frozenset({"jaxvl.train", "jaxvl.diagnostics"})


class MovedModule(types.ModuleType):
    """Stands for an old module: attribute lookups go to the new modules, imported on first use."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"moved to {', '.join(targets)} (deprecated, removed in {REMOVAL})")
        self.__jaxvl_targets__ = targets
        if name in PACKAGES:
            self.__path__ = []

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__jaxvl_targets__:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self.__jaxvl_targets__)}) "
                             f"has no attribute {attr!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__jaxvl_targets__:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds only the old names of ``MOVED`` (after every other finder has had its turn)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in PACKAGES)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return MovedModule(spec.name, MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(f"{module.__name__} moved to {', '.join(MOVED[module.__name__])} in jaxvl 0.2; the old "
                      f"path is removed in {REMOVAL}", DeprecationWarning, stacklevel=2)


def install() -> None:
    """Appends the finder to ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
