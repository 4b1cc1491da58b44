"""The one `jit` every driver compiles with, so every program gets the same options.

XLA's CPU compiler has two code generators for fused loops; the classic one
compiles the pipeline's small programs faster at the same run time
(benchmarks/RESULTS.md), so it is asked for wherever the installed XLA knows
the option. The choice is made at the first call, so importing the package
neither compiles nor starts a backend. Inside a user's `jit`, `vmap` or
`grad` the program is part of the user's and compiled with its options
(JAX refuses options on a nested `jit`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def compiler_options() -> dict[str, bool] | None:
    """`_OPTIONS` where this XLA accepts them, else None (its defaults)."""
    try:
        jax.jit(jnp.negative).lower(1.0).compile(compiler_options=_OPTIONS)
    except Exception:  # an XLA without the option
        return None
    return _OPTIONS


def _traced(args) -> bool:
    """Whether we are inside a trace (a user's jit, vmap, grad, make_jaxpr)."""
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # a JAX without it: traced arguments tell
        return any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args))
    return not trace_state_clean()


class jit:  # noqa: N801  (used as a decorator, like jax.jit)
    """`jax.jit(f, static_argnames=...)` with `compiler_options()` at the top level."""

    def __init__(self, f: Callable, static_argnames: tuple[str, ...] = ()):
        self.f, self.static_argnames = f, static_argnames
        functools.update_wrapper(self, f)

    @functools.cached_property
    def jitted(self):
        return jax.jit(self.f, static_argnames=self.static_argnames,
                       compiler_options=compiler_options())

    @functools.cached_property
    def nested(self):
        return jax.jit(self.f, static_argnames=self.static_argnames)

    def __call__(self, *args, **kwargs):
        if _traced((args, kwargs)):
            return self.nested(*args, **kwargs)
        return self.jitted(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        return self.jitted.eval_shape(*args, **kwargs)

    def cache_size(self) -> int:
        """Programs compiled so far (tests check that calls reuse one)."""
        return self.jitted._cache_size()

    def clear_cache(self) -> None:
        self.jitted.clear_cache()

