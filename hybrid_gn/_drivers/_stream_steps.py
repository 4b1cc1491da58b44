"""The streaming driver's compiled calls: the pipeline's transitions, one program each.

Every call takes the `Setup` as an argument (its static parts compare by
value), so compiled programs are shared by every chunk, every pass and
every fit with the same model, shapes and static configuration (the
Gauss-Newton pieces get the setup `for_gauss_newton`). `fold`
accumulates one streamed block, cut into `config.chunk_size` sub-chunks as
in the in-memory drivers (cache-sized Jacobians), in one compiled scan.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jaxtyping import PyTree

from .. import _pipeline as pipeline
from .._config import Config
from .._data import Data
from .._jit import jit
from .._phases import _accumulate as accumulate
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


@jit
def fold(setup: pipeline.Setup, u, acc: accumulate.Accumulator, x, y, w
         ) -> accumulate.Accumulator:
    """`acc` with one streamed block (x, y, w) folded in, sub-chunk by sub-chunk."""
    data = Data(x, y, w, min(setup.config.chunk_size, y.shape[0]))
    return accumulate.fold_data(setup.residual, u, acc, data, setup.config.jacobian, setup.loss)


@jit
def conclude(setup: pipeline.Setup, state: pipeline.PipelineState, proposal: Proposal,
             acc: accumulate.Accumulator) -> pipeline.PipelineState:
    """`pipeline.conclude`, the pass's accumulator reduced to the trial's model."""
    return pipeline.conclude(setup, state, proposal, accumulate.finish(acc))


@jit
def result(setup: pipeline.Setup, state: pipeline.PipelineState, n_points,
           absolute_sigma) -> Result:
    """Phase 3 at the final point (no implicit rule: the data is not in memory)."""
    params = setup.problem.to_params(state.gauss_newton.u)
    return pipeline.result(setup, state, params, n_points, absolute_sigma)
