"""What every source factory works with: the parsed source string, its errors, the result, and naming.

A factory ``(ParsedSource, out_dir, skip_bad) -> Prepared`` (``SourceFactory``) reads its options off
the ``ParsedSource``, raises its ``fail`` / ``SourceError`` for unusable ones, and returns the TFDS
builders with the ``Skips`` they fill while writing. ``config_name``, ``source_metadata``,
``path_stem`` and ``bind_split`` are the naming and wiring every file source shares.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the builders import tensorflow_datasets: only the factories load them
    from jaxvl.data.builders.ablation import AblationPhrases
    from jaxvl.data.builders.captions import CaptionImages
    from jaxvl.data.builders.pretrain import PretrainPairs


class SourceError(ValueError):
    """A source string that cannot be used: unknown source or option, missing or bad path or value."""


@dataclasses.dataclass(frozen=True)
class ParsedSource:
    """A parsed source string: ``name``, the raw ``args`` after the colon, the ``path`` and ``options``.

    ``usage`` is the source's usage line from the registry, quoted by ``fail``.
    """

    text: str
    name: str
    args: str
    path: str | None = None
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    usage: str = dataclasses.field(default="", repr=False, compare=False)

    def fail(self, problem: str) -> SourceError:
        """A ``SourceError`` for this source: ``<name>: <problem> (in '<text>'); usage: ...``."""
        return SourceError(f"--source {self.name}: {problem} (in {self.text!r}); usage: {self.usage}")

    def require(self, key: str) -> str:
        """The value of a mandatory option, or a ``SourceError`` naming it."""
        if key not in self.options:
            raise self.fail(f"missing option {key}=")
        return self.options[key]

    def bool_option(self, key: str, default: bool) -> bool:
        """An option's value as a bool (``1/true/yes`` or ``0/false/no``), ``default`` when absent."""
        value = self.options.get(key)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise self.fail(f"option {key}={value!r} must be 1 or 0")

    def int_option(self, key: str, words: tuple[str, ...] = ()) -> int | str | None:
        """An option's value as an int >= 1, or one of ``words`` (lower-cased), or None when absent."""
        value = self.options.get(key)
        if value is None:
            return None
        if value.strip().lower() in words:
            return value.strip().lower()
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            allowed = " or ".join(("an integer >= 1", *words))
            raise self.fail(f"option {key}={value!r} must be {allowed}")
        return n

    def existing_path(self, value: str, what: str, kind: str = "any") -> str:
        """``value`` as an absolute path that exists (``kind`` "file", "dir" or "any"), or a ``SourceError``."""
        path = os.path.abspath(os.path.expanduser(value))
        ok = {"file": os.path.isfile, "dir": os.path.isdir, "any": os.path.exists}[kind](path)
        if not ok:
            noun = {"file": "file", "dir": "directory", "any": "file or directory"}[kind]
            raise self.fail(f"{what} {path}: no such {noun}")
        return path


def wants_skip_bad(src: ParsedSource, skip_bad: bool) -> bool:
    """Whether bad records are skipped: ``skip_bad`` (``--skip-bad``) or the source's own ``skip_bad=1``."""
    return skip_bad or src.bool_option("skip_bad", False)


# ---------------------------------------------------------------------------------------------- results


class Skips:
    """What a build skipped with ``skip_bad``: a count per kind (e.g. "train: bad records in X.lmdb").

    Filled while the builders write their splits; ``counts`` is a plain dict that the datasets'
    metadata share, so it lands in ``metadata.json`` as ``skipped``.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str, n: int = 1) -> None:
        """Counts ``n`` more skips of kind ``what`` (nothing for ``n == 0``)."""
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    @property
    def total(self) -> int:
        """All skips, every kind together."""
        return sum(self.counts.values())


@dataclasses.dataclass
class Prepared:
    """A source's TFDS builders (not yet prepared) and the skip counts they fill while writing."""

    builders: list[PretrainPairs | AblationPhrases | CaptionImages]
    skips: Skips = dataclasses.field(default_factory=Skips)


SourceFactory = Callable[[ParsedSource, str, bool], Prepared]
"""A source's builder factory: ``(parsed, out_dir, skip_bad) -> Prepared``."""


# ---------------------------------------------------------------------------------------------- naming


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def path_stem(path: str) -> str:
    """A feature path's base name without its store extension (``.lmdb``, ``.mdb``, ``.tsv``, ``.npz``)."""
    base = os.path.basename(os.path.normpath(path))
    for ext in (".lmdb", ".mdb", ".tsv", ".npz"):
        base = base.removesuffix(ext)
    return base


def config_name(src: ParsedSource, *parts: str) -> str:
    """``name=`` if given, else the source's name, ``parts`` and the region options given, joined by ``-``/``+``."""
    if "name" in src.options:
        name = src.options["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise src.fail(f"name={name!r} may only hold letters, digits and _.+-")
        return name
    knobs = [f"{k}-{src.options[k]}" for k in ("num_regions", "feature_dim", "num_classes") if k in src.options]
    return "+".join(["-".join(_slug(p) for p in (src.name.replace("-", "_"), *parts)), *knobs])


def source_metadata(src: ParsedSource, skips: Skips, skip_bad: bool, **files: Any) -> dict[str, Any]:
    """The ``metadata.json`` entries of a file source: the source, its input ``files`` and the live skip counts."""
    return {"source": src.name, "source_string": src.text, "files": files, "skip_bad": skip_bad,
            "skipped": skips.counts}


def bind_split(fn: Callable[..., Iterator], *args: Any) -> Callable[[], Iterator]:
    """A split's example generator: ``fn(*args)``, called when the builder writes the split."""
    return lambda: fn(*args)
