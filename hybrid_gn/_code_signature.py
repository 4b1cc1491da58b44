"""A cheap identity of what a plain Python function computes: its code and what it reads.

Tracing a model to fingerprint its jaxpr costs milliseconds, more than a
small fit itself. A function's computation is fixed by its code, its default
arguments, the contents of its closure cells and the globals its code names
(recursively through the user's own functions). When all of these are values
this module can compare (numbers, strings, small arrays by content, modules,
library functions by name, the user's functions recursively), the tuple of
them identifies the computation as well as the jaxpr does, and a memo can
stand in for the trace. Anything else (an object whose attributes may
change, a large array, a tracer) gives None: the caller traces as before.
"""

from __future__ import annotations

import builtins
import hashlib
import sys
import types
from collections.abc import Hashable

import jax
import numpy as np

# functions of these packages are named by module and qualified name, not inspected
_LIBRARIES = ("jax", "jaxlib", "numpy", "scipy", "math", "builtins", "equinox", "optax",
              "functools", "operator")
_MAX_BYTES = 1 << 16  # arrays up to this size are hashed by content; larger: no signature
_MAX_DEPTH = 8


class _Unknown(Exception):
    """A value whose identity cannot be told cheaply: no signature."""


MEMO_SIZE = 512  # entries of each memo keyed by code signatures


def remember(memo: dict, key: Hashable, value) -> None:
    """Store `value` under `key` in `memo`, forgetting the oldest entry once it holds
    `MEMO_SIZE` (a long session of new models must not grow it without bound)."""
    if len(memo) >= MEMO_SIZE:
        del memo[next(iter(memo))]
    memo[key] = value


def code_signature(fn) -> Hashable | None:
    """A hashable value equal for two functions that compute the same thing, or None."""
    try:
        return _value(fn, 0, set())
    except _Unknown:
        return None


def _value(v, depth: int, seen: set) -> Hashable:
    if v is None or isinstance(v, bool | int | float | complex | str | bytes):
        return (type(v).__name__, v)
    if isinstance(v, tuple):
        return ("tuple", *(_value(a, depth, seen) for a in v))
    if isinstance(v, types.ModuleType):
        return ("module", v.__name__)
    if isinstance(v, jax.core.Tracer):
        raise _Unknown
    if isinstance(v, np.ndarray | np.generic | jax.Array):
        return _array(v)
    if _from_library(v):
        return ("library", v.__module__, v.__qualname__)
    if isinstance(v, types.FunctionType):
        return _function(v, depth, seen)
    raise _Unknown


def _array(v) -> Hashable:
    a = np.asarray(v)
    if a.nbytes > _MAX_BYTES or a.dtype == object:
        raise _Unknown
    digest = hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()
    return ("array", a.dtype.str, a.shape, digest)


def _from_library(v) -> bool:
    """A function or class of a library, found under its own name in its module (so its
    name identifies it; an instance such as a `functools.partial` is not)."""
    module, name = getattr(v, "__module__", None), getattr(v, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(name, str)
            and module.split(".")[0] in _LIBRARIES and module in sys.modules):
        return False
    found = sys.modules[module]
    for part in name.split("."):
        found = getattr(found, part, None)
    return found is v


def _function(fn: types.FunctionType, depth: int, seen: set) -> Hashable:
    if depth > _MAX_DEPTH:
        raise _Unknown
    if id(fn) in seen:  # recursion: the function is already being described
        return ("recursive", fn.__qualname__)
    seen = seen | {id(fn)}
    code = fn.__code__
    cells = tuple(_value(c.cell_contents, depth + 1, seen) for c in fn.__closure__ or ())
    kwdefaults = tuple(sorted((k, _value(d, depth + 1, seen))
                              for k, d in (fn.__kwdefaults__ or {}).items()))
    return ("function", _code(code), _value(fn.__defaults__, depth + 1, seen), kwdefaults,
            cells, _globals(fn, code, depth, seen))


def _code(code: types.CodeType) -> Hashable:
    """The code's instructions and what they name, without its name and line numbers (a
    lambda written again on another line computes the same)."""
    consts = tuple(_code(c) if isinstance(c, types.CodeType) else (type(c).__name__, c)
                   for c in code.co_consts)
    return (code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars,
            code.co_cellvars, code.co_argcount, code.co_posonlyargcount,
            code.co_kwonlyargcount, code.co_flags)


def _globals(fn: types.FunctionType, code: types.CodeType, depth: int, seen: set) -> tuple:
    """The values of the global names the code (and its nested code) refers to."""
    named = []
    for name in sorted(_names(code)):
        if name in fn.__globals__:
            named.append((name, _value(fn.__globals__[name], depth + 1, seen)))
        elif name in vars(builtins):
            named.append((name, ("builtin",)))
        # else: an attribute name (jnp.exp's "exp"), covered by its object
    return tuple(named)


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names
