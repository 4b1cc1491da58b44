"""How well the model at a point explains the data: phase 0's view of the start.

Two numbers from one pass over a sample: the weighted RSS over the total sum
of squares (1 - R^2) and the same after the best affine correction of the
prediction (1 - corr(f, y)^2). The warmup picks its first-step regime from
the first; Gauss-Newton's first radius is small when either says the start
is poor (`poor_start`, see `_gauss_newton`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._config import Config
from .._data import Data
from . import _accumulate as accumulate
from ._accumulate import ResidualFn


def total_cost(data: Data) -> Float[Array, ""]:
    """Half the weighted total sum of squares of `y`: the cost of its weighted mean."""
    w2 = data.weight**2
    y_mean = jnp.sum(w2 * data.y) / jnp.sum(w2)
    return 0.5 * jnp.sum(w2 * (data.y - y_mean) ** 2)


def relative(cost, total) -> Float[Array, ""]:
    """`cost` over `total` (`total_cost`); inf for a cost above a zero total."""
    return jnp.where(total > 0, cost / jnp.where(total > 0, total, 1),
                     jnp.where(cost > 0, jnp.inf, 0))


def relative_loss(residual: ResidualFn, u, data: Data) -> Float[Array, ""]:
    """Weighted RSS at `u` over the weighted total sum of squares of `y`."""
    return relative(accumulate.cost(residual, u, data), total_cost(data))


class StartFit(NamedTuple):
    """How well the model at a point explains the data (weighted)."""

    relative: Float[Array, ""]  # RSS over the total sum of squares: 1 - R^2
    shape: Float[Array, ""]  # 1 - corr(f, y)^2: the same after the best a * f + b


def start_fit(residual: ResidualFn, u, data: Data) -> StartFit:
    """`StartFit` of the prediction f at `u`, in one pass over `data`.

    The shape measure ignores what a Gauss-Newton step corrects exactly (the
    scale and offset of f) and sees what it does not (where the peaks are,
    how fast things decay). With r = w (f - y) and d = w (y - ybar), the
    deviations of f from ybar are a = r + d (weighted), so everything is sums
    over chunks of r, a and d; f is taken about ybar, which keeps the sums
    well conditioned unless f is far off (and then `relative` is large).
    """
    w2 = data.weight**2
    y_mean = jnp.sum(w2 * data.y) / jnp.sum(w2)

    def one_chunk(i):
        x, y, w = data.chunk(i)
        r = residual(u, x, y, w)
        d = w * (y - y_mean)
        a = r + d
        pairs = ((w, w), (w, a), (w, d), (a, a), (d, d), (a, d), (r, r))
        return jnp.stack([jnp.sum(left * right) for left, right in pairs])

    w2_sum, a_sum, d_sum, aa, dd, ad, rr = accumulate.sum_over_chunks(one_chunk, data.n_chunks)
    var_f = aa - a_sum**2 / w2_sum
    var_y = dd - d_sum**2 / w2_sum
    cov = ad - a_sum * d_sum / w2_sum
    both = (var_f > 0) & (var_y > 0)
    shape = jnp.where(both, 1 - cov**2 / jnp.where(both, var_f * var_y, 1), 1)
    return StartFit(relative(0.5 * rr, 0.5 * dd), jnp.clip(shape, 0, 1))


def poor_start(fit: StartFit, config: Config):
    """Whether Gauss-Newton starts with `poor_start_radius` (see _phases/_gauss_newton.py)."""
    return (fit.shape > config.poor_shape_threshold) | (
        fit.relative > config.poor_loss_threshold)
