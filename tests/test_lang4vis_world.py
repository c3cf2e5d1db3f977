"""The demo world's region targets (issue 13, the lang4vis puzzle; ``scripts/investigate_lang4vis.py oracle``).

Language -> vision is measurable in the demo's world: on an object's region the detector's target names the exact
class (its argmax is the gold class), which only the caption can tell apart from its pair partner, so a model that
reads the caption can remove most of the region loss there. But three regions in four are clutter, whose targets are
random detector distributions that no input predicts: the eval's all-region region loss can fall only a little
below chance even for a perfect model, which is why ``learned.md``'s gains on this world stay small.
"""

import importlib.util
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "investigate_lang4vis.py")


@pytest.fixture(scope="module")
def levels():
    spec = importlib.util.spec_from_file_location("investigate_lang4vis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.oracle(num_images=800)


@pytest.mark.parametrize("head", ["mrc_kl", "mrc_xe"])
def test_text_carries_the_region_target_on_object_regions(levels, head):
    lv = levels[head]
    chance = lv["chance"]["object"]
    vision = lv["vision only (class pair)"]["object"]
    text = lv["vision + text (exact class)"]["object"]
    assert chance - text > 1.0  # nats a model that reads the caption can remove at the phrase's region
    assert vision - text > 0.3  # of which the caption alone gives this much (the pair's two classes)


@pytest.mark.parametrize("head", ["mrc_kl", "mrc_xe"])
def test_clutter_dilutes_the_all_region_eval(levels, head):
    lv = levels[head]
    gain = 1 - lv["vision + text (exact class)"]["all"] / lv["chance"]["all"]
    assert 0.1 < gain < 0.35  # even a perfect model removes only this fraction of the eval's chance loss
