"""The streaming driver's compiled calls: the pipeline's transitions, one program each.

Every call takes the `Setup` as an argument (its static parts compare by
value), so compiled programs are shared by every chunk, every pass and
every fit with the same model, shapes and static configuration (the
Gauss-Newton pieces get the setup `for_gauss_newton`). `fold`
accumulates one streamed block, cut into `config.chunk_size` sub-chunks as
in the in-memory drivers (cache-sized Jacobians), in one compiled scan.

A matrix-free fit (`Config.dense_max_params`) would need one pass per
conjugate-gradient iteration if its J^T J products came from the source.
Instead each step's subproblem is solved on the products of the in-memory
warmup sample, scaled by n / (its points) (`propose_matrix_free`); the
gradient, cost and diagonal that the step is judged by are the pass's
exact ones. So a step costs one pass, as on the dense path; the sample's
curvature makes the final convergence linear rather than quadratic (more,
cheaper iterations), and the answer equals `fit`'s to the tolerances.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import PyTree

from .. import _digest
from .. import _pipeline as pipeline
from .._config import Config
from .._data import Data
from .._jit import jit
from .._phases import _accumulate as accumulate
from .._phases import _matrix_free as matrix_free
from .._phases._gauss_newton import Proposal
from .._result import Result


def for_gauss_newton(setup: pipeline.Setup) -> pipeline.Setup:
    """The setup as the Gauss-Newton pieces read it: without the warmup sample and the size
    of the data (static), which they never use; their programs then serve every fit with
    the same block shape, whatever the size of its data."""
    return dataclasses.replace(setup, sample=None, n_points=0)


start = jit(pipeline.start)
warmup_step = jit(pipeline.warmup_step)
propose = jit(pipeline.propose)


@functools.partial(jit, static_argnames=("model", "n_points"))
def make_setup(model, p0: PyTree, bounds, model_args: PyTree, config: Config, sample: Data,
               n_points: int) -> pipeline.Setup:
    """Phase 0 on the in-memory warmup `sample` (`pipeline.make_setup`)."""
    dtype = jax.tree.leaves(p0)[0].dtype
    return pipeline.make_setup(model, p0, bounds, model_args, config, dtype, sample, n_points)


Accumulator = accumulate.Accumulator | matrix_free.GradientAccumulator


@jit
def propose_matrix_free(setup: pipeline.Setup, state: pipeline.PipelineState) -> Proposal:
    """`pipeline.propose` of a matrix-free fit on the sample's scaled products (see the
    module); `setup` with its sample and size (not `for_gauss_newton`)."""
    sample = setup.sample
    weight = setup.n_points / jnp.sum(sample.weight > 0)
    return pipeline.propose(setup, state, setup.gram_operator(state.gauss_newton.u, sample,
                                                              weight))


def empty_accumulator(setup: pipeline.Setup, p: int, dtype, use_qr: bool) -> Accumulator:
    """The accumulator a pass of this fit starts from."""
    if setup.matrix_free:
        return matrix_free.empty_accumulator(p, dtype)
    return accumulate.empty_accumulator(p, dtype, use_qr)


def _fold(setup: pipeline.Setup, u, acc: Accumulator, x, y, w) -> Accumulator:
    """`acc` with one streamed block (x, y, w) folded in, sub-chunk by sub-chunk."""
    data = Data(x, y, w, min(setup.config.chunk_size, y.shape[0]))
    if isinstance(acc, matrix_free.GradientAccumulator):
        return matrix_free.fold_data(setup.residual, u, acc, data, setup.loss)
    return accumulate.fold_data(setup.residual, u, acc, data, setup.config.jacobian, setup.loss)


fold = jit(_fold)


def _per_device(f, mesh: Mesh, axis: str, replicated: int, split: int, out_split: bool):
    """`f` under `shard_map`: its first `replicated` arguments whole on every device, the
    next `split` split over `axis`. The first split one is a per-device value stacked
    along a leading axis (one slot a device: an accumulator, a digest), which `f` sees
    without that axis, the others are the blocks; `f`'s value is stacked again
    (`out_split`) or the same on every device."""
    def local(*args):
        whole, parts = args[:replicated], args[replicated:]
        out = f(*whole, *(jax.tree.map(lambda a: a[0], parts[0]), *parts[1:]))
        return jax.tree.map(lambda a: a[None], out) if out_split else out

    spec = PartitionSpec(axis)
    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(),) * replicated + (
        spec,) * split, out_specs=spec if out_split else PartitionSpec(), check_vma=False)


@functools.partial(jit, static_argnames=("mesh", "axis"))
def fold_spread(setup: pipeline.Setup, u, acc: accumulate.Accumulator, x, y, w, mesh: Mesh,
                axis: str) -> accumulate.Accumulator:
    """Each device's accumulator (stacked over `axis`) with its block folded in."""
    return _per_device(_fold, mesh, axis, 2, 4, True)(setup, u, acc, x, y, w)


@functools.partial(jit, static_argnames=("mesh", "axis"))
def digest_spread(digest, starts, x, y, w, mesh: Mesh, axis: str):
    """Each device's data digest (stacked over `axis`) with its block added."""
    def add(digest, starts, x, y, w):
        return _digest.fold(digest, starts[0], x, y, w)

    return _per_device(add, mesh, axis, 0, 5, True)(digest, starts, x, y, w)


@functools.partial(jit, static_argnames=("mesh", "axis"))
def combine_spread(acc: accumulate.Accumulator, mesh: Mesh, axis: str
                   ) -> accumulate.Accumulator:
    """The devices' accumulators (stacked over `axis`) reduced to the whole pass's, on
    every device (`accumulate.combine`: nothing data-sized crosses devices)."""
    return _per_device(lambda acc: accumulate.combine(acc, axis), mesh, axis, 0, 1, False)(acc)


@jit
def sum_digests(digest):
    """The devices' digests (stacked) as the digest of all their data (a sum mod 2^32)."""
    return jnp.sum(digest, axis=0, dtype=jnp.uint32)


@jit
def conclude(setup: pipeline.Setup, state: pipeline.PipelineState, proposal: Proposal,
             acc: Accumulator) -> pipeline.PipelineState:
    """`pipeline.conclude`, the pass's accumulator reduced to the trial's model."""
    if isinstance(acc, matrix_free.GradientAccumulator):
        return pipeline.conclude(setup, state, proposal, matrix_free.finish(acc))
    acc = accumulate.fold_rows(setup.penalty_rows, proposal.trial, acc)
    return pipeline.conclude(setup, state, proposal, accumulate.finish(acc))


@jit
def result(setup: pipeline.Setup, state: pipeline.PipelineState, n_points,
           absolute_sigma) -> Result:
    """Phase 3 at the final point (no implicit rule: the data is not in memory)."""
    params = setup.problem.to_params(state.gauss_newton.u)
    return pipeline.result(setup, state, params, n_points, absolute_sigma)
