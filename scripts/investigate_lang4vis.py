"""Why do two of the demo's four members find no language -> vision (issue 13, section 1, third bullet)?

The demo (``jaxvl/demo.py``) pretrains a tiny UNITER and a tiny LXMERT, each as a sweep of an MRC-KL and an
MRC-XE member (600 steps, objective 2, 40% token / 30% region masking, lr 3e-3), then ablates them. Language ->
vision is not found for ``uniter-mrc-kl`` and ``lxmert-mrc-xe``. This script reruns the pieces with learning
curves, more steps, other seeds, ViLBERT and single (non-sweep) runs, and reads each eval loss against three
levels measured on the world itself (``oracle``): chance (an input-blind prediction), "vision only" (the best
prediction that knows object-vs-clutter and the object's visual prototype, i.e. the class PAIR) and "vision +
text" (knows the exact class, which only the caption gives). An eval loss below the vision-only level can only
come from reading the caption. Commands (each prints what it measured; runs go under ``--out``, default
``/tmp/l4v``)::

    export PATH=/work/venv/bin:$PATH
    python scripts/investigate_lang4vis.py oracle                     # the three levels, bits and nats (~20 s)
    python scripts/investigate_lang4vis.py train uniter --steps 1500  # demo recipe, eval every 100 steps
    python scripts/investigate_lang4vis.py train lxmert --steps 1500
    python scripts/investigate_lang4vis.py train vilbert --steps 1500
    python scripts/investigate_lang4vis.py train lxmert --steps 1500 --seeds 0,1   # 4 members: kl/xe x seeds
    python scripts/investigate_lang4vis.py train lxmert --steps 1500 --single xent # pretrain:lxmert,xent,tiny
    python scripts/investigate_lang4vis.py curves /tmp/l4v/lxmert_1500 ...         # eval curves vs the levels
    python scripts/investigate_lang4vis.py ablate /tmp/l4v/lxmert_1500 ...         # lang4vis/vis4lang verdicts

``train`` runs ``jaxvl pretrain --config pretrain:MODEL,tiny,sweep=objectives`` with the demo's world and
overrides (``jaxvl.demo.WORLD`` / ``DEMO_OBJECTIVE``), ``eval_every=100`` and 3 eval batches (96 held-out
pairs); ``--seeds`` replaces the sweep by MRC-KL and MRC-XE members per seed; ``--single kl|xent`` trains one
non-sweep run. ``ablate`` runs ``jaxvl ablate --config ablate:tiny`` on every member (or single run) of the
given workdirs at IoT 0.5 only, no attention analyses, and prints the verdict table.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np

LOG2 = math.log(2)


def demo_overrides(data_dir: str, steps: int) -> list[str]:
    from jaxvl.demo import DEMO_OBJECTIVE, WORLD

    return [f"--config.data.dataset={WORLD}", f"--config.data.prepare_dir={data_dir}", f"--config.steps={steps}",
            f"--config.checkpoint.every={steps}", "--config.eval_every=100", "--config.eval_batches=3",
            "--config.fast_compile=True", "--config.progress=False",
            *(f"--config.{kv}" for kv in DEMO_OBJECTIVE)]


# ------------------------------------------------------------------------------------------------ oracle


def oracle(num_images: int = 6000) -> dict[str, dict[str, float]]:
    """Loss levels (nats, mean over every region as the eval's uniform region masking sees them, and over
    object regions only, as the ablation's phrase region sees them) of predictors fit on half of
    ``num_images`` images of the demo's world and scored on the other half."""
    from jaxvl.data.synthetic import World
    from jaxvl.demo import world_config

    wc = dataclasses.replace(world_config(), num_images=num_images)
    world = World(wc)
    probs, label, ids, conf = [], [], [], []
    for img in world:
        for r in range(wc.num_regions):
            src = img.region_objects[r]
            probs.append(img.regions.cls_prob[r])
            ids.append(img.regions.objects_id[r])
            conf.append(img.regions.objects_conf[r])
            label.append(img.objects[src].label if src >= 0 else -1)
    p, label = np.asarray(probs, np.float64), np.asarray(label)
    ids, conf = np.asarray(ids), np.asarray(conf, np.float64)
    obj = label >= 0
    train = np.arange(len(p)) < len(p) // 2
    test = ~train
    pair = np.where(obj, world.prototype_of[np.maximum(label, 0)], -1)
    keys = {"chance": np.zeros(len(p), int), "object vs clutter": obj.astype(int),
            "vision only (class pair)": pair, "vision + text (exact class)": label}
    print(f"{len(p)} regions, {obj.mean():.1%} of them an object's (the rest clutter with random detector "
          f"distributions); object regions: gold class is the detector's argmax {np.mean(ids[obj] == label[obj]):.0%}, "
          f"mean top probability {p[obj].max(1).mean():.3f}, entropy of the target {_entropy(p[obj]):.3f} bits")
    out = {}
    for kind in ("mrc_kl", "mrc_xe"):
        out[kind] = {}
        for name, key in keys.items():
            loss = np.zeros(test.sum())
            for k in np.unique(key):
                fit, score = train & (key == k), (key[test] == k)
                if kind == "mrc_kl":
                    q = p[fit].mean(0)
                    pt = p[test][score]
                    loss[score] = np.sum(np.where(pt > 0, pt * (np.log(np.where(pt > 0, pt, 1)) - np.log(q)), 0), -1)
                else:
                    q = np.bincount(ids[fit], weights=conf[fit], minlength=wc.num_classes) + 1e-12
                    q /= q.sum()
                    loss[score] = -conf[test][score] * np.log(q[ids[test][score]])
            out[kind][name] = dict(all=loss.mean(), object=loss[obj[test]].mean())
        print(f"\n{kind}: level | all regions: nats (bits) | object regions only: nats (bits)")
        for name, v in out[kind].items():
            a, o = v["all"], v["object"]
            print(f"  {name:28s} | {a:.4f} ({a / LOG2:.3f}) | {o:.4f} ({o / LOG2:.3f})")
    return out


def _entropy(p: np.ndarray) -> float:
    return float(np.mean(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)) / LOG2)


# ------------------------------------------------------------------------------------------------- train


def train(model: str, steps: int, out: str, seeds: str = "", single: str = "", tag: str = "") -> str:
    data_dir = os.path.join(out, "data")
    if single:
        arg = f"{model},xent,tiny" if single == "xent" else f"{model},tiny"
        name = f"{model}_{single}_single_{steps}"
    else:
        arg = f"{model},tiny,sweep=objectives"
        name = f"{model}_{steps}" + (f"_seeds{seeds.replace(',', '-')}" if seeds else "")
    workdir = os.path.join(out, name + tag)
    cmd = ["jaxvl", "pretrain", "--config", f"pretrain:{arg}", "--workdir", workdir, *demo_overrides(data_dir, steps)]
    if seeds:
        members = [dict(name=f"{obj}-s{s}", seed=int(s), mrc_kl_weight=float(obj == "mrc-kl"),
                        mrc_xe_weight=float(obj == "mrc-xe")) for s in seeds.split(",") for obj in ("mrc-kl", "mrc-xe")]
        cmd.append(f"--config.sweep={members!r}")
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return workdir


# ------------------------------------------------------------------------------------------------ curves


def curves(workdirs: list[str]) -> None:
    """Eval curves (nats) of each member's trained region loss next to the chance level of learned.json."""
    for wd in workdirs:
        rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
        evals = [r for r in rows if r.get("split") == "eval"]
        learned = {}
        path = os.path.join(wd, "learned.json")
        if os.path.exists(path):
            learned = json.load(open(path))
        members = sorted({r.get("member", "") for r in evals}, key=[r.get("member", "") for r in evals].index)
        print(f"\n## {wd}")
        print(json.dumps(learned)[:2000])
        for m in members:
            mine = [r for r in evals if r.get("member", "") == m]
            key = "mrc_xe" if ("xe" in m or ("mrc_xe" in mine[0] and "mrc_kl" not in mine[0])) else "mrc_kl"
            curve = " ".join(f"{r['step']}:{r[key]:.3f}" for r in mine)
            print(f"{m or 'single'} {key}: {curve}")
            print(f"{m or 'single'} mlm:    " + " ".join(f"{r['step']}:{r['mlm']:.3f}" for r in mine))


# ------------------------------------------------------------------------------------------------ ablate


def ablate(workdirs: list[str], out: str) -> None:
    from jaxvl.demo import WORLD

    checkpoints, names = [], []
    for wd in workdirs:
        members = sorted(glob.glob(os.path.join(wd, "members", "*")))
        for m in members or [wd]:
            checkpoints.append(m)
            names.append(f"{os.path.basename(wd)}-{os.path.basename(m)}" if members else os.path.basename(wd))
    report = os.path.join(out, "ablate_" + "+".join(os.path.basename(w) for w in workdirs))[:200]
    cmd = ["jaxvl", "ablate", "--config", "ablate:tiny", "--workdir", report,
           f"--config.checkpoints={','.join(checkpoints)}", f"--config.names={','.join(names)}",
           f"--config.data.dataset={WORLD}", f"--config.data.prepare_dir={os.path.join(out, 'data')}",
           "--config.fast_compile=True", "--config.progress=False", "--config.data.max_seq_length=12",
           "--config.data.batch_size=32", "--config.thresholds=(0.5,)", "--config.attention=False",
           "--config.member_batch_size=1"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/l4v")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("oracle")
    t = sub.add_parser("train")
    t.add_argument("model")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--seeds", default="")
    t.add_argument("--single", default="", choices=["", "kl", "xent"])
    t.add_argument("--tag", default="")
    c = sub.add_parser("curves")
    c.add_argument("workdirs", nargs="+")
    a = sub.add_parser("ablate")
    a.add_argument("workdirs", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "oracle":
        oracle()
    elif args.cmd == "train":
        train(args.model, args.steps, args.out, args.seeds, args.single, args.tag)
    elif args.cmd == "curves":
        curves(args.workdirs)
    else:
        ablate(args.workdirs, args.out)


if __name__ == "__main__":
    sys.exit(main())
