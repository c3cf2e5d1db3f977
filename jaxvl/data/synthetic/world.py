"""A synthetic world with planted cross-modal structure: jaxvl's embedded default data set.

Each image is a set of objects (class, attribute, pixel box). A simulated detector turns it into R
regions (padded to a fixed count) with D-dim features, a K+1-way class distribution (index 0 =
background, like the 1601-way Visual Genome detector), its argmax and confidence. A small grammar
writes captions that mention some objects, and every mention of a visible object is a
Flickr30k-Entities-style phrase (text, first word index, entity id, gold box).

Three knobs plant known structure, so the cross-modal ablation diagnostic has a ground truth:

- ``vision_to_language`` (0..1): the probability that a caption mention describes an object in the
  image (its true class and attribute); otherwise the mention is a random class and attribute.
  At 0 captions are independent of the image, so ablating vision cannot raise the masked-language
  loss; at 1 every mentioned word is predictable from the regions, so ablating the aligned regions
  (``object``) or all regions (``all``) raises it.
- ``ambiguous_fraction`` (0..1): the fraction of classes paired up so that both classes of a pair
  share one feature prototype. Their regions cannot be told apart from vision; only the caption
  (which names the class) disambiguates, so masking the phrase (``phrase``/``all``) raises the
  masked-region loss on them. At 0 the region features alone determine the class.
- ``detector_rank_probs``: how often the detector ranks the gold class 1st, 2nd-3rd, 4th-5th,
  6th-10th or lower (silver-label noise). The default reproduces the real detector on the
  LabelMatch subset: top-1 38%, top-3 55%, top-5 64%, top-10 75%.

Two knobs plant what the mirror and colour probes (``jaxvl.probes``) look for; both are off by default, and
every world without them is unchanged:

- ``spatial_relations``: ``left`` / ``right`` tied to the gold boxes. A caption of one mention reads
  ``there is a ATTRIBUTE CLASS on the left`` (``right``) by the side of the image its object's box centre lies
  on; a caption of two mentions reads ``NP(a) left of NP(b)`` (``right of``) by the order of the two objects'
  box centres (two distinct objects). A mention of a random object (``vision_to_language`` < 1) gets a random
  side, and so does every caption with probability 1 - ``side_grounding`` (0: the same captions, sides
  independent of the boxes: the mirror probe's control). Off, two-mention captions take a relation at random
  (``left of`` among them), independent of the boxes.
- ``colour_dims`` (> 0) and ``colour_signal``: attribute words become colour words (``COLOURS``) and an object's
  colour is carried by the last ``colour_dims`` feature dimensions only (class prototypes and clutter are zero
  there), scaled by ``colour_signal`` (0: the features carry no colour at all, the captions still name one).
  ``World.colour_basis()`` gives the orthonormal rows spanning that subspace, for the colour probe to project out.

Everything is deterministic from ``seed``; image ``i`` is the same whatever ``num_images`` is.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvl.data.records import AblationExample, RegionFeatures

# P(gold rank = 1), P(2-3), P(4-5), P(6-10), P(> 10): cumulative 0.38, 0.55, 0.64, 0.75, 1.0.
REAL_DETECTOR_RANK_PROBS = (0.38, 0.17, 0.09, 0.11, 0.25)
# The demo's world as a `jaxvl prepare --source` string (``jaxvl.demo``, ``jaxvl world export``'s default): one
# object per image, named by every caption; 6 pairs of classes sharing a visual prototype; a sharp detector.
DEMO_WORLD = ("synthetic:num_images=256,val_images=48,min_objects=1,max_objects=1,num_classes=12,num_regions=6,"
              "vision_to_language=1.0,ambiguous_fraction=1.0,detector_rank_probs=1/0/0/0/0,detector_temperature=0.5")
_RANK_BINS = ((1, 1), (2, 3), (4, 5), (6, 10), (11, None))
_FUNCTION_WORDS = ("a", "the", "there", "is", "are", "and", "on", "near", "next", "to", "of", "with", "in",
                   "front", "behind", "left", "right", "picture", "shows", "we", "see")
_RELATIONS = ("on", "near", "next to", "behind", "in front of", "left of", "right of", "with")
# Attribute words of a world with colour_dims > 0 (the first num_attributes).
COLOURS = ("red", "green", "blue", "yellow", "white", "black", "brown", "orange", "purple", "pink", "grey", "gold")
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Sizes and knobs of a synthetic world. The defaults are tiny: they generate in well under a second."""

    num_images: int = 64
    num_regions: int = 10  # R detected regions per image, padded to this fixed count
    feature_dim: int = 24  # D
    num_classes: int = 20  # K object classes; the detector distribution has K + 1 entries
    num_attributes: int = 6
    min_objects: int = 2
    max_objects: int = 5
    captions_per_image: int = 2
    image_size: tuple[int, int] = (480, 640)  # (height, width) in pixels
    feature_noise: float = 0.3  # std of per-region noise around the class prototype
    vision_to_language: float = 1.0
    ambiguous_fraction: float = 0.0
    detector_rank_probs: tuple[float, ...] = REAL_DETECTOR_RANK_PROBS
    detector_temperature: float = 1.0
    spatial_relations: bool = False  # left/right tied to the gold boxes (module doc)
    side_grounding: float = 1.0  # spatial_relations: the probability that the side follows the boxes
    colour_dims: int = 0  # > 0: colour words, colour carried by the last colour_dims feature dims (module doc)
    colour_signal: float = 1.0  # scale of the colour component (0: features carry no colour)
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.vision_to_language <= 1.0:
            raise ValueError(f"vision_to_language={self.vision_to_language} must lie in [0, 1]")
        if not 0.0 <= self.ambiguous_fraction <= 1.0:
            raise ValueError(f"ambiguous_fraction={self.ambiguous_fraction} must lie in [0, 1]")
        if len(self.detector_rank_probs) != len(_RANK_BINS) or abs(sum(self.detector_rank_probs) - 1) > 1e-6:
            raise ValueError(f"detector_rank_probs must be {len(_RANK_BINS)} probabilities summing to 1")
        if not 1 <= self.min_objects <= self.max_objects <= self.num_regions:
            raise ValueError("need 1 <= min_objects <= max_objects <= num_regions")
        if not 0.0 <= self.side_grounding <= 1.0:
            raise ValueError(f"side_grounding={self.side_grounding} must lie in [0, 1]")
        if not 0 <= self.colour_dims < self.feature_dim:
            raise ValueError(f"colour_dims={self.colour_dims} must lie in [0, feature_dim={self.feature_dim})")
        if self.colour_dims and self.num_attributes > len(COLOURS):
            raise ValueError(f"num_attributes={self.num_attributes}: a colour world has at most {len(COLOURS)} colours")
        if self.colour_signal < 0:
            raise ValueError(f"colour_signal={self.colour_signal} must be >= 0")
        if self.num_classes < 11:
            raise ValueError("num_classes must be at least 11 (the detector ranks need 11 places)")


@dataclasses.dataclass
class SyntheticObject:
    """A gold object: class in [0, K), attribute in [0, num_attributes), pixel box x1y1x2y2."""

    label: int
    attribute: int
    box: np.ndarray


@dataclasses.dataclass
class SyntheticImage:
    """One image of the world: gold objects, detector regions, captions and grounded phrases.

    ``region_objects`` [R] gives, per detected region, the index of the gold object it detects
    (-1 for clutter). ``mentions[c]`` lists, per caption, (object index or -1, class, attribute).
    """

    image_id: str
    objects: list[SyntheticObject]
    regions: RegionFeatures
    region_objects: np.ndarray
    captions: list[str]
    mentions: list[list[tuple[int, int, int]]]
    phrases: list[AblationExample]


def _pseudo_words(rng: np.random.Generator, n: int, syllables: int, taken: set[str]) -> list[str]:
    """``n`` distinct lower-case pseudo-words of ``syllables`` consonant-vowel pairs, none in ``taken``."""
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(list(_ONSETS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


class World:
    """The synthetic world of ``cfg``: its vocabulary, its class prototypes, and its images."""

    def __init__(self, cfg: WorldConfig = WorldConfig()):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        taken = set(_FUNCTION_WORDS)
        self.class_names = _pseudo_words(rng, cfg.num_classes, 3, taken)
        self.attribute_names = _pseudo_words(rng, cfg.num_attributes, 2, taken)
        # Ambiguous classes come in pairs that share one prototype: the first 2 * n_pairs classes.
        n_pairs = int(round(cfg.ambiguous_fraction * cfg.num_classes)) // 2
        self.prototype_of = np.arange(cfg.num_classes)
        self.prototype_of[1:2 * n_pairs:2] = np.arange(0, 2 * n_pairs, 2)
        self.ambiguous = np.zeros(cfg.num_classes, bool)
        self.ambiguous[:2 * n_pairs] = True
        self.prototypes = rng.normal(size=(cfg.num_classes, cfg.feature_dim)).astype(np.float32)
        self.attribute_vectors = 0.5 * rng.normal(size=(cfg.num_attributes, cfg.feature_dim)).astype(np.float32)
        self.clutter = rng.normal(size=(cfg.feature_dim,)).astype(np.float32)
        if cfg.colour_dims:  # the colour subspace: the last colour_dims dims, only colour lives there
            k = cfg.colour_dims
            self.attribute_names = list(COLOURS[:cfg.num_attributes])
            self.prototypes[:, -k:] = 0.0
            self.clutter[-k:] = 0.0
            colours = np.random.default_rng([cfg.seed, 3]).normal(size=(cfg.num_attributes, k))
            self.attribute_vectors = np.zeros_like(self.attribute_vectors)
            self.attribute_vectors[:, -k:] = cfg.colour_signal * colours
        self._seeds = np.random.SeedSequence([cfg.seed, 1])

    def colour_basis(self) -> np.ndarray:
        """float32 [colour_dims, feature_dim]: orthonormal rows spanning the features' colour subspace (no rows
        without ``colour_dims``)."""
        d, k = self.cfg.feature_dim, self.cfg.colour_dims
        return np.eye(d, dtype=np.float32)[d - k:]

    # ------------------------------------------------------------------------------------------ words

    def vocabulary(self) -> list[str]:
        """Every word a caption can contain (for ``Tokenizer.from_words``)."""
        return sorted(set(_FUNCTION_WORDS) | set(self.class_names) | set(self.attribute_names))

    def label_list(self) -> list[str]:
        """Class names in detector space: ``__background__`` then the K classes (like VG's 1601 labels)."""
        return ["__background__", *self.class_names]

    # ----------------------------------------------------------------------------------------- images

    def __len__(self) -> int:
        return self.cfg.num_images

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> SyntheticImage:
        if not 0 <= index < self.cfg.num_images:
            raise IndexError(f"image {index} outside [0, {self.cfg.num_images})")
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 1, index]))
        objects = self._objects(rng)
        regions, region_objects = self._detect(rng, objects, image_id=f"{index:06d}")
        captions, mentions, phrases = self._describe(rng, objects, regions.image_id)
        return SyntheticImage(regions.image_id, objects, regions, region_objects, captions, mentions, phrases)

    def _objects(self, rng: np.random.Generator) -> list[SyntheticObject]:
        c = self.cfg
        h, w = c.image_size
        out = []
        for _ in range(rng.integers(c.min_objects, c.max_objects + 1)):
            bw, bh = rng.uniform(0.15, 0.6) * w, rng.uniform(0.15, 0.6) * h
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            box = np.array([x1, y1, x1 + bw, y1 + bh], np.float32)
            out.append(SyntheticObject(int(rng.integers(c.num_classes)), int(rng.integers(c.num_attributes)), box))
        return out

    def _detector_distribution(self, rng: np.random.Generator, gold: int | None) -> np.ndarray:
        """A K+1 distribution (background at 0) whose ranking puts class ``gold`` at a sampled rank."""
        c = self.cfg
        logits = np.sort(rng.normal(scale=2.0, size=c.num_classes + 1))[::-1] / c.detector_temperature
        order = rng.permutation(c.num_classes + 1)  # which class gets which rank
        if gold is not None:
            lo, hi = _RANK_BINS[rng.choice(len(_RANK_BINS), p=c.detector_rank_probs)]
            rank = int(rng.integers(lo, (hi or c.num_classes) + 1)) - 1  # 0-based rank among the K classes
            # Rank among foreground classes: the background entry is kept out of the top places.
            fg = [k for k in order if k != 0 and k != gold + 1]
            ranked = fg[:rank] + [gold + 1] + fg[rank:]
            order = np.array(ranked + [0])
        probs = np.empty(c.num_classes + 1)
        probs[order] = np.exp(logits - logits.max())
        return (probs / probs.sum()).astype(np.float32)

    def _detect(self, rng: np.random.Generator, objects: list[SyntheticObject],
                image_id: str) -> tuple[RegionFeatures, np.ndarray]:
        """R regions: one or two jittered detections per object, then clutter, in shuffled order."""
        c = self.cfg
        h, w = c.image_size
        sources = [i for i in range(len(objects)) for _ in range(rng.integers(1, 3))][:c.num_regions]
        sources += [-1] * (c.num_regions - len(sources))
        sources = np.array(sources)[rng.permutation(c.num_regions)]
        boxes, feats, probs = [], [], []
        for src in sources:
            if src >= 0:
                obj = objects[src]
                size = np.array([obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]] * 2)
                box = obj.box + rng.normal(scale=0.05, size=4) * size
                mean = self.prototypes[self.prototype_of[obj.label]] + self.attribute_vectors[obj.attribute]
                gold = obj.label
            else:
                bw, bh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
                x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                box, mean, gold = np.array([x1, y1, x1 + bw, y1 + bh]), self.clutter, None
            box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
            box[2:] = np.maximum(box[2:], box[:2] + 1)
            boxes.append(box)
            feats.append(mean + c.feature_noise * rng.normal(size=c.feature_dim))
            probs.append(self._detector_distribution(rng, gold))
        cls_prob = np.stack(probs).astype(np.float32)
        objects_id = cls_prob[:, 1:].argmax(1)
        regions = RegionFeatures(
            image_id=image_id, image_h=h, image_w=w, boxes=np.stack(boxes).astype(np.float32),
            features=np.stack(feats).astype(np.float32), cls_prob=cls_prob, objects_id=objects_id.astype(np.int64),
            objects_conf=cls_prob[np.arange(c.num_regions), objects_id + 1].astype(np.float32))
        return regions, sources

    def _describe(self, rng: np.random.Generator, objects: list[SyntheticObject], image_id: str):
        """Captions from a small grammar; every mention of a visible object becomes a phrase."""
        c = self.cfg
        captions, mentions, phrases = [], [], []
        for s in range(c.captions_per_image):
            if c.spatial_relations:
                words, starts, picked, noun = self._spatial_caption(rng, objects)
            else:
                words, starts, picked, noun = self._caption(rng, objects)
            sentence = " ".join(words)
            captions.append(sentence)
            mentions.append(picked)
            for j, ((i, _, _), start) in enumerate(zip(picked, starts, strict=True)):
                if i < 0:
                    continue  # a mention of nothing in the image: no gold box, no phrase (like Flickr30k's nobox)
                phrases.append(AblationExample(
                    image_id=image_id, sentence_index=s, sentence=sentence, phrase=noun[j], first_word_index=start,
                    entity_id=f"{image_id}-{i}", phrase_type="object", ref_boxes=objects[i].box[None].copy()))
        return captions, mentions, phrases

    def _noun_phrases(self, picked: list[tuple[int, int, int]]) -> list[str]:
        return [f"a {self.attribute_names[a]} {self.class_names[k]}" for _, k, a in picked]

    def _caption(self, rng: np.random.Generator, objects: list[SyntheticObject]):
        """A caption of the small grammar: (words, first word of each mention, mentions, noun phrases)."""
        c = self.cfg
        picked = []
        for _ in range(min(2, len(objects))):
            if rng.random() < c.vision_to_language:
                i = int(rng.integers(len(objects)))
                picked.append((i, objects[i].label, objects[i].attribute))
            else:
                picked.append((-1, int(rng.integers(c.num_classes)), int(rng.integers(c.num_attributes))))
        noun = self._noun_phrases(picked)
        template = int(rng.integers(3))
        if len(noun) == 1:
            words, starts = f"there is {noun[0]}".split(" "), [2]
        elif template == 0:
            rel = _RELATIONS[int(rng.integers(len(_RELATIONS)))]
            words = f"{noun[0]} {rel} {noun[1]}".split(" ")
            starts = [0, 3 + len(rel.split(" "))]
        elif template == 1:
            words, starts = f"there is {noun[0]} and {noun[1]}".split(" "), [2, 6]
        else:
            words, starts = f"the picture shows {noun[0]} with {noun[1]}".split(" "), [3, 7]
        return words, starts, picked, noun

    def _spatial_caption(self, rng: np.random.Generator, objects: list[SyntheticObject]):
        """A caption whose ``left`` / ``right`` follows the gold boxes (``spatial_relations``; module doc):
        (words, first word of each mention, mentions, noun phrases)."""
        c = self.cfg
        free = list(range(len(objects)))
        picked = []
        for _ in range(min(2, len(objects))):
            if rng.random() < c.vision_to_language:
                i = free.pop(int(rng.integers(len(free))))
                picked.append((i, objects[i].label, objects[i].attribute))
            else:
                picked.append((-1, int(rng.integers(c.num_classes)), int(rng.integers(c.num_attributes))))
        noun = self._noun_phrases(picked)
        centres = [(objects[i].box[0] + objects[i].box[2]) / 2 if i >= 0 else None for i, _, _ in picked]
        if rng.random() >= c.side_grounding:
            centres = [None]
        if len(picked) == 1:
            left = rng.random() < 0.5 if centres[0] is None else centres[0] < c.image_size[1] / 2
            return f"there is {noun[0]} on the {'left' if left else 'right'}".split(" "), [2], picked, noun
        left = rng.random() < 0.5 if None in centres else centres[0] < centres[1]
        words = f"{noun[0]} {'left' if left else 'right'} of {noun[1]}".split(" ")
        return words, [0, 5], picked, noun
