"""How the pretraining-pair sources store their pairs: ``layout=pairs|images`` and ``features_dtype=``.

- ``layout=pairs`` (the default): ``PretrainPairs``, one TFDS ``tf.Example`` per (image, caption) pair;
- ``layout=images``: an image store (``jaxvl.data.builders.images.ImagePairsBuilder``,
  ``jaxvl.data.imagestore``): one record per image and one small record per caption, arrays as raw bytes,
  written under ``<out>/<pair dataset name>_images/<config>/1.0.0`` and read back as the same pair records;
- ``features_dtype=float32|float16`` (``layout=images`` only): the stored dtype of ``features`` (float16 halves
  the largest field; it is cast back to float32 on read).

``synthetic``, ``volta-cc`` and ``tsv`` take these options (``synthetic`` among its world knobs). A training
config's ``data.dataset=volta-cc:...`` is read in place (``jaxvl.data.inplace``) whatever its layout; ``jaxvl
prepare --source volta-cc:...,layout=images`` writes the image store, and ``data.dataset`` then names its directory.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxvl.data.sources.base import ParsedSource, Skips

if TYPE_CHECKING:  # the builders import tensorflow_datasets: only the factories load them
    from jaxvl.data.builders.images import ImagePairsBuilder
    from jaxvl.data.builders.pretrain import PretrainPairs

LAYOUTS = ("pairs", "images")
FEATURES_DTYPES = ("float32", "float16")
LAYOUT_OPTIONS = ("layout", "features_dtype")
"""The option keys of ``LayoutOptions``."""


@dataclasses.dataclass(frozen=True)
class LayoutOptions:
    """A pretraining source's storage options (module doc)."""

    layout: str = "pairs"
    features_dtype: str = "float32"

    @classmethod
    def parse(cls, src: ParsedSource, options: dict[str, str] | None = None) -> LayoutOptions:
        """The layout options of ``src`` (``options``: instead of ``src.options``); ``SourceError`` when bad."""
        options = src.options if options is None else options
        layout = options.get("layout", "pairs").strip().lower()
        dtype = options.get("features_dtype", "float32").strip().lower()
        if layout not in LAYOUTS:
            raise src.fail(f"option layout={layout!r} must be one of {', '.join(LAYOUTS)}")
        if dtype not in FEATURES_DTYPES:
            raise src.fail(f"option features_dtype={dtype!r} must be one of {', '.join(FEATURES_DTYPES)}")
        if dtype != "float32" and layout != "images":
            raise src.fail(f"features_dtype={dtype} needs layout=images (the pair layout stores float32)")
        return cls(layout, dtype)

    def builder(self, pairs: PretrainPairs, out: str, skip_bad: bool = False,
                skips: Skips | None = None) -> PretrainPairs | ImagePairsBuilder:
        """``pairs`` itself for the pair layout, else the image store writing its pairs."""
        if self.layout == "pairs":
            return pairs
        from jaxvl.data.builders.images import ImagePairsBuilder

        return ImagePairsBuilder(pairs, out, self.features_dtype, skip_bad, skips)


def split_layout_knobs(args: str) -> tuple[str, dict[str, str]]:
    """``"num_images=64,layout=images"`` -> (``"num_images=64"``, ``{"layout": "images"}``): the layout options
    taken out of a ``key=value,...`` list (the ``synthetic`` source's knobs)."""
    rest, options = [], {}
    for item in (s.strip() for s in args.split(",")):
        key, sep, value = item.partition("=")
        if sep and key.strip().replace("-", "_") in LAYOUT_OPTIONS:
            options[key.strip().replace("-", "_")] = value
        elif item:
            rest.append(item)
    return ",".join(rest), options
