"""The synthetic captioning world: the synthetic world's images with captions generated from their objects.

Images come from ``jaxvl.data.synthetic.World`` (gold objects with class, attribute and pixel box; a
simulated detector's R regions with D-dim features near the class prototype plus an attribute
vector, jittered boxes, clutter). Each image gets ``captions_per_image`` *different* captions written
from its gold objects and their spatial relations, for example ``a kodu fapiba left of a mituzo`` (class
and attribute names are the world's pseudo-words). Everything is deterministic per image index and
``seed``: image ``i`` (id ``f"{i:06d}"``) and its captions do not depend on ``num_images``.

Caption forms (NP = ``a ATTRIBUTE CLASS``, or ``a CLASS`` without the attribute):

- relation: ``NP(a) RELATION NP(b)`` for two objects a != b;
- single: ``there is NP``, ``the picture shows NP``, ``we see NP``, ``this is NP``, ``an image of NP``;
- conjunction: ``NP(a) and NP(b)``.

Every caption knows its noun phrases: ``CaptionImage.spans[c]`` gives each NP's word span
``[start, end)`` in ``captions[c].split(" ")`` (the whole ``a ATTRIBUTE CLASS``), in the order of
``mentions[c]``, and ``CaptionImage.linked_regions(c)`` the detector regions of the gold object each NP
names (the regions whose ``region_objects`` is that object; none for an NP of a random object). These
are the links of the attention analyses (``jaxvl.caption.attention``); a caption has at
most ``MAX_PHRASES`` NPs.

Relations are computed from the two gold boxes (pixels x1y1x2y2, y grows downwards), subject a,
landmark b, checked in this order:

1. ``on``: a's bottom edge lies within ``on_band * height(b)`` of b's top edge, a's centre is above
   b's centre, and a overlaps b horizontally by at least half of a's width;
2. ``next to``: the centre offset, divided by the mean width (x) and mean height (y) of the two
   boxes, is below ``next_to_radius`` along both axes;
3. ``left of`` / ``right of`` when the normalised horizontal offset is at least the vertical one;
4. ``above`` / ``below`` otherwise.

Knobs (``CaptionWorldConfig``; ``world`` holds the ``WorldConfig`` object/region/detector knobs:
``num_images``, ``num_regions``, ``feature_dim``, ``num_classes``, ``num_attributes``,
``min_objects``, ``max_objects``, ``image_size``, ``feature_noise``, ``ambiguous_fraction``,
``detector_rank_probs``, ``seed``; its caption knobs ``captions_per_image`` and ``vision_to_language``
only shape the synthetic world's own captions, which this module does not use):

- ``captions_per_image`` (5): distinct captions per image (ORT's ``seq_per_img``; at most 5 for an
  image with one object and a fixed noun-phrase form, so more are refused unless the knobs allow them);
- ``grounding`` (1.0): the probability that a caption describes the image; otherwise it describes
  random classes, attributes and a random relation. At 1 every class and attribute word can be read
  off the region features and every relation word off the boxes (the detector's jittered boxes give
  the gold relation about 93% of the time at the defaults, against 23% for always guessing the most
  common one), so a captioner that reads regions and boxes beats one that ignores them; at 0
  captions are independent of the image and no captioner can;
- ``relation_prob`` (0.6): the probability that a caption is a relation caption (needs >= 2 objects);
  the rest are single or conjunction captions in equal shares;
- ``attribute_prob`` (0.75): the probability that a noun phrase names its attribute;
- ``next_to_radius`` (0.5) and ``on_band`` (0.25): the relation thresholds above.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvl.data.records import RegionFeatures
from jaxvl.data.synthetic.world import SyntheticObject, World, WorldConfig

RELATIONS = ("left of", "right of", "above", "below", "next to", "on")
_SINGLE = ("there is {}", "the picture shows {}", "we see {}", "this is {}", "an image of {}")
_FUNCTION_WORDS = ("a", "an", "and", "there", "is", "the", "picture", "shows", "we", "see", "this", "image", "of")
_MAX_TRIES = 1000
MAX_PHRASES = 2  # noun phrases per caption: relation and conjunction captions have two


@dataclasses.dataclass(frozen=True)
class CaptionWorldConfig:
    """A synthetic captioning world: the object world's knobs plus the caption knobs of the module doc."""

    world: WorldConfig = dataclasses.field(default_factory=WorldConfig)
    captions_per_image: int = 5
    grounding: float = 1.0
    relation_prob: float = 0.6
    attribute_prob: float = 0.75
    next_to_radius: float = 0.5
    on_band: float = 0.25

    def __post_init__(self):
        for name in ("grounding", "relation_prob", "attribute_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.captions_per_image < 1:
            raise ValueError(f"captions_per_image={self.captions_per_image} must be >= 1")
        if self.next_to_radius < 0 or self.on_band < 0:
            raise ValueError("next_to_radius and on_band must be >= 0")
        forms = 2 if 0.0 < self.attribute_prob < 1.0 else 1  # a CLASS, a ATTRIBUTE CLASS
        fewest = len(_SINGLE) * forms + (forms * forms if self.world.min_objects >= 2 else 0)
        if self.grounding == 1.0 and self.captions_per_image > fewest:
            raise ValueError(f"captions_per_image={self.captions_per_image}: an image may have only {fewest} "
                             "distinct captions at these knobs (raise min_objects, or use 0 < attribute_prob < 1)")


@dataclasses.dataclass
class CaptionImage:
    """One image: its gold objects, detector regions and generated captions.

    ``region_objects`` [R]: the gold object each region detects (-1 clutter). Per caption ``c``:
    ``mentions[c]`` the objects its noun phrases name, in order (-1: a random object not in the
    image), ``spans[c]`` those noun phrases' word spans ``(start, end)`` in ``captions[c].split(" ")``,
    and ``relations[c]`` its relation word (None for single / conjunction captions).
    """

    image_id: str
    objects: list[SyntheticObject]
    regions: RegionFeatures
    region_objects: np.ndarray
    captions: list[str]
    mentions: list[tuple[int, ...]]
    relations: list[str | None]
    spans: list[tuple[tuple[int, int], ...]]

    def linked_regions(self, caption: int) -> list[np.ndarray]:
        """Per noun phrase of caption ``caption``: the int64 indices of the regions detecting its object
        (empty for a mention of an object not in the image)."""
        return [np.flatnonzero(self.region_objects == o) if o >= 0 else np.zeros((0,), np.int64)
                for o in self.mentions[caption]]


def relation(a: np.ndarray, b: np.ndarray, next_to_radius: float = 0.5, on_band: float = 0.25) -> str:
    """The spatial relation of box ``a`` (subject) to box ``b`` (landmark), pixel x1y1x2y2; rule in the module doc."""
    wa, ha, wb, hb = a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]
    cxa, cya, cxb, cyb = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    overlap_x = min(a[2], b[2]) - max(a[0], b[0])
    if abs(a[3] - b[1]) <= on_band * hb and cya < cyb and overlap_x >= 0.5 * wa:
        return "on"
    nx = (cxa - cxb) / max((wa + wb) / 2, 1e-6)
    ny = (cya - cyb) / max((ha + hb) / 2, 1e-6)
    if abs(nx) < next_to_radius and abs(ny) < next_to_radius:
        return "next to"
    if abs(nx) >= abs(ny):
        return "left of" if nx < 0 else "right of"
    return "above" if ny < 0 else "below"


class CaptionWorld:
    """The captioning world of ``cfg``: the object world, its caption vocabulary and its images."""

    def __init__(self, cfg: CaptionWorldConfig = CaptionWorldConfig()):
        self.cfg = cfg
        self.world = World(cfg.world)

    def vocabulary(self) -> list[str]:
        """Every word a caption can contain, sorted (the captioning vocabulary of this world)."""
        words = set(_FUNCTION_WORDS) | {w for r in RELATIONS for w in r.split()}
        return sorted(words | set(self.world.class_names) | set(self.world.attribute_names))

    def __len__(self) -> int:
        return len(self.world)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> CaptionImage:
        image = self.world[index]  # raises IndexError outside the world
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.world.seed, 2, index]))
        captions: list[str] = []
        mentions: list[tuple[int, ...]] = []
        relations: list[str | None] = []
        spans: list[tuple[tuple[int, int], ...]] = []
        for attempt in range(_MAX_TRIES):
            if len(captions) == self.cfg.captions_per_image:
                break
            # relations of identical or symmetric objects may repeat: the second half of the tries goes without
            text, mentioned, rel, where = self._caption(rng, image.objects, with_relations=attempt < _MAX_TRIES // 2)
            if text not in captions:
                captions.append(text)
                mentions.append(mentioned)
                relations.append(rel)
                spans.append(where)
        else:
            raise RuntimeError(f"image {image.image_id}: found only {len(captions)} distinct captions")
        return CaptionImage(image.image_id, image.objects, image.regions, image.region_objects, captions, mentions,
                            relations, spans)

    def _noun_phrase(self, rng: np.random.Generator, label: int, attribute: int) -> str:
        name = self.world.class_names[label]
        if rng.random() < self.cfg.attribute_prob:
            return f"a {self.world.attribute_names[attribute]} {name}"
        return f"a {name}"

    def _caption(self, rng: np.random.Generator, objects: list[SyntheticObject], with_relations: bool = True
                 ) -> tuple[str, tuple[int, ...], str | None, tuple[tuple[int, int], ...]]:
        """One caption: its text, the objects its noun phrases name (-1: not in the image), its relation and
        the noun phrases' word spans."""
        c, w = self.cfg, self.cfg.world
        grounded = rng.random() < c.grounding
        two = len(objects) >= 2 or not grounded
        relate = with_relations and two and rng.random() < c.relation_prob
        kind = "relation" if relate else str(rng.choice(["single", "conj"]))
        if kind == "conj" and not two:
            kind = "single"
        n = 1 if kind == "single" else 2
        if grounded:
            picked = [int(i) for i in rng.choice(len(objects), size=n, replace=False)]
            nps = [self._noun_phrase(rng, objects[i].label, objects[i].attribute) for i in picked]
        else:
            picked = [-1] * n
            nps = [self._noun_phrase(rng, int(rng.integers(w.num_classes)), int(rng.integers(w.num_attributes)))
                   for _ in range(n)]
        if kind == "single":
            template = _SINGLE[int(rng.integers(len(_SINGLE)))]
            return template.format(nps[0]), tuple(picked), None, _spans(template.split("{}")[0], nps[:1])
        if kind == "conj":
            return f"{nps[0]} and {nps[1]}", tuple(picked), None, _spans("", nps, "and")
        if grounded:
            rel = relation(objects[picked[0]].box, objects[picked[1]].box, c.next_to_radius, c.on_band)
        else:
            rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        return f"{nps[0]} {rel} {nps[1]}", tuple(picked), rel, _spans("", nps, rel)


def _spans(prefix: str, nps: list[str], between: str = "") -> tuple[tuple[int, int], ...]:
    """Word spans ``[start, end)`` of the noun phrases of ``prefix NP(0) [between NP(1)]``."""
    start = len(prefix.split())
    out = []
    for np_text in nps:
        out.append((start, start + len(np_text.split())))
        start = out[-1][1] + len(between.split())
    return tuple(out)
