"""``jaxvl demo``: the whole research loop on the embedded synthetic world, in minutes on a laptop CPU.

1. a synthetic world with planted cross-modal structure (captions name the image's objects: vision
   informs language; half the classes come in visually identical pairs told apart only by the
   caption: language informs vision), prepared once under ``<out>/data``;
2. a tiny single-stream model (UNITER) and a tiny dual-stream model (LXMERT), each pretrained as ONE
   compiled sweep of two members, MRC-KL and MRC-XE (``configs/pretrain.py:...,tiny,sweep=objectives``);
3. the full cross-modal input ablation of the four checkpoints (every condition and IoT threshold,
   one compiled sweep per model), the attention analyses, and the report: ``<out>/ablation/table.md``,
   ``results.csv``, per-example losses and PNG plots.

Every step has a progress bar; the table is printed at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jaxvl.configs import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WORLD = "synthetic:num_images=384,val_images=48,ambiguous_fraction=0.5"
MODELS = ("uniter", "lxmert")


def demo(out: str, steps: int = 300, fast_compile: bool = True, progress: bool = True) -> str:
    """Runs the demo (module doc) into ``out``; returns the ablation table (markdown)."""
    from jaxvl.ablation import ablate
    from jaxvl.train.pretrain import pretrain

    start = time.perf_counter()
    data_dir = os.path.join(out, "data")
    common = [f"data.dataset={WORLD!r}", f"data.prepare_dir={data_dir!r}", f"steps={steps}",
              f"checkpoint.every={steps}", f"eval_every={steps}", f"fast_compile={fast_compile}",
              f"progress={progress}", "optimizer.learning_rate=2e-3"]
    checkpoints, names = [], []
    for name in MODELS:
        print(f"\n== pretraining a tiny {name}: MRC-KL and MRC-XE members in one compiled sweep", flush=True)
        cfg = load_config(f"{CONFIGS / 'pretrain.py'}:{name},tiny,sweep=objectives", common)
        workdir = os.path.join(out, name)
        pretrain(cfg, workdir)
        for member in ("mrc-kl", "mrc-xe"):
            checkpoints.append(os.path.join(workdir, "members", member))
            names.append(f"{name}-{member}")
    print("\n== the cross-modal input ablation (every condition and IoT threshold, one sweep per model)", flush=True)
    cfg = load_config(f"{CONFIGS / 'ablate.py'}:tiny", [
        f"checkpoints={','.join(checkpoints)!r}", f"names={','.join(names)!r}", f"data.dataset={WORLD!r}",
        f"data.prepare_dir={data_dir!r}", f"fast_compile={fast_compile}", f"progress={progress}"])
    report = os.path.join(out, "ablation")
    table = ablate(cfg, report)
    print(f"\n== results (bits; bootstrap 95% intervals) after {time.perf_counter() - start:.0f} s\n\n{table}\n")
    print(f"report, per-example losses and plots: {report}")
    return table
