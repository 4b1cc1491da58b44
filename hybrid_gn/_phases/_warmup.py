"""Phase 1: L-BFGS warmup (optax) on a data subsample, with four defenses.

1. warm-start skip: no warmup when the relative loss is already small;
2. adaptive first step: the first update's norm is capped according to the
   start's relative loss (refine / careful / explore);
3. cost-increase guard: abort and keep the best point when the loss grows
   past (1 + cost_increase_tol) * initial loss, or turns NaN/Inf;
4. update clipping: every update's norm is capped at `max_update_norm`.

It hands over on plateau, small gradient or iteration cap (the first two only
after `warmup_min_iter` iterations). The loss is the mean half squared
weighted residual over the subsample, in normalized coordinates.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree

from .._config import Config, warmup_pays_off
from .._result import WarmupMode, WarmupReason

LossFn = Callable[[Float[Array, " p"]], Float[Array, ""]]


class WarmupState(eqx.Module):
    u: Float[Array, " p"]
    loss: Float[Array, ""]
    grad: Float[Array, " p"]
    opt_state: PyTree
    best_u: Float[Array, " p"]
    best_loss: Float[Array, ""]
    initial_loss: Float[Array, ""]
    initial_grad_norm: Float[Array, ""]
    iteration: Int[Array, ""]
    no_progress: Int[Array, ""]
    mode: Int[Array, ""]
    reason: Int[Array, ""]  # WarmupReason; NOT_RUN while running

    @property
    def running(self):
        return self.reason == WarmupReason.NOT_RUN


def make_optimizer(config: Config) -> optax.GradientTransformationExtraArgs:
    """optax L-BFGS with the configured line search and optional gradient clipping."""
    if config.warmup_linesearch == "zoom":
        search = optax.scale_by_zoom_linesearch(
            max_linesearch_steps=config.warmup_linesearch_steps)
    else:
        search = optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=config.warmup_linesearch_steps, store_grad=True)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.lbfgs(memory_size=config.warmup_memory, linesearch=search),
    )


def init(u0, loss_fn: LossFn, relative_loss: Float[Array, ""], config: Config,
         n_points: int | None = None) -> WarmupState:
    """Evaluate the start, pick the first-step regime, decide whether to run at all.

    `n_points`, the size of the whole data, decides warmup="auto" (see
    `_config.warmup_pays_off`); None counts as large data.
    """
    loss, grad = jax.value_and_grad(loss_fn)(u0)
    mode = jnp.where(relative_loss < config.refine_threshold, WarmupMode.REFINE,
                     jnp.where(relative_loss > config.explore_threshold, WarmupMode.EXPLORE,
                               WarmupMode.CAREFUL))
    if not config.warmup:
        reason = jnp.asarray(WarmupReason.DISABLED)
    elif n_points is not None and not warmup_pays_off(config, n_points):
        reason = jnp.asarray(WarmupReason.SMALL_DATA)
    elif config.warmup_max_iter == 0:
        reason = jnp.asarray(WarmupReason.MAX_ITERATIONS)
    else:
        reason = jnp.where(
            ~(jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad))), WarmupReason.NONFINITE,
            jnp.where(relative_loss < config.warm_start_threshold, WarmupReason.WARM_START,
                      WarmupReason.NOT_RUN))
    return WarmupState(
        u=u0, loss=loss, grad=grad, opt_state=make_optimizer(config).init(u0),
        best_u=u0, best_loss=loss, initial_loss=loss,
        initial_grad_norm=jnp.linalg.norm(grad),
        iteration=jnp.asarray(0), no_progress=jnp.asarray(0),
        mode=mode.astype(jnp.int32), reason=reason.astype(jnp.int32))


def update(state: WarmupState, loss_fn: LossFn, lower, upper, config: Config) -> WarmupState:
    """One L-BFGS iteration with the defenses; sets `reason` when it hands over.

    The iterate is projected onto the box [lower, upper]; `loss_fn` is expected
    to project its argument too, so line-search trials outside the box are safe.
    """
    optimizer = make_optimizer(config)
    updates, opt_state = optimizer.update(
        state.grad, state.opt_state, state.u,
        value=state.loss, grad=state.grad, value_fn=loss_fn)

    first_cap = jnp.array([config.first_step_refine, config.first_step_careful,
                           config.first_step_explore], dtype=state.u.dtype)[state.mode]
    cap = jnp.where(state.iteration == 0, jnp.minimum(first_cap, config.max_update_norm),
                    config.max_update_norm)
    norm = jnp.linalg.norm(updates)
    clipped = norm > cap
    updates = updates * jnp.where(clipped, cap / norm, 1)
    u = jnp.clip(state.u + updates, lower, upper)
    moved_off_search = clipped | jnp.any(u != state.u + updates)

    def fresh():
        return jax.value_and_grad(loss_fn)(u)

    def from_search():
        return (optax.tree_utils.tree_get(opt_state, "value"),
                optax.tree_utils.tree_get(opt_state, "grad"))

    loss, grad = jax.lax.cond(moved_off_search, fresh, from_search)

    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad))
    better = finite & (loss < state.best_loss)
    best_u = jnp.where(better, u, state.best_u)
    best_loss = jnp.where(better, loss, state.best_loss)

    iteration = state.iteration + 1
    decrease = (state.loss - loss) / jnp.maximum(jnp.abs(state.loss), jnp.finfo(loss.dtype).tiny)
    no_progress = jnp.where(decrease < config.plateau_rtol, state.no_progress + 1, 0)
    settled = iteration >= config.warmup_min_iter
    small_grad = jnp.linalg.norm(grad) <= config.warmup_gtol * state.initial_grad_norm
    guard = loss > (1 + config.cost_increase_tol) * state.initial_loss

    reason = jnp.select(
        [~finite, guard, settled & small_grad, settled & (no_progress >= config.plateau_patience),
         iteration >= config.warmup_max_iter],
        [WarmupReason.NONFINITE, WarmupReason.COST_INCREASE, WarmupReason.SMALL_GRADIENT,
         WarmupReason.PLATEAU, WarmupReason.MAX_ITERATIONS],
        WarmupReason.NOT_RUN).astype(jnp.int32)

    return WarmupState(
        u=u, loss=loss, grad=grad, opt_state=opt_state, best_u=best_u, best_loss=best_loss,
        initial_loss=state.initial_loss, initial_grad_norm=state.initial_grad_norm,
        iteration=iteration, no_progress=no_progress, mode=state.mode, reason=reason)
