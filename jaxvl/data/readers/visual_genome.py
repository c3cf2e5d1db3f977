"""Visual Genome detector vocabularies (bottom-up-attention ``objects_vocab.txt`` / ``attributes_vocab.txt``).

``objects_vocab.txt`` has 1600 lines, one class per line, each a comma-separated list of synonyms
(``"man"``, ``"shirt"``, ``"t-shirt,t shirt,tshirt"`` ...). The detector's class space prepends
``__background__``, giving the 1601 columns of ``cls_prob``; VOLTA's ``objects_id`` is the argmax over
``cls_prob[:, 1:]``, i.e. the K-space index (line number, 0-based) = the (K+1)-space index - 1.
``attributes_vocab.txt`` (400 lines) prepends ``__no_attribute__`` the same way (401 columns).

As in bottom-up-attention's demo, a class's display label is its first synonym, lower-cased and
stripped. ``VGVocab.index(name)`` looks up any synonym.
"""

from __future__ import annotations

import dataclasses
import os

from jaxvl.data.records import BadRecord

BACKGROUND = "__background__"
NO_ATTRIBUTE = "__no_attribute__"
NUM_OBJECTS = 1600
NUM_ATTRIBUTES = 400


@dataclasses.dataclass(frozen=True)
class VGVocab:
    """A detector label space with the null class at index 0.

    ``labels`` [K+1]: ``labels[0]`` is the null class (``__background__``), ``labels[k + 1]`` the first
    synonym of line k. ``synonyms`` [K+1]: every synonym of each class (the null class: itself).
    """

    labels: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    source: str = "<vocab>"

    def __post_init__(self):
        lookup: dict[str, int] = {}
        for i, syns in enumerate(self.synonyms):
            for s in syns:
                lookup.setdefault(s, i)  # a synonym listed under two classes resolves to the first
        object.__setattr__(self, "_lookup", lookup)

    def __len__(self) -> int:
        """K + 1 (1601 for VG objects): the width of ``cls_prob``."""
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """K (1600 for VG objects), the space of ``objects_id``."""
        return len(self.labels) - 1

    def index(self, name: str) -> int:
        """(K+1)-space index of a label or synonym (case-insensitive); ``KeyError`` if unknown."""
        key = name.strip().lower()
        try:
            return self._lookup[key]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"{self.source}: unknown label {name!r}") from None

    def k_index(self, name: str) -> int:
        """K-space index (``objects_id`` convention, background excluded) of a label or synonym."""
        i = self.index(name)
        if i == 0:
            raise KeyError(f"{self.source}: {name!r} is the null class, which has no K-space index")
        return i - 1

    def __contains__(self, name: str) -> bool:
        return name.strip().lower() in self._lookup  # type: ignore[attr-defined]

    def label(self, index: int) -> str:
        """Display label of a (K+1)-space index."""
        return self.labels[index]

    def k_label(self, k: int) -> str:
        """Display label of a K-space index (``objects_id``)."""
        if not 0 <= k < self.num_classes:
            raise IndexError(f"K-space index {k} outside [0, {self.num_classes})")
        return self.labels[k + 1]


def load_vg_vocab(path: str | os.PathLike, null_label: str = BACKGROUND, expected: int | None = None) -> VGVocab:
    """Read a comma-separated-synonyms vocabulary file; ``null_label`` becomes index 0.

    Raises ``FileNotFoundError`` for a missing file, ``BadRecord`` naming the file and line for an
    empty line or an empty synonym, and ``ValueError`` when ``expected`` lines are not there.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    labels, synonyms = [null_label], [(null_label,)]
    for i, line in enumerate(lines, start=1):
        syns = tuple(s.strip().lower() for s in line.split(","))
        if not line.strip() or any(not s for s in syns):
            raise BadRecord(f"{path}: line {i}: empty class name or synonym: {line!r}")
        labels.append(syns[0])
        synonyms.append(syns)
    if expected is not None and len(labels) - 1 != expected:
        raise ValueError(f"{path}: {len(labels) - 1} classes, expected {expected}")
    return VGVocab(tuple(labels), tuple(synonyms), source=path)


def load_objects_vocab(path: str | os.PathLike, expected: int | None = NUM_OBJECTS) -> VGVocab:
    """``objects_vocab.txt`` -> 1601 labels with ``__background__`` at 0 (1600 lines expected)."""
    return load_vg_vocab(path, BACKGROUND, expected)


def load_attributes_vocab(path: str | os.PathLike, expected: int | None = NUM_ATTRIBUTES) -> VGVocab:
    """``attributes_vocab.txt`` -> 401 labels with ``__no_attribute__`` at 0 (400 lines expected)."""
    return load_vg_vocab(path, NO_ATTRIBUTE, expected)
