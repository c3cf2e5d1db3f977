"""Measures the effect-size floor of the ablation verdicts (``jaxvl.ablation.verdicts.EFFECT_FLOOR_BITS``).

    python scripts/calibrate_verdict_floor.py --seeds 5 --json /tmp/floor.json

Trains tiny UNITERs on synthetic worlds with nothing planted (``--seeds`` seeds x the three recipes of
``tests/verdict_worlds.py``, plus one world with both directions planted per recipe; 1200 steps each,
about 6 minutes on 2 CPU cores for 5 seeds), ablates each with every condition and its matched
control at IoT > 0.5, and prints every effect (condition minus control, bits, paired 95% bootstrap
interval). On the worlds with nothing planted, read on the heads the models trained (MLM; MRC-KL or
MRC-XE; the untrained head's reading is listed apart), it reports the largest absolute effect, the
largest interval bound on the far side of zero (the smallest floor under which no verdict there would
be ``found`` / ``opposite``) and the largest absolute bound; the floor is ``--margin`` x the largest
absolute effect, rounded up to 0.01 bit. The planted worlds' effects show what that floor still finds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))



def trained(row: dict, recipes: dict) -> bool:
    """Whether ``row``'s metric reads a head its model trained (MLM; MRC-KL: head "0"; MRC-XE: head "3")."""
    heads = dict(recipes[row["recipe"]].heads)
    return row["metric"] == "mlm" or (row["metric"] == "mrc_kl" and "0" in heads) or (
        row["metric"] == "mrc_xe" and "3" in heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="worlds with nothing planted per recipe (default 5)")
    parser.add_argument("--margin", type=float, default=2.0, help="floor = margin x the largest |effect| (default 2)")
    parser.add_argument("--json", default="", help="also write every row here")
    args = parser.parse_args()

    from verdict_worlds import RECIPES, Case, calibrate

    start = time.perf_counter()
    cases = [Case("nothing", s) for s in range(args.seeds)] + [Case("planted", 0)]
    rows = [r for r in calibrate({recipe: cases for recipe in RECIPES}) if r["effect"] is not None]
    print(f"{len(rows)} effects from {len(cases) * len(RECIPES)} models in {time.perf_counter() - start:.0f} s\n")
    print("| recipe | world | seed | condition | metric | Δ condition | Δ control | effect [95%] | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['kind']} | {r['seed']} | {r['task']} {r['condition']} | {r['metric']}"
              f"{'' if trained(r, RECIPES) else ' (untrained)'} | {r['delta']:+.3f} | {r['control_delta']:+.3f} | "
              f"{r['effect']:+.3f} [{r['effect_low']:.3f}, {r['effect_high']:.3f}] | {r['verdict']} |")
    for which, keep in (("trained heads", True), ("untrained readings", False)):
        nothing = [r for r in rows if r["kind"] == "nothing" and trained(r, RECIPES) == keep]
        if not nothing:
            continue
        largest = max(abs(r["effect"]) for r in nothing)
        beyond = max(max(r["effect_low"], -r["effect_high"]) for r in nothing)
        far = max(max(abs(r["effect_low"]), abs(r["effect_high"])) for r in nothing)
        print(f"\nnothing planted, {which}: largest |effect| {largest:.4f} bits; largest bound beyond zero (the "
              f"smallest floor with no finding) {beyond:.4f}; largest |bound| {far:.4f} -> floor {args.margin:g} x "
              f"{largest:.4f} = {math.ceil(100 * args.margin * largest) / 100:.2f} bits")
    planted = [r for r in rows if r["kind"] == "planted" and trained(r, RECIPES)]
    for recipe in RECIPES:
        low = [r["effect_low"] for r in planted if r["recipe"] == recipe]
        if low:
            print(f"planted, {recipe}: smallest lower bound of an effect {min(low):.4f} bits")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
