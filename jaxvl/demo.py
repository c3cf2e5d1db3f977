"""``jaxvl demo``: the whole research loop on the embedded synthetic world, in minutes on a laptop CPU.

1. a synthetic world with planted cross-modal structure, prepared once under ``<out>/data``: one object
   per image, named by the captions (vision informs language), its class in a pair of classes that
   share one visual prototype (only the caption tells them apart: language informs vision), and a
   detector that ranks the gold class first (a sharp region target);
2. a tiny single-stream model (UNITER) and a tiny dual-stream model (LXMERT), each pretrained as ONE
   compiled sweep of two members, MRC-KL and MRC-XE (``--config pretrain:MODEL,tiny,sweep=objectives``),
   with more masking than VOLTA's 15% and no ITM negatives (``DEMO_OBJECTIVE``) so that they learn the
   world in a few hundred steps;
3. the full cross-modal input ablation of the four checkpoints (every condition and IoT threshold,
   one compiled sweep per model), the attention analyses, and the report: ``<out>/ablation/table.md``,
   ``results.csv``, per-example losses and PNG plots.

Every step has a progress bar; the table is printed at the end. Ctrl-C stops it, saying where; the same
command resumes each pretraining run from its latest checkpoint.
"""

from __future__ import annotations

import os
import time

from jaxvl.configs import load_config

WORLD = ("synthetic:num_images=256,val_images=48,min_objects=1,max_objects=1,num_classes=12,num_regions=6,"
         "vision_to_language=1.0,ambiguous_fraction=1.0,detector_rank_probs=1/0/0/0/0,detector_temperature=0.5")
DEMO_OBJECTIVE = ["objective.objective=2", "objective.token_prob=0.4", "objective.region_prob=0.3",
                  "optimizer.learning_rate=3e-3", "optimizer.warmup_fraction=0.05", "data.batch_size=32",
                  "data.max_seq_length=12"]
MODELS = ("uniter", "lxmert")


def demo(out: str, steps: int = 600, fast_compile: bool = True, progress: bool = True) -> str:
    """Runs the demo (module doc) into ``out``; returns the ablation table (markdown)."""
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
    table = ablate(cfg, report)
    print(f"\n== results (bits; bootstrap 95% intervals) after {time.perf_counter() - start:.0f} s\n\n{table}\n")
    print(f"report, per-example losses and plots: {report}")
    return table
