"""Bootstrap percentile intervals of means: one resampling scheme shared by the ablation's report, the probes and
the fine-tuning results (the same resamples for every statistic of a table, so their intervals are paired)."""

from __future__ import annotations

import numpy as np


def bootstrap_weights(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """float32 [n_boot, n]: how often each of n examples is drawn in each of ``n_boot`` resamples."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n >= 1 examples and n_boot >= 1 resamples; got {n}, {n_boot}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n * n_boot).reshape(n_boot, n).astype(np.float32)


def bootstrap_means(values: np.ndarray, mask: np.ndarray, weights: np.ndarray, level: float = 0.95,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of ``values`` [N, S] over ``mask`` [N, S] and their percentile intervals under ``weights``.

    Returns (mean, low, high), each [S]; NaN for a statistic without included examples. A resample that
    happens to draw none of a statistic's examples is left out of its percentiles.
    """
    values = np.where(mask, np.asarray(values, np.float64), 0.0)
    mask = np.asarray(mask, np.float64)
    count = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = values.sum(0) / count
        boot = (weights @ values) / (weights @ mask)  # [n_boot, S]
    tail = 100 * (1 - level) / 2
    low = np.full(values.shape[1], np.nan)
    high = np.full(values.shape[1], np.nan)
    for s in np.flatnonzero(count > 0):
        col = boot[:, s][np.isfinite(boot[:, s])]
        low[s], high[s] = np.percentile(col, [tail, 100 - tail])
    return mean, low, high


__all__ = ["bootstrap_means", "bootstrap_weights"]
