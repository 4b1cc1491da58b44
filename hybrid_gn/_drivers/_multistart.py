"""Multi-start inside jit: a tournament of warmup rounds, then Gauss-Newton on the survivors.

Candidates (Sobol', Halton, Latin hypercube or uniform points from a PRNG key,
p0 always among them) each get a short L-BFGS warmup on a strided subset of
the data; the best `keep` fraction survives to the next round, on a subset
twice as large. Gauss-Newton then runs on every survivor over all the data,
and the lowest final cost wins. Every size is static, so the whole
tournament is one jitted function that also vmaps over problems.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .. import _pipeline as pipeline
from .. import sampling
from .._config import DEFAULT, Config
from .._data import Data
from .._group_weights import GroupWeights
from .._jit import jit
from .._model import Model
from .._phases import _warmup as warmup
from .._phases._start_fit import relative_loss
from .._result import Result
from .._validate import as_key, check_fit, check_type, weighted_sigma


class Tournament(eqx.Module):
    """Settings of the multi-start tournament of `fit_multistart`.

    Candidates (p0 among them) each get a short L-BFGS warmup on a strided
    subset of the data; the best `keep` fraction survives each round, and the
    next round works on a subset twice as large. Gauss-Newton then finishes
    every survivor over all the data. All fields are static: they fix array
    shapes, so changing one compiles a new program.

    Attributes:
        n_candidates: starting points, p0 included. Default: 64.
        rounds: warmup rounds, each ending in a cut. Default: 2.
        keep: fraction of the candidates kept after each round, in (0, 1].
            Default: 0.25.
        method: how candidates are drawn: "sobol", "halton", "lhs" or
            "random" (see `hybrid_gn.sampling.candidates`). Default: "sobol".
        iterations: L-BFGS iterations per round. Default: 10.
        box_scale: half-width of the box around p0, in units of
            max(|p0|, 1), where a parameter is not bounded on both sides.
            Default: 1.0.
        first_subset: data points in round 1; the subset doubles each round.
            Default: 256.

    Raises:
        ValueError: `n_candidates` or `iterations` below 1, `rounds` below 0,
            `keep` outside (0, 1], an unknown `method`, `first_subset` below
            1 or `box_scale` not positive.

    Examples:
        >>> import hybrid_gn
        >>> tournament = hybrid_gn.Tournament(n_candidates=32, rounds=2, keep=0.25)
        >>> tournament.survivors()  # alive at each round, then given to Gauss-Newton
        [32, 8, 2]
    """

    n_candidates: int = eqx.field(static=True, default=64)  # p0 included
    rounds: int = eqx.field(static=True, default=2)  # warmup rounds, each ending in a cut
    keep: float = eqx.field(static=True, default=0.25)  # fraction kept after each round
    method: sampling.Method = eqx.field(static=True, default="sobol")
    iterations: int = eqx.field(static=True, default=10)  # L-BFGS iterations per round
    box_scale: float = eqx.field(static=True, default=1.0)  # box around p0 where unbounded
    first_subset: int = eqx.field(static=True, default=256)  # points in round 1; doubles

    def __check_init__(self):
        if self.n_candidates < 1 or self.rounds < 0 or self.iterations < 1:
            raise ValueError("n_candidates and iterations must be >= 1, rounds >= 0")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {self.keep!r}")
        if self.method not in sampling.METHODS:
            raise ValueError(f"method must be one of {sampling.METHODS}, got {self.method!r}")
        if self.first_subset < 1 or not self.box_scale > 0:
            raise ValueError("first_subset must be >= 1 and box_scale > 0")

    def survivors(self) -> list[int]:
        """Candidates alive at the start of each round, then those given to Gauss-Newton."""
        alive = [self.n_candidates]
        for _ in range(self.rounds):
            alive.append(max(1, math.ceil(alive[-1] * self.keep)))
        return alive


def fit_multistart(
    model: Model,
    p0: PyTree,
    x: PyTree,
    y,
    *,
    key: PRNGKeyArray,
    sigma=None,
    bounds=None,
    args: PyTree = None,
    mask=None,
    absolute_sigma: bool = False,
    check_finite: bool = True,
    config: Config | None = None,
    group_weights: GroupWeights | None = None,
    tournament: Tournament | None = None,
) -> Result:
    """Like `fit`, from the best of a tournament of starting points drawn with `key`.

    For models with several local minima (periodic models, sums of peaks),
    where a fit from one guess can stop in the wrong basin. Candidates fill
    the box of `hybrid_gn.sampling.candidate_box`: the bounds where both are
    finite, else p0 +- box_scale * max(|p0|, 1). They get short L-BFGS
    warmups on growing subsets of the data, the best fraction survives each
    round (see `Tournament`), Gauss-Newton finishes the survivors and the
    lowest cost wins. Every size is static, so the whole tournament is one
    jitted function that also vmaps over problems.

    Args:
        model: as in `fit`.
        p0: the starting point, always among the candidates.
        x: as in `fit`.
        y: as in `fit`.
        key: a JAX random key (`jax.random.key(seed)`) or an int seed.
        sigma: as in `fit`.
        bounds: as in `fit`; where both bounds of a parameter are finite they
            are its sampling box.
        args: as in `fit`.
        mask: as in `fit`.
        absolute_sigma: as in `fit`.
        check_finite: as in `fit`.
        config: as in `fit`.
        group_weights: as in `fit`.
        tournament: the tournament's settings (`Tournament()` when None).

    Returns:
        The `Result` of the survivor with the lowest cost (its params
        differentiable like `fit`'s).

    Raises:
        ValueError: bad input, as in `fit`.
        TypeError: as in `fit`; also a `tournament` that is not a
            `Tournament` or a `key` that is neither a key nor an int.

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def model(p, x):
        ...     return jnp.sin(p[0] * x)
        >>> x = np.linspace(0.0, 10.0, 200)
        >>> y = np.sin(3.7 * x)
        >>> result = hybrid_gn.fit_multistart(
        ...     model, jnp.array([1.0]), x, y, key=0, bounds=([0.5], [6.0]),
        ...     tournament=hybrid_gn.Tournament(n_candidates=8, rounds=1))
        >>> print(bool(result.success), np.round(result.params, 3))
        True [3.7]
    """
    config = DEFAULT if config is None else config
    sigma = weighted_sigma(group_weights, x, y, sigma)
    tournament = Tournament() if tournament is None else tournament
    check_type("tournament", tournament, Tournament, "hybrid_gn.Tournament")
    inputs = check_fit(model, p0, x, y, sigma, bounds, check_finite, config, args, mask)
    return _jitted(*inputs, absolute_sigma, config, tournament, as_key(key))


@jit
def _jitted(model, p0, x, y, sigma, bounds, args, mask, absolute_sigma, config: Config,
            tournament: Tournament, key) -> Result:
    setup, data = pipeline.prepare(model, p0, x, y, sigma, bounds, args, mask, config)
    problem = setup.problem
    theta0 = problem.norm.to_params(problem.u0)
    thetas = sampling.candidates(tournament.method, tournament.n_candidates, theta0,
                                 problem.lb, problem.ub, key=key,
                                 box_scale=tournament.box_scale)
    u = jnp.clip(problem.norm.to_normalized(thetas), problem.lower, problem.upper)
    u = _tournament(setup, data, u, tournament)

    gauss_newton_only = eqx.tree_at(lambda s: s.config, setup,
                                    dataclasses.replace(setup.config, warmup=False))
    states = jax.vmap(lambda u0: pipeline.run(gauss_newton_only, data, u0))(u)
    cost = states.gauss_newton.model.cost
    finite = jnp.isfinite(cost)
    winner = jnp.argmin(jnp.where(finite, cost, jnp.inf))
    state = jax.tree.map(lambda a: a[winner], states)
    # no candidate with a finite cost: the failed result holds the start, as `fit`'s does
    state = eqx.tree_at(lambda s: s.gauss_newton.u, state,
                        jnp.where(jnp.any(finite), state.gauss_newton.u, problem.u0))
    return pipeline.finish(setup, state, data, (x, y, sigma, args), mask, absolute_sigma)


def _tournament(setup: pipeline.Setup, data: Data, u: Float[Array, "c p"],
                tournament: Tournament) -> Float[Array, "s p"]:
    """The survivors of the warmup rounds: each round warms every candidate up on a
    strided subset (twice as large as the last) and keeps the best `keep` fraction."""
    alive = tournament.survivors()
    config = dataclasses.replace(setup.config, warmup=True,
                                 warmup_max_iter=tournament.iterations)
    for r in range(tournament.rounds):
        sample = data.subsample(min(data.n, tournament.first_subset * 2**r))
        best_u, best_loss = jax.vmap(lambda u0, sample=sample: _warmup(setup, u0, sample,
                                                                          config))(u)
        score = jnp.where(jnp.isfinite(best_loss), best_loss, jnp.inf)
        _, order = jax.lax.top_k(-score, alive[r + 1])
        u = best_u[order]
    return u


def _warmup(setup: pipeline.Setup, u0, sample: Data, config: Config
            ) -> tuple[Float[Array, " p"], Float[Array, ""]]:
    """One candidate's round: the guarded L-BFGS warmup on `sample`; its best point and loss."""
    lower, upper = setup.problem.lower, setup.problem.upper
    loss = pipeline.warmup_loss(setup, sample)
    state = warmup.init(u0, loss, relative_loss(setup.residual, u0, sample), config)
    state = jax.lax.while_loop(lambda s: s.running,
                               lambda s: warmup.update(s, loss, lower, upper, config), state)
    return state.best_u, state.best_loss
