"""Test and benchmark problems with many parameters: sums of K Gaussian peaks on a unit
grid, each point seeing only the peaks of its three nearest cells (a gather), plus an
optional background of linear hat functions on `knots` knots (each point sees two), so
the cost per point does not grow with p = 3 K + knots."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.sparse

_WINDOW = np.array([-1, 0, 1])  # the cells whose peaks a point sees


def peaks_model(n_peaks: int, knots: int = 0, span: float | None = None):
    """model(p, x): p = (amplitude, centre, width) of each peak, then the knot values."""
    span = float(n_peaks) if span is None else span

    def model(p, x):
        peaks = p[: 3 * n_peaks].reshape(n_peaks, 3)
        cell = jnp.floor(x).astype(jnp.int32)
        index = cell[:, None] + _WINDOW[None, :]
        valid = (index >= 0) & (index < n_peaks)
        a, c, w = (peaks[jnp.clip(index, 0, n_peaks - 1), k] for k in range(3))
        f = jnp.sum(jnp.where(valid, a * jnp.exp(-0.5 * ((x[:, None] - c) / w) ** 2), 0), 1)
        if knots == 0:
            return f
        return f + jnp.interp(x, jnp.linspace(0.0, span, knots), p[3 * n_peaks:])

    return model


def peaks_problem(n_peaks: int, points_per_cell: int, knots: int = 0, seed: int = 0,
                  noise: float = 0.02):
    """(model, x, y, truth, p0): peaks near the cell centres, a start perturbed from the
    truth (amplitudes and widths by 10%, centres by 0.05), a smooth background."""
    rng = np.random.default_rng(seed)
    n = n_peaks * points_per_cell
    x = (np.arange(n) + 0.5) / points_per_cell
    truth = np.stack([rng.uniform(1, 3, n_peaks),
                      np.arange(n_peaks) + 0.5 + rng.uniform(-0.1, 0.1, n_peaks),
                      rng.uniform(0.15, 0.3, n_peaks)], 1)
    start = truth.copy()
    start[:, 0] *= 1 + 0.1 * rng.standard_normal(n_peaks)
    start[:, 1] += 0.05 * rng.standard_normal(n_peaks)
    start[:, 2] *= 1 + 0.1 * rng.standard_normal(n_peaks)
    grid = np.linspace(0.0, n_peaks, knots)
    background = 0.5 + 0.3 * np.sin(grid / 7.0)
    truth_flat = np.concatenate([truth.ravel(), background])
    p0 = np.concatenate([start.ravel(), np.full(knots, 0.5)])
    model = peaks_model(n_peaks, knots)
    y = np.asarray(model(jnp.asarray(truth_flat), jnp.asarray(x)))
    y = y + noise * rng.standard_normal(n)
    return model, x, y, truth_flat, p0


def jacobian_sparsity(x, n_peaks: int, knots: int) -> scipy.sparse.csr_matrix:
    """Which parameters each point's residual depends on (for scipy's grouped finite
    differences)."""
    rows, cols = [], []
    cell = np.floor(x).astype(int)
    for offset in _WINDOW:
        k = cell + offset
        ok = (k >= 0) & (k < n_peaks)
        for j in range(3):
            rows.append(np.flatnonzero(ok))
            cols.append(3 * k[ok] + j)
    if knots:
        step = n_peaks / (knots - 1)
        left = np.clip(np.floor(x / step).astype(int), 0, knots - 2)
        for j in (0, 1):
            rows.append(np.arange(x.size))
            cols.append(3 * n_peaks + left + j)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    shape = (x.size, 3 * n_peaks + knots)
    return scipy.sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=shape)
