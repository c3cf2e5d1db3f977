"""The synthetic world: determinism, record validity, and that each knob plants what it claims."""

import numpy as np
import pytest

from jaxvl.data.records import check_ablation_example, check_region_features
from jaxvl.data.synthetic import World, WorldConfig


def test_deterministic_and_independent_of_world_size():
    a, b = World(WorldConfig(num_images=5, seed=3)), World(WorldConfig(num_images=50, seed=3))
    for i in range(5):
        x, y = a[i], b[i]
        assert x.captions == y.captions
        np.testing.assert_array_equal(x.regions.features, y.regions.features)
        np.testing.assert_array_equal(x.regions.cls_prob, y.regions.cls_prob)
    assert World(WorldConfig(seed=4))[0].captions != a[0].captions or not np.array_equal(
        World(WorldConfig(seed=4))[0].regions.features, a[0].regions.features)


def test_records_are_valid_and_fixed_size():
    cfg = WorldConfig(num_images=20)
    world = World(cfg)
    for image in world:
        regions = check_region_features(image.regions, "synthetic", feature_dim=cfg.feature_dim,
                                        num_classes=cfg.num_classes + 1)
        assert regions.num_boxes == cfg.num_regions
        np.testing.assert_allclose(regions.cls_prob.sum(1), 1.0, rtol=1e-5)
        assert (regions.objects_id == regions.cls_prob[:, 1:].argmax(1)).all()
        assert len(image.captions) == cfg.captions_per_image
        for phrase in image.phrases:
            check_ablation_example(phrase, "synthetic")
            assert set(phrase.phrase.split(" ")) <= set(world.vocabulary())
        for caption in image.captions:
            assert set(caption.split(" ")) <= set(world.vocabulary())


def test_vision_to_language_knob():
    grounded = World(WorldConfig(num_images=30, vision_to_language=1.0))
    independent = World(WorldConfig(num_images=30, vision_to_language=0.0))
    for image in grounded:
        for mention in image.mentions:
            for obj, label, attribute in mention:
                assert obj >= 0 and image.objects[obj].label == label and image.objects[obj].attribute == attribute
    assert all(obj < 0 for image in independent for m in image.mentions for obj, _, _ in m)
    assert sum(len(image.phrases) for image in independent) == 0


def test_ambiguous_classes_share_prototypes():
    world = World(WorldConfig(ambiguous_fraction=0.5))
    assert world.ambiguous.sum() == 10
    for k in np.flatnonzero(world.ambiguous):
        partner = k ^ 1
        assert world.prototype_of[k] == world.prototype_of[partner]
    clear = World(WorldConfig(ambiguous_fraction=0.0))
    assert len(set(clear.prototype_of.tolist())) == clear.cfg.num_classes


def test_region_features_identify_the_class_unless_ambiguous():
    """Nearest prototype recovers the gold class of every object region (attribute noise included)."""
    world = World(WorldConfig(num_images=40, ambiguous_fraction=0.4, feature_noise=0.1))
    hits = {True: [], False: []}
    for image in world:
        for r, obj in enumerate(image.region_objects):
            if obj < 0:
                continue
            label = image.objects[obj].label
            dist = ((image.regions.features[r] - world.prototypes[world.prototype_of]) ** 2).sum(1)
            hits[bool(world.ambiguous[label])].append(dist.argmin() == label)
    assert np.mean(hits[False]) > 0.95
    assert 0.3 < np.mean(hits[True]) < 0.7  # a coin flip between the two classes of a pair


def test_detector_agreement_matches_the_real_detector():
    world = World(WorldConfig(num_images=400, num_classes=40))
    ranks = []
    for image in world:
        for r, obj in enumerate(image.region_objects):
            if obj >= 0:
                scores = image.regions.cls_prob[r, 1:]
                ranks.append(int((scores > scores[image.objects[obj].label]).sum()) + 1)
    ranks = np.array(ranks)
    for k, want in ((1, 0.38), (3, 0.55), (5, 0.64), (10, 0.75)):
        assert abs((ranks <= k).mean() - want) < 0.04, k


@pytest.mark.parametrize("bad", [dict(vision_to_language=1.5), dict(ambiguous_fraction=-0.1),
                                 dict(detector_rank_probs=(0.5, 0.5)), dict(max_objects=50)])
def test_bad_knobs_are_refused(bad):
    with pytest.raises(ValueError):
        WorldConfig(**bad)


# ------------------------------------------------------------------ the probes' knobs: spatial relations, colour


def _centre_x(box: np.ndarray) -> float:
    return float(box[0] + box[2]) / 2


def test_spatial_relations_tie_left_and_right_to_the_gold_boxes():
    world = World(WorldConfig(num_images=40, min_objects=1, max_objects=3, spatial_relations=True))
    width = world.cfg.image_size[1]
    singles = pairs = 0
    for image in world:
        for caption, mentions in zip(image.captions, image.mentions, strict=True):
            words = caption.split(" ")
            assert ("left" in words) != ("right" in words), caption
            side = "left" if "left" in words else "right"
            if len(mentions) == 1:
                singles += 1
                assert caption.endswith(f"on the {side}")
                assert side == ("left" if _centre_x(image.objects[mentions[0][0]].box) < width / 2 else "right")
            else:
                pairs += 1
                (a, _, _), (b, _, _) = mentions
                assert a != b and words[3:5] == [side, "of"]
                left_of = _centre_x(image.objects[a].box) < _centre_x(image.objects[b].box)
                assert side == ("left" if left_of else "right")
        for phrase in image.phrases:  # the phrases still point at their words
            words = phrase.sentence.split(" ")
            assert " ".join(words[phrase.first_word_index:phrase.first_word_index + 3]) == phrase.phrase
    assert singles > 5 and pairs > 5


def test_without_spatial_relations_sides_ignore_the_boxes():
    world = World(WorldConfig(num_images=800, min_objects=2, max_objects=2, spatial_relations=False))
    agree = total = 0
    for image in world:
        for caption, ((a, _, _), (b, _, _)) in zip(image.captions, image.mentions, strict=True):
            words = caption.split(" ")
            if ("left" in words or "right" in words) and a != b:
                left_of = _centre_x(image.objects[a].box) < _centre_x(image.objects[b].box)
                agree += ("left" in words) == left_of
                total += 1
    assert total > 30 and 0.3 < agree / total < 0.7


def test_colour_worlds_carry_colour_only_in_the_colour_subspace():
    k = 4
    world = World(WorldConfig(num_images=60, colour_dims=k, num_attributes=6, feature_noise=0.1))
    assert world.attribute_names == ["red", "green", "blue", "yellow", "white", "black"]
    assert set(world.attribute_names) <= set(world.vocabulary())
    basis = world.colour_basis()
    np.testing.assert_allclose(basis @ basis.T, np.eye(k), atol=1e-6)
    assert not (world.prototypes @ basis.T).any() and not (world.clutter @ basis.T).any()
    # an object's regions: their colour coordinates sit near its colour's vector, whatever its class
    errors, spread = [], []
    for image in world:
        for r, o in enumerate(image.region_objects):
            if o >= 0:
                colour = world.attribute_vectors[image.objects[o].attribute] @ basis.T
                errors.append(np.abs(image.regions.features[r] @ basis.T - colour).max())
                spread.append(np.abs(colour).max())
    assert max(errors) < 0.6 < np.mean(spread)
    assert "red" in " ".join(c for image in world for c in image.captions)


def test_colour_signal_zero_leaves_no_colour_in_the_features():
    world = World(WorldConfig(num_images=60, colour_dims=4, colour_signal=0.0))
    basis = world.colour_basis()
    coords = {a: [] for a in range(world.cfg.num_attributes)}
    for image in world:
        for r, o in enumerate(image.region_objects):
            if o >= 0:
                coords[image.objects[o].attribute].append(image.regions.features[r] @ basis.T)
    means = np.stack([np.mean(c, 0) for c in coords.values() if len(c) > 10])
    assert np.abs(means).max() < 0.25  # noise only (std feature_noise / sqrt(n)), no colour vector


def test_probe_knobs_parse_from_a_source_string_and_export_the_basis(tmp_path):
    from jaxvl.data.synthetic.volta_files import export_world, world_from_source

    cfg, val = world_from_source("synthetic:num_images=4,val_images=2,spatial_relations=1,colour_dims=3,"
                                 "colour_signal=0.5")
    assert (cfg.spatial_relations, cfg.colour_dims, cfg.colour_signal, val) == (True, 3, 0.5, 2)
    done = export_world(cfg, val, tmp_path / "w")
    np.testing.assert_array_equal(np.load(done.colour_basis), World(cfg).colour_basis())
    plain, _ = world_from_source("synthetic:num_images=4,val_images=2")
    assert export_world(plain, 2, tmp_path / "p").colour_basis == ""


@pytest.mark.parametrize("bad", [dict(colour_dims=24), dict(colour_dims=-1), dict(colour_signal=-1.0),
                                 dict(colour_dims=2, num_attributes=13)])
def test_bad_probe_knobs_are_refused(bad):
    with pytest.raises(ValueError, match="colour"):
        WorldConfig(**bad)


def test_side_grounding_zero_keeps_the_captions_and_unties_the_sides():
    tied = World(WorldConfig(num_images=300, min_objects=1, max_objects=1, spatial_relations=True))
    free = World(WorldConfig(num_images=300, min_objects=1, max_objects=1, spatial_relations=True, side_grounding=0.0))
    agree = 0
    for a, b in zip(tied, free, strict=True):
        for ca, cb in zip(a.captions, b.captions, strict=True):
            assert ca.rsplit(" ", 1)[0] == cb.rsplit(" ", 1)[0]  # the same caption up to its side word
            agree += ca == cb
    assert 0.35 < agree / (2 * 300) < 0.65
