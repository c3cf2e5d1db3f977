"""The plots say what they show (issue 13, section 1): error bars named, legends outside the data, MRC-XE for
MRC-XE members, the threshold plot's count of examples without an aligned region, attention sub-layers labelled
with their kind, colour bars labelled, heads numbered from 1 everywhere. Hand-made results and rows: nothing runs
a model. The PNGs go to ``tmp_path`` (``JAXVL_PLOTS_13=<dir>`` keeps them there for a look)."""

import os
from pathlib import Path

import numpy as np
import pytest

from jaxvl.ablation.attention import ENTROPY_LABEL, KINDS, _rows, plot_attention, query_kind
from jaxvl.ablation.report import UNALIGNED_LABEL, plot_conditions, plot_thresholds, tidy_rows, unaligned_counts
from jaxvl.ablation.sweep import AblationResult, AblationSpec
from jaxvl.caption.attention_report import FAMILIES, GROUNDING_LABEL, write_report
from jaxvl.caption.attention_report import tidy_rows as caption_rows
from jaxvl.models import get_config

N = 30
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
# example i's best region overlaps its phrase's box at IoT BEST[i]: it loses its aligned region once t >= BEST[i]
BEST = np.linspace(0.05, 0.95, N)
UNTRAINED = {"kl": {"mrc_xe"}, "xe": {"mrc_kl"}}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    keep = os.environ.get("JAXVL_PLOTS_13")
    return Path(keep) if keep else tmp_path


def threshold_result() -> AblationResult:
    """Two models ("kl" trained MRC-KL, "xe" MRC-XE) at five IoT thresholds; the loss of a lang4vis member rises
    with its threshold, and example i has a region aligned at IoT > t while t < ``BEST[i]``."""
    spec = AblationSpec(4, thresholds=THRESHOLDS, control_threshold=0.5)
    members = {t: spec.members(t) for t in ("vis4lang", "lang4vis")}
    rng = np.random.default_rng(0)

    def values(task: str) -> np.ndarray:  # [K, M, N]
        return np.stack([np.stack([5.0 + k + (m.threshold or 0.0) + (m.condition != "none") * 0.5
                                   + rng.normal(0, 0.2, N) for m in members[task]]) for k in range(2)])

    has = np.stack([BEST > (m.threshold or 0.0) for m in members["lang4vis"]])
    m_v, m_l = len(members["vis4lang"]), len(members["lang4vis"])
    stats = {"phrase_tokens": np.full(N, 2), "vis4lang_ablated": np.ones((m_v, N), int),
             "num_aligned": has.astype(int), "has_target": has, "target_index": np.ones((m_l, N), int),
             "text_masked": np.full((m_l, N), 2)}
    out = {"vis4lang": {"mlm": values("vis4lang")}, "lang4vis": {m: values("lang4vis") for m in ("mrc_kl", "mrc_xe")}}
    return AblationResult(("kl", "xe"), members, np.arange(N), out, stats, spec.quirks)


def texts(fig) -> list[str]:
    """Every text the figure draws: titles, axis labels, tick labels, legends, colour-bar labels, notes."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_unaligned_counts_come_from_the_rows():
    rows = tidy_rows(threshold_result(), n_boot=50, untrained=UNTRAINED)
    counts = unaligned_counts(rows)
    want = [(t, int((BEST <= t).sum())) for t in THRESHOLDS]
    assert counts == {"all models": want}
    assert want[0][1] < want[-1][1]  # examples lose their aligned region as t rises


def test_threshold_plot_marks_the_examples_without_an_aligned_region(out):
    rows = tidy_rows(threshold_result(), n_boot=50, untrained=UNTRAINED)
    fig = plot_thresholds(rows, out / "thresholds.png", ("mrc_kl", "mrc_xe"))
    assert (out / "thresholds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top, strips = fig.axes[:2], fig.axes[2:]
    assert len(strips) == 2 and all(ax.get_ylabel() == UNALIGNED_LABEL for ax in strips)
    want = [int((BEST <= t).sum()) for t in THRESHOLDS]
    for ax in strips:
        line = ax.get_lines()[0]
        assert list(line.get_xdata()) == list(THRESHOLDS) and list(line.get_ydata()) == want
        assert ax.get_xlabel() == "IoT threshold t"
    # the error bars are named, the MRC-XE member is drawn on MRC-XE only, the legends sit under the strips
    assert all("95% bootstrap" in ax.get_ylabel() for ax in top)
    labels = texts(fig)
    assert "xe MRC-XE phrase" in labels and "kl MRC-KL phrase" in labels
    assert "xe MRC-KL phrase" not in labels and "kl MRC-XE phrase" not in labels
    assert all(ax.get_legend() is None for ax in top) and all(ax.get_legend() is not None for ax in strips)


def test_threshold_plot_without_lang4vis_rows_has_no_strip(out):
    rows = [r for r in tidy_rows(threshold_result(), n_boot=50, untrained=UNTRAINED) if r["task"] == "vis4lang"]
    fig = plot_thresholds(rows, out / "thresholds_vis4lang.png")
    assert len(fig.axes) == 2 and UNALIGNED_LABEL not in texts(fig) and "no lang4vis results" in texts(fig)


def test_condition_plot_names_its_error_bars_and_keeps_legends_off_the_data(out):
    rows = tidy_rows(threshold_result(), n_boot=50, untrained=UNTRAINED)
    fig = plot_conditions(rows, out / "conditions.png", 0.5, ("mrc_kl", "mrc_xe"))
    for ax in fig.axes:
        assert "95% bootstrap" in ax.get_ylabel()
        legend = ax.get_legend()
        assert legend is not None and legend.get_bbox_to_anchor().y1 < ax.get_window_extent().y0


@pytest.mark.parametrize("name, want", [
    ("uniter", {("text", "joint"), ("vision", "joint")}),
    ("lxmert", {("text", "text"), ("vision", "vision"), ("text", "cross"), ("vision", "cross")}),
    ("vilbert", {("text", "text"), ("vision", "vision"), ("text", "cross"), ("vision", "cross")}),
])
def test_query_kind_follows_the_plan(name, want):
    cfg = get_config(name, tiny=True)
    got = {(stream, query_kind(spec, stream)) for spec in cfg.sublayers if spec.kind == "attn"
           for stream, used in (("text", spec.has_text), ("vision", spec.has_vision)) if used}
    assert got == want and {k for _, k in got} <= set(KINDS)


def synthetic_rows(name: str, models: tuple[str, ...] = ("a", "b"), heads: int = 4) -> list[dict]:
    """``attention_rows``' rows for the plan of tiny ``name``, from made-up sums (``_rows``, as the sweep's)."""
    cfg = get_config(name, tiny=True)
    rng = np.random.default_rng(1)
    k = len(models)
    totals = {}
    for n, spec in enumerate(cfg.sublayers):
        if spec.kind != "attn":
            continue
        stats = {}
        if spec.has_text:
            stats.update(t_entropy=rng.uniform(0, 10, (k, heads)), t_queries=np.full(k, 10.0))
        if spec.tv:
            stats.update(aligned_share=rng.uniform(0, 5, (k, heads)), chance_share=np.full((k, heads), 1.0),
                         vision_mass=np.full((k, heads), 5.0), phrase_queries=np.full(k, 5.0))
        if spec.has_vision:
            stats.update(v_entropy=rng.uniform(0, 10, (k, heads)), v_queries=np.full(k, 10.0))
        totals[str(n)] = stats
    return _rows(models, totals, 0.5, cfg.sublayers)


def test_attention_rows_carry_the_kind_and_number_heads_from_1():
    rows = synthetic_rows("lxmert", heads=3)
    assert {r["head"] for r in rows} == {1, 2, 3}
    cfg = get_config("lxmert", tiny=True)
    for r in rows:
        assert r["kind"] == query_kind(cfg.sublayers[r["sublayer"]], r["stream"])


@pytest.mark.parametrize("name", ["uniter", "lxmert"])
def test_attention_plot_labels_kinds_colour_bars_and_heads(out, name):
    rows = synthetic_rows(name)
    fig = plot_attention(rows, out / f"attention_{name}.png")
    assert (out / f"attention_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heat = [ax for ax in fig.axes if ax.get_images()]
    assert len(heat) == 4  # two models x (text, vision)
    for ax in heat:
        ticks = [t.get_text() for t in ax.get_yticklabels()]
        want = {f"{r['sublayer']} {r['kind']}" for r in rows if r["stream"] in ax.get_title()}
        assert set(ticks) == want
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4"] and ax.get_xlabel() == "head"
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 4 and all(ax.get_ylabel() == ENTROPY_LABEL for ax in bars)
    shares = [ax for ax in fig.axes if "aligned regions" in ax.get_title()]
    assert shares and all("share of the phrase's attention" in ax.get_ylabel() for ax in shares)
    assert any("Heads numbered from 1" in t for t in texts(fig))


def test_attention_plot_reads_rows_without_a_kind(out):
    """Rows written before the kind was recorded still plot, sub-layers labelled by their index."""
    rows = [dict(r, kind=None) for r in synthetic_rows("uniter", models=("a",))]
    fig = plot_attention(rows, out / "attention_nokind.png")
    ticks = {t.get_text() for ax in fig.axes if ax.get_images() for t in ax.get_yticklabels()}
    assert ticks == {str(r["sublayer"]) for r in rows}


def caption_results(layers: int = 3, heads: int = 4) -> dict:
    """``jaxvl.caption.attention.analyze``'s result, made up."""
    rng = np.random.default_rng(2)
    grid = lambda: rng.uniform(0, 1, (layers, heads))  # noqa: E731
    results = {"entropy": {f: grid() for f in FAMILIES}, "queries": {f: 100 for f in FAMILIES},
               "grounding": grid(), "grounding_chance": 0.2, "phrase_tokens": 40,
               "spearman": {"proximity": grid() - 0.5, "label": grid() - 0.5},
               "pairs": {"proximity": 500, "label": 500},
               "images": 5, "captions": 25, "align": "predict", "notes": ["made up"]}
    results["grounding"][0, 1] = np.nan
    results["rows"] = caption_rows(results)
    return results


def test_caption_attention_plots_label_kinds_colour_bar_and_heads(out, monkeypatch):
    from matplotlib.figure import Figure

    made: list[Figure] = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: made.append(self) or real_savefig(self, *a, **k))
    paths = write_report(caption_results(), out / "caption")
    entropy, grounding, correlations = made
    for name in ("entropy", "grounding", "correlations"):
        assert Path(paths[name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [ax.get_title() for ax in entropy.axes]
    assert [t.split(":")[1].split()[0] for t in titles] == ["vision", "text", "cross"]
    assert {f"head {h}" for h in range(1, 5)} <= set(texts(entropy))
    assert "cross" in grounding.axes[0].get_title()
    assert [t.get_text() for t in grounding.axes[0].get_xticklabels()] == ["1", "2", "3", "4"]
    assert grounding.axes[1].get_ylabel() == GROUNDING_LABEL
    assert "vision" in correlations._suptitle.get_text()
    rows = caption_rows(caption_results())
    assert {r["head"] for r in rows if r["head"] is not None} == {1, 2, 3, 4}
