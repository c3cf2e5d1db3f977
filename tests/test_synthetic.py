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
