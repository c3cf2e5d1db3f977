"""The decoding half of ``jaxvl bench caption``: captions per second of greedy and beam search, three ways.

- ``batched``: jaxvl's fixed-shape decoding (``jaxvl.caption.decoding.greedy`` / ``beam_search``) of a batch
  of B images, one compiled program per batch;
- ``per-image``: the same functions at batch 1 in a Python loop over images (the way ORT decodes with beam
  search), one compiled program called per image, waiting for each image's result before the next call;
- ``ort-style`` (``OrtStyleDecoder``): no key/value cache. The teacher-forced decoder re-runs over the whole
  prefix at every step and only the last position goes through the generator (``ort_next_log_probs``: ORT's
  ``get_logprobs_state``); each prefix length is its own compiled program. Greedy is batched over the
  images (ORT's ``_sample``); beam search encodes the batch once, then loops over the images (ORT's
  ``_sample_beam``) with jaxvl's beam bookkeeping in numpy on the host, so the captions must come out the same.

The ways are timed interleaved (``jaxvl.benchmarks.common.alternate``); every call ends with the best
captions on the host. ``jaxvl.benchmarks.caption`` documents the rows.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvl.benchmarks.caption_setup import (
    Arrays,
    aot,
    compiler_options,
    defaults,
    random_regions,
    timing,
)
from jaxvl.benchmarks.common import Probe, alternate, log
from jaxvl.caption.decoding import EOS, beam_search, greedy
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig

METHODS = ("greedy", "beam")
MODES = ("batched", "per-image", "ort-style")


def _best(out: Any) -> np.ndarray:
    """The best (first) caption of each image of a ``DecodeOutput``: [B, T] int."""
    return np.asarray(out.tokens)[:, 0]


def _length(tokens: np.ndarray) -> float:
    """Mean generated length of [N, T] caption rows (tokens through the first EOS; T without one)."""
    ended = tokens == EOS
    return float(np.where(ended.any(-1), ended.argmax(-1) + 1, tokens.shape[-1]).mean())


# ------------------------------------------------------------------------------------------ ORT-style


# ------------------------------------------------------------------------------------------ ORT-style


def ort_next_log_probs(module: Captioner, memory: jax.Array, mask: jax.Array, ys: jax.Array) -> jax.Array:
    """ORT's ``get_logprobs_state`` (a ``method=`` of ``Captioner.apply``): the teacher-forced decoder over the
    whole prefix ``ys`` [R, t] (BOS first; cross-attention keys and values projected from ``memory`` [R, N, d]
    again, as ORT's ``decode``; ORT's ``subsequent_mask`` alone), and the generator on the last position only
    -> next-token log-probs [R, V] float32."""
    return module.log_probs(module.decode_hidden(memory, mask, ys)[:, -1])


class OrtStyleDecoder:
    """No-cache decoding as ORT does it: a batched encoder, then one compiled full-prefix decoder program per
    prefix length (``ort_next_log_probs``), driven step by step from Python. ``compile(x, rows)`` first."""

    def __init__(self, model: Captioner, variables: dict[str, Any], max_len: int,
                 compiler_options: dict[str, Any] | None = None):
        self.model, self.variables, self.max_len, self.options = model, variables, max_len, compiler_options
        self.encode: Any = None
        self.steps: dict[int, Any] = {}

    def compile(self, x: Arrays, rows: int) -> float:
        """AOT-compiles the encoder for ``x``'s batch and the step programs for ``rows`` rows; returns seconds."""
        model, v = self.model, self.variables
        self.encode, seconds = aot(lambda v, f, b, m: model.apply(v, f, b, m, method="encode"), v, x["features"],
                                   x["boxes"], x["mask"], compiler_options=self.options)
        memory = jax.ShapeDtypeStruct((rows, x["features"].shape[1], model.cfg.d_model), jnp.float32)
        mask = jax.ShapeDtypeStruct((rows, x["features"].shape[1]), jnp.int32)
        for t in range(1, self.max_len + 1):
            ys = jax.ShapeDtypeStruct((rows, t), jnp.int32)
            self.steps[t], s = aot(lambda v, mem, m, y: model.apply(v, mem, m, y, method=ort_next_log_probs),
                                   v, memory, mask, ys, compiler_options=self.options)
            seconds += s
        return seconds

    def _next(self, memory: jax.Array, mask: jax.Array, ys: np.ndarray) -> np.ndarray:
        """Host log-probs [R, V] of the next token after prefixes ``ys`` [R, t], UNK blocked (-inf)."""
        lp = np.array(self.steps[ys.shape[1]](self.variables, memory, mask, jnp.asarray(ys)))
        lp[:, -1] = -np.inf
        return lp

    def greedy(self, x: Arrays) -> tuple[np.ndarray, int]:
        """ORT's ``_sample`` with ``sample_max=1``, all images at once: (tokens [B, T], steps run)."""
        memory = self.encode(self.variables, x["features"], x["boxes"], x["mask"])
        b = x["features"].shape[0]
        tokens = np.zeros((b, self.max_len), np.int32)
        done = np.zeros(b, bool)
        for t in range(self.max_len):
            ys = np.concatenate([np.zeros((b, 1), np.int32), tokens[:, :t]], 1)
            word = np.where(done, EOS, self._next(memory, x["mask"], ys).argmax(-1))
            tokens[:, t] = word
            done |= word == EOS
            if done.all():
                return tokens, t + 1
        return tokens, self.max_len

    def beam(self, x: Arrays, images: int, k: int) -> tuple[np.ndarray, list[int]]:
        """ORT's ``_sample_beam``: the encoder over the batch, then per image its memory tiled to ``k`` rows and
        beam search over full-prefix steps -> (best caption of each of the first ``images`` images [n, T],
        steps run per image)."""
        memory = self.encode(self.variables, x["features"], x["boxes"], x["mask"])
        best, steps = [], []
        for i in range(images):
            tokens, n = self._beam_one(jnp.repeat(memory[i:i + 1], k, 0), jnp.repeat(x["mask"][i:i + 1], k, 0), k)
            best.append(tokens)
            steps.append(n)
        return np.stack(best), steps

    def _beam_one(self, memory: jax.Array, mask: jax.Array, k: int) -> tuple[np.ndarray, int]:
        """jaxvl's beam algorithm (``jaxvl.caption.decoding`` module doc, length penalty 0) in numpy for one image."""
        t_max = self.max_len
        live = np.zeros((k, t_max), np.int32)
        live_lp = np.full(k, -np.inf, np.float32)
        live_lp[0] = 0.0
        fin = np.zeros((k, t_max), np.int32)
        fin_scores = np.full(k, -np.inf, np.float32)
        for t in range(t_max):
            ys = np.concatenate([np.zeros((k, 1), np.int32), live[:, :t]], 1)
            lp = self._next(memory, mask, ys)
            flat = (live_lp[:, None] + lp).ravel()
            top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
            top = top[np.lexsort((top, -flat[top]))]  # best first, lower index first on ties (lax.top_k)
            cand_lp, parent, word = flat[top], top // lp.shape[1], (top % lp.shape[1]).astype(np.int32)
            seqs = live[parent].copy()
            seqs[:, t] = word
            ends = (word == EOS) | (t == t_max - 1)
            new_scores = np.where(ends & (cand_lp > -np.inf), cand_lp, -np.inf).astype(np.float32)
            both = np.concatenate([fin_scores, new_scores])
            pick = np.argsort(-both, kind="stable")[:k]
            fin_scores, fin = both[pick], np.concatenate([fin, seqs])[pick]
            live, live_lp = seqs, np.where(ends, -np.inf, cand_lp).astype(np.float32)
            best_live = live_lp.max()
            if not (best_live > -np.inf and best_live >= fin_scores[-1]):
                return fin[0], t + 1
        return fin[0], t_max


# ------------------------------------------------------------------------------------------ decoding


# ------------------------------------------------------------------------------------------ decoding


def decode_fn(model: Captioner, method: str, k: int, max_len: int) -> Callable:
    """``(variables, features, boxes, mask) -> DecodeOutput`` through jaxvl's public decoding functions."""
    if method == "greedy":
        return lambda v, f, b, m: greedy(model, v, f, b, m, max_len=max_len)
    return lambda v, f, b, m: beam_search(model, v, f, b, m, beam_size=k, max_len=max_len)


def _decode_row(size: str, cfg: CaptionerConfig, method: str, k: int, mode: str, program_batch: int, images: int,
                compile_s: float, times: list[float], tokens: np.ndarray, steps: float, reference: np.ndarray | None,
                probe: dict[str, Any]) -> dict[str, Any]:
    """One decoding row: ``tokens`` [n, T] the best captions of the way's last call, ``reference`` [B, T] the
    batched ones (None for the batched row itself), ``probe`` the ``Probe`` figures of the timing."""
    timed = timing(times, images)
    row = {"size": size, "dtype": cfg.dtype, "method": method, "beam": k, "mode": mode, "program_batch": program_batch,
           "images_per_call": images, "compile_s": compile_s, "ms_per_call": timed["ms_per_call"],
           "runs_ms": timed["runs_ms"], "captions_per_s": timed["per_s"],
           "ms_per_caption": timed["ms_per_call"] / images, "decoder_steps": steps, "mean_length": _length(tokens),
           "same_as_batched": None if reference is None else float((tokens == reference[:len(tokens)]).all(-1).mean()),
           "batched_over_this": None, **probe}
    agree = "" if reference is None else f", same captions as batched {100 * row['same_as_batched']:.0f}%"
    log(f"  {method} {mode}: {row['captions_per_s']:.2f} captions/s ({row['ms_per_caption']:.2f} ms each), "
        f"compile {compile_s:.1f} s, {steps:g} steps{agree}")
    return row


def bench_decoding(size: str, model: Captioner, params: Any, args: argparse.Namespace, device: jax.Device,
                   result: dict[str, Any], save: Callable[[], None], methods: Sequence[str] = METHODS) -> None:
    """The decoding rows (module doc) of each of ``methods`` (greedy, beam) of ``model`` (``size``) with
    ``params``, appended to ``result['decode']`` as measured (``save()`` after each method)."""
    cfg = model.cfg
    d = defaults(size, device.platform != "cpu", args)
    log(f"{size} decoding: batch {d['batch']}, {d['loop_images']} images per loop, {args.dtype}, max_len "
        f"{args.max_len}, {d['warmup']} warm-up + {d['iters']} timed calls")
    variables = {"params": params}
    x = {k: jax.device_put(v, device) for k, v in random_regions(cfg, d["batch"], args.regions, args.seed).items()}
    ort = OrtStyleDecoder(model, variables, args.max_len, compiler_options(args))
    for method in methods:
        rows = bench_method(size, cfg, method, 1 if method == "greedy" else args.beam, model, variables, x,
                            None if args.no_ort_style else ort, args, d)
        for row in rows[1:]:
            row["batched_over_this"] = rows[0]["captions_per_s"] / row["captions_per_s"]
        result["decode"] += rows
        save()


def bench_method(size: str, cfg: CaptionerConfig, method: str, k: int, model: Captioner, variables: dict[str, Any],
                 x: Arrays, ort: OrtStyleDecoder | None, args: argparse.Namespace,
                 d: dict[str, int]) -> list[dict[str, Any]]:
    """The batched, per-image and (``ort`` given) ORT-style rows of one method on the batch ``x``.

    Every timed call ends with the best captions on the host. The ways are compiled first, then timed
    interleaved (one call of each per round, warm-up rounds first), so a change in the machine's load
    hits them alike and the ratios stay meaningful on a shared machine.
    """
    batch, n, warmup, iters = d["batch"], d["loop_images"], d["warmup"], d["iters"]
    fn = decode_fn(model, method, k, args.max_len)
    args_of = lambda a: (variables, a["features"], a["boxes"], a["mask"])  # noqa: E731
    singles = [{key: value[i:i + 1] for key, value in x.items()} for i in range(n)]
    batched, batched_s = aot(fn, *args_of(x), compiler_options=compiler_options(args))
    one, one_s = aot(fn, *args_of(singles[0]), compiler_options=compiler_options(args))

    def run_batched() -> tuple[np.ndarray, float]:
        out = batched(*args_of(x))
        return _best(out), float(out.steps)

    def run_per_image() -> tuple[np.ndarray, float]:
        best, steps = [], []
        for single in singles:  # each image's caption fetched before the next call, as ORT's loop
            out = one(*args_of(single))
            best.append(_best(out))
            steps.append(int(out.steps))
        return np.concatenate(best), float(np.mean(steps))

    # (mode, program batch, images per call, compile seconds, call)
    ways: list[tuple[str, int, int, float, Callable[[], tuple[np.ndarray, float]]]] = [
        ("batched", batch, batch, batched_s, run_batched), ("per-image", 1, n, one_s, run_per_image)]
    if ort is not None:
        rows_per_step = batch if method == "greedy" else k
        compile_s = ort.compile(x, rows_per_step)
        if method == "greedy":
            ways.append(("ort-style", rows_per_step, batch, compile_s, lambda: ort.greedy(x)))
        else:
            def run_ort_beam() -> tuple[np.ndarray, float]:
                tokens, steps = ort.beam(x, n, k)
                return tokens, float(np.mean(steps))

            ways.append(("ort-style", rows_per_step, n, compile_s, run_ort_beam))

    probe = Probe()
    times, outputs = alternate({way[0]: way[-1] for way in ways}, warmup, iters, sync=None)
    figures = probe.finish()
    reference = outputs["batched"][0]
    return [_decode_row(size, cfg, method, k, mode, program_batch, images, compile_s, times[mode], *outputs[mode],
                        None if mode == "batched" else reference, figures)
            for mode, program_batch, images, compile_s, _ in ways]
