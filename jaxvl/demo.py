"""``jaxvl demo``: the whole research loop on the embedded synthetic world, in minutes on a laptop CPU.

1. a synthetic world with planted cross-modal structure, prepared once under ``<out>/data``: one object
   per image, named by the captions (vision informs language), its class in a pair of classes that
   share one visual prototype (only the caption tells them apart: language informs vision), and a
   detector that ranks the gold class first (a sharp region target);
2. a tiny single-stream model (UNITER) and a tiny dual-stream model (LXMERT), each pretrained as ONE
   compiled sweep of two members, MRC-KL and MRC-XE (``--config pretrain:MODEL,tiny,sweep=objectives``),
   with more masking than VOLTA's 15% and no ITM negatives (``DEMO_OBJECTIVE``), 1500 steps: the text
   objective is learnt in a few hundred, the region heads leave their class prior only after ~300-700
   (``scripts/investigate_lang4vis.py``; README);
3. the full cross-modal input ablation of the four checkpoints (every condition and IoT threshold,
   one compiled sweep per model), the attention analyses, and the report: ``<out>/ablation/table.md``,
   ``results.csv``, per-example losses and PNG plots; each member read on the region head it trained.

At the end it prints what the world plants and what the ablation should therefore find (``planted``,
``expected_verdicts``), the mean losses, and a verdict per model and effect (its 95% interval, ``found`` /
``not found`` / ``opposite``, and whether that is the expected verdict); ``table.md`` starts with the same
text. Every step has a progress bar. Ctrl-C stops it, saying where; the same command resumes each
pretraining run from its latest checkpoint.
"""

from __future__ import annotations

import os
import textwrap
import time

from jaxvl.configs import load_config
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.synthetic.world import DEMO_WORLD

WORLD = DEMO_WORLD
DEMO_OBJECTIVE = ["objective.objective=2", "objective.token_prob=0.4", "objective.region_prob=0.3",
                  "optimizer.learning_rate=3e-3", "optimizer.warmup_fraction=0.05", "data.batch_size=32",
                  "data.max_seq_length=12"]
MODELS = ("uniter", "lxmert")
EFFECTS = {"vis4lang": ("object", "all"), "lang4vis": ("phrase", "all")}


def world_config(source: str = WORLD) -> WorldConfig:
    """The ``WorldConfig`` of a ``synthetic:key=value,...`` source string (default: the demo's world)."""
    from jaxvl.data.builders.synthetic import parse_knobs, synthetic_config

    return synthetic_config(**parse_knobs(source.partition(":")[2])).world


def _plants(world: WorldConfig) -> dict[str, bool]:
    """task -> whether the world plants the structure its effects measure: vis4lang, captions that name the
    image's objects; lang4vis, classes only such captions tell apart (pairs sharing a visual prototype)."""
    language = world.vision_to_language > 0
    return {"vis4lang": language, "lang4vis": language and bool(World(world).ambiguous.any())}


def expected_verdicts(world: WorldConfig) -> dict[tuple[str, str], str]:
    """(task, condition) -> the verdict the world's planted structure predicts for each effect (``EFFECTS``):
    ``found`` where the world plants what it measures (``_plants``), else ``not found``."""
    plants = _plants(world)
    return {(task, c): "found" if plants[task] else "not found" for task, conds in EFFECTS.items() for c in conds}


_EFFECT_TEXT = {
    "vis4lang": ("vis4lang object / all", "removing the phrase's region, or every region,",
                 "the MLM loss of the masked phrase"),
    "lang4vis": ("lang4vis phrase / all", "masking the phrase, or all text,",
                 "the region loss at the phrase's region (read on the head each member trained: MRC-KL members on "
                 "MRC-KL, MRC-XE members on MRC-XE)"),
}


def _bullet(text: str) -> str:
    """``text`` as a list item in lines of at most 120 characters."""
    return textwrap.fill(text, 120, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False)


def _vision_to_language(world: WorldConfig) -> str:
    p = world.vision_to_language
    if p == 0:
        what = "nothing: captions name random classes, whatever the image shows."
    elif p == 1:
        what = "every caption names the object of its image (class and attribute): the masked phrase can be read off " \
               "the object's region."
    else:
        what = f"a caption names an object of its image with probability {p:g}, else a random class."
    return _bullet(f"vision -> language (vision_to_language={p:g}): {what}")


def _language_to_vision(world: WorldConfig) -> str:
    pairs = int(World(world).ambiguous.sum()) // 2
    if pairs == 0:
        what = "nothing: every class has its own visual prototype."
    else:
        what = (f"{2 * pairs} of the {world.num_classes} classes come in {pairs} pairs that share one visual "
                "prototype; only the caption tells the two classes of a pair apart")
        what += "." if world.vision_to_language > 0 else ", but captions do not name the image's objects."
    return _bullet(f"language -> vision (ambiguous_fraction={world.ambiguous_fraction:g}): {what}")


def _objects(world: WorldConfig) -> str:
    if world.min_objects == world.max_objects:
        return "one object" if world.max_objects == 1 else f"{world.max_objects} objects"
    return f"{world.min_objects} to {world.max_objects} objects"


def _expectation(task: str, verdict: str) -> str:
    name, action, loss = _EFFECT_TEXT[task]
    change = "" if verdict == "found" else " no more than its control does"
    return _bullet(f"{name}: {action} should raise {loss}{change}: {verdict}.")


def planted(world: WorldConfig) -> str:
    """What ``world`` plants and what the ablation should find (``expected_verdicts``), in lines of at most 120
    characters: printed by the demo and written at the top of its ``table.md``."""
    expected = expected_verdicts(world)
    lines = [f"What the world plants ({world.num_images} training images of {_objects(world)} in "
             f"{world.num_regions} detected regions; {world.num_classes} classes):",
             _vision_to_language(world), _language_to_vision(world),
             _bullet(f"the detector ranks the true class first for {world.detector_rank_probs[0]:.0%} of the objects "
                     "(detector_rank_probs)."),
             "What the ablation should find, each effect read against its matched control:",
             *(_expectation(task, expected[task, conds[0]]) for task, conds in EFFECTS.items())]
    return "\n".join(lines) + "\n"


def demo(out: str, steps: int = 1500, fast_compile: bool = True, progress: bool = True) -> str:
    """Runs the demo (module doc) into ``out``; returns the ablation's console tables (markdown)."""
    from jaxvl.ablation import ablate
    from jaxvl.pretrain.trainer import pretrain

    start = time.perf_counter()
    data_dir = os.path.join(out, "data")
    common = [f"data.dataset={WORLD!r}", f"data.prepare_dir={data_dir!r}", f"steps={steps}",
              f"checkpoint.every={steps}", f"eval_every={steps}", f"fast_compile={fast_compile}",
              f"progress={progress}", *DEMO_OBJECTIVE]
    checkpoints, names = [], []
    for name in MODELS:
        print(f"\n== pretraining a tiny {name}: MRC-KL and MRC-XE members in one compiled sweep", flush=True)
        cfg = load_config(f"pretrain:{name},tiny,sweep=objectives", common)
        workdir = os.path.join(out, name)
        pretrain(cfg, workdir)
        for member in ("mrc-kl", "mrc-xe"):
            checkpoints.append(os.path.join(workdir, "members", member))
            names.append(f"{name}-{member}")
    print("\n== the cross-modal input ablation (every condition and IoT threshold, one sweep per model)", flush=True)
    cfg = load_config("ablate:tiny", [
        f"checkpoints={','.join(checkpoints)!r}", f"names={','.join(names)!r}", f"data.dataset={WORLD!r}",
        f"data.prepare_dir={data_dir!r}", f"fast_compile={fast_compile}", f"progress={progress}",
        "data.max_seq_length=12", "data.batch_size=32"])
    report = os.path.join(out, "ablation")
    world = world_config()
    story = planted(world)
    tables = ablate(cfg, report, expected=expected_verdicts(world), preface=story)
    print(f"\n== results after {time.perf_counter() - start:.0f} s\n\n{story}\n{tables}")
    print(f"report (table.md: every table with 95% intervals), per-example losses and plots: {report}")
    return tables
