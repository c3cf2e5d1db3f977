"""Region records -> fixed-shape inputs with the global [IMG] row."""

import numpy as np
import pytest

from jaxvl.data.records import RegionFeatures
from jaxvl.data.regions import normalised_locations, region_inputs
from jaxvl.models import get_config, validate_batch


def record(n=3, dim=4):
    boxes = np.array([[0, 0, 100, 50], [50, 25, 200, 100], [10, 10, 20, 20]][:n], np.float32)
    return RegionFeatures("img", image_h=100, image_w=200, boxes=boxes,
                          features=np.arange(n * dim, dtype=np.float32).reshape(n, dim))


def test_locations_are_volta_five_d():
    loc = normalised_locations(record().boxes, 100, 200)
    np.testing.assert_allclose(loc[0], [0, 0, 0.5, 0.5, 0.25])
    np.testing.assert_allclose(loc[1], [0.25, 0.25, 1.0, 1.0, 0.5625])


@pytest.mark.parametrize("where", ["first", "last"])
def test_global_row_and_padding(where):
    out = region_inputs(record(), num_regions=5, add_global=where)
    assert out["features"].shape == (6, 4) and out["locations"].shape == (6, 5)
    g = 0 if where == "first" else -1
    real = slice(1, 4) if where == "first" else slice(0, 3)
    np.testing.assert_allclose(out["features"][g], record().features.mean(0))
    np.testing.assert_array_equal(out["locations"][g], [0, 0, 1, 1, 1])
    assert out["region_mask"].tolist() == ([1, 1, 1, 1, 0, 0] if where == "first" else [1, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(out["features"][real], record().features)


def test_truncates_and_feeds_the_model_validator():
    out = region_inputs(record(), num_regions=2, add_global=None)
    assert out["features"].shape == (2, 4) and out["region_mask"].tolist() == [1, 1]
    cfg = get_config("uniter", tiny=True, v_feature_size=4)
    full = region_inputs(record(), num_regions=4)
    validate_batch({"input_ids": np.ones((1, 3), np.int32), "features": full["features"][None],
                    "locations": full["locations"][None], "region_mask": full["region_mask"][None]}, cfg)
