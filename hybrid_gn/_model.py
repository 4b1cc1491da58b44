"""The model as a compile-cache key plus arrays, and a fingerprint of what it computes.

A model is a static argument of the jitted drivers, so jit would reuse a
compiled program for as long as the model object compares equal, even after
a closure cell, an attribute or an array inside it has changed. Here a model
is split in two:

- its arrays (the leaves of an `equinox.Module`, the arguments of a
  `functools.partial`) travel as data: changing them needs no recompile;
- the rest (functions, static fields, plain objects) becomes a `ModelKey`
  that compares equal only when it is the same code *and* traces to the same
  computation: the key carries a fingerprint of the model's jaxpr on the
  chunk it will be called on, including the values of the constants it
  closes over. A plain object mutated in place (`model.scale = 4.0`) traces
  to another jaxpr, gets another key and so a new program.

Plain functions in the key compare by what they compute, not by identity: a
new `lambda` (or a function redefined in a notebook cell) of the same code
and constants reuses the compiled program, as a scipy user calling
`curve_fit(lambda ...)` once per dataset expects. The jaxpr is the whole
computation, so nothing else about the function can matter. Not when the
model closes over tracers of an outer transformation: those are known only
by their shapes, so such functions still compare by identity.

The fingerprint is stable across processes (memory addresses in the printed
jaxpr are removed), which is what checkpoints compare.
"""

from __future__ import annotations

import functools
import hashlib
import re
import types
from collections.abc import Callable, Hashable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._code_signature import code_signature, remember

Model = Callable[..., jax.Array]  # model(params, x) or model(params, x, args)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class ModelKey:
    """The non-array part of a model and the fingerprint of its computation (hashable)."""

    def __init__(self, treedef, static: tuple, fingerprint: str, portable: bool = True):
        self.treedef, self.static, self.fingerprint = treedef, static, fingerprint
        self.portable = portable  # no outer tracer among the constants: compare by computation

    def rebuild(self, arrays: list) -> Callable:
        """The model, with `arrays` (traced or concrete) in its array slots."""
        leaves = [a if s is None else s for a, s in zip(arrays, self.static, strict=True)]
        return jax.tree.unflatten(self.treedef, leaves)

    def __hash__(self) -> int:
        return hash((self.treedef, self.fingerprint))

    def __eq__(self, other) -> bool:
        if not (isinstance(other, ModelKey) and self.fingerprint == other.fingerprint
                and self.treedef == other.treedef):
            return False
        by_computation = self.portable and other.portable
        return all(_same(a, b, by_computation)
                   for a, b in zip(self.static, other.static, strict=True))


def _same(a, b, by_computation: bool) -> bool:
    """Whether two non-array leaves of equal-fingerprint models are interchangeable."""
    if a is b:
        return True
    if by_computation and isinstance(a, types.FunctionType) and isinstance(
            b, types.FunctionType):
        return True  # the equal fingerprints say they compute the same thing
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an object whose == is not a truth value: compare by identity
        return False


def _as_pytree(model: Callable) -> PyTree:
    """A `functools.partial` as a `jax.tree_util.Partial` (its arguments become leaves)."""
    if isinstance(model, functools.partial) and not isinstance(model, jax.tree_util.Partial):
        return jax.tree_util.Partial(model.func, *model.args, **model.keywords)
    return model


def split(model: Callable, params: PyTree, chunk: PyTree, args: PyTree = None,
          ) -> tuple[ModelKey, list, jax.ShapeDtypeStruct]:
    """`(key, arrays, output)` of `model` called on abstract `params` and `chunk`.

    `params`, `chunk` and `args` are pytrees of `jax.ShapeDtypeStruct`s (or
    arrays); `output` is the abstract value the model returns (for the shape
    and dtype checks). Raises what the model raises when it cannot be traced.
    """
    leaves, treedef = jax.tree.flatten(_as_pytree(model))
    dynamic = [eqx.is_array(leaf) for leaf in leaves]
    arrays = [leaf if d else None for leaf, d in zip(leaves, dynamic, strict=True)]
    static = tuple(None if d else leaf for leaf, d in zip(leaves, dynamic, strict=True))
    memo = _memo_key(model, treedef, static, (arrays, params, chunk, args))
    if memo is not None and memo in _TRACED:
        fingerprint_, portable, output = _TRACED[memo]
        return ModelKey(treedef, static, fingerprint_, portable), arrays, output
    key = ModelKey(treedef, static, "")

    def call(arrays, params, chunk, args):
        rebuilt = key.rebuild(arrays)
        return rebuilt(params, chunk) if args is None else rebuilt(params, chunk, args)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), arrays)
    closed, output = jax.make_jaxpr(call, return_shape=True)(abstract, params, chunk, args)
    key.fingerprint = fingerprint(closed)
    key.portable = not any(isinstance(c, jax.core.Tracer) for c in closed.consts)
    if memo is not None:
        remember(_TRACED, memo, (key.fingerprint, key.portable, output))
    return key, arrays, output


# what tracing found for a model, by its code signature and the abstract inputs
_TRACED: dict[Hashable, tuple[str, bool, jax.ShapeDtypeStruct]] = {}


def _memo_key(model: Callable, treedef, static: tuple, inputs: PyTree) -> Hashable | None:
    """What identifies a trace of a plain function (or a partial of one) on these inputs
    without tracing it; None for anything else (modules, objects: traced every time)."""
    if not isinstance(model, types.FunctionType | functools.partial):
        return None
    signature = code_signature(static)
    if signature is None:
        return None
    leaves, structure = jax.tree.flatten(inputs)
    abstract = tuple((np.shape(a), dtype_of(a).str) for a in leaves)
    return (signature, treedef, structure, abstract, jax.config.jax_enable_x64)


def dtype_of(a) -> np.dtype:
    """`jnp.result_type(a)` of one array or scalar: read off an array's dtype (a fifteenth
    of the cost, which counts in the checks of a small fit)."""
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        return np.dtype(jnp.result_type(a))
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def fingerprint(closed: jax.extend.core.ClosedJaxpr) -> str:
    """SHA-256 of a jaxpr's text (without memory addresses) and of its constants' values."""
    h = hashlib.sha256(_ADDRESS.sub("", str(closed.jaxpr)).encode())
    for const in closed.consts:
        if isinstance(const, jax.core.Tracer):  # closed over from an outer trace
            h.update(str(const.aval).encode())
            continue
        a = np.asarray(const)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Bound(eqx.Module):
    """`model(params, x[, args])` rebuilt from a key and the arrays passed in front of args.

    The drivers call every model as `model(params, x, (arrays, args))`, so the
    model's arrays go wherever `args` goes: traced as data, batched or shared,
    stop-gradient inside the loop and differentiated by the implicit rule.
    """

    key: ModelKey = eqx.field(static=True)
    with_args: bool = eqx.field(static=True)

    def __call__(self, params, x, model_args):
        arrays, args = model_args
        model = self.key.rebuild(arrays)
        return model(params, x, args) if self.with_args else model(params, x)
