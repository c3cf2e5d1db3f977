"""The mirror and colour probes against planted truth: two tiny UNITERs, each pretrained on its own world, probed.

Both worlds (``tests/verdict_worlds.py``, kinds ``sides+colour`` and ``untied``; one object per image, 12 classes,
a detector that ranks the gold class first) write the same captions, ``there is a red kodufa on the left``: a colour
word and a side word in every caption. They differ only in what the words are tied to:

- ``sides+colour``: the side follows the object's gold box (its centre left or right of the image's centre,
  ``spatial_relations`` with ``side_grounding=1``) and the colour is carried by the last 4 feature dimensions
  (``colour_dims=4``, ``colour_signal=1``): the planted world;
- ``untied``: the side is a coin flip (``side_grounding=0``) and the features carry no colour at all
  (``colour_signal=0``): nothing to find.

Both models train in one compiled program (``verdict_worlds.train``, the demo's recipe: objective 2, 40% / 30%
masking, 1200 steps of batch 32) and are probed on the 128 captions of their world's 64 held-out images. Measured
here (``pytest tests/test_probes_planted.py -s`` prints the numbers, seed 0): the planted model's MLM loss at the
side word rises by +2.96 nats [2.65, 3.28] when the boxes are flipped (the untied model's by -0.0001 [-0.002,
+0.002]), and at the colour word by +2.71 bits [2.27, 3.16] beyond the random-projection control when the colour
subspace is projected out (the untied model's +0.01 [-0.03, +0.06]); the planted model prefers the true colour word
over a foil at the masked colour token 99.2% of the time, the untied one 54.7% [46.1, 63.3].
"""

import functools

import jax
import pytest
from verdict_worlds import RECIPES, TRAIN, VAL, Case, tokenizer, train, training_pairs

from jaxvl.probes.colour import run_colour
from jaxvl.probes.pairs import PairItems
from jaxvl.runtime.compile import FAST_COMPILE

pytestmark = pytest.mark.slow
CASES = {"planted": Case("sides+colour", 0), "untied": Case("untied", 0)}


@functools.cache
def trained():
    """(model, tokenizer, {name: params}, {name: held-out PairItems})."""
    cases = list(CASES.values())
    tok = tokenizer(cases)
    model, stacked = train(cases, RECIPES["demo"], tok)
    params = {name: {"params": jax.tree.map(lambda x, k=k: x[k], stacked)} for k, name in enumerate(CASES)}
    items = {name: PairItems.from_batch(training_pairs(case, tok, range(TRAIN, TRAIN + VAL)))
             for name, case in CASES.items()}
    return model, tok, params, items


def test_colour_probe_finds_colour_only_where_it_was_planted():
    model, tok, params, items = trained()
    for name, case in CASES.items():
        result, citems = run_colour(model, params[name], items[name], tok, case.world.attribute_names,
                                    basis=case.world.colour_basis(), seed=0, block=8, compiler_options=FAST_COMPILE)
        assert citems.n == items[name].n  # every caption names a colour
        summary = result.summary(n_boot=1000, seed=0)
        verdicts = result.verdicts(summary, itm_trained=False)
        print(f"\n{name}: colour effect {summary['effects']['effect']}, control {summary['effects']['control']}\n"
              f"  {verdicts['features']}\n  {verdicts.get('mlm', '')}")
        effect, control = summary["effects"]["effect"], summary["effects"]["control"]
        if name == "planted":
            assert verdicts["features"].startswith("uses colour from the features")
            assert effect["low"] > 1.0 and control["mean"] < effect["mean"] / 5  # bits
            assert verdicts["mlm"].startswith("prefers the true colour word")
        else:
            assert not verdicts["features"].startswith("uses colour from the features")
            assert abs(effect["mean"]) < 0.1 and effect["low"] < 0.16
            assert verdicts["mlm"].startswith("no preference")


def test_mirror_probe_finds_left_right_geometry_only_where_it_was_planted():
    from jaxvl.probes.mirror import MirrorWords, run_mirror

    model, tok, params, items = trained()
    words = MirrorWords.from_tokenizer(tok, "left:right")
    for name, case in CASES.items():
        result = run_mirror(model, params[name], items[name], words, tok.mask_id, block=32, itm_trained=False,
                            compiler_options=FAST_COMPILE)
        assert result.n == items[name].n  # every caption names a side
        s = result.summary(n_boot=1000, seed=0)
        verdict = result.verdict(case.kind)
        print(f"\n{name}: flip effect {s['mlm_flip']:+.3f} [{s['mlm_flip_low']:+.3f}, {s['mlm_flip_high']:+.3f}] nats, "
              f"flip+swap |change| {s['mlm_consistency']:.3f}\n  {verdict}")
        if name == "planted":
            assert "uses left/right geometry" in verdict and s["mlm_flip_low"] > 1.0
            assert s["mlm_consistency"] < s["mlm_flip"] / 4  # the mirrored caption fits the mirrored scene
        else:
            assert "no evidence" in verdict and abs(s["mlm_flip"]) < 0.05
