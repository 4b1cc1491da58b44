"""The examples in the public docstrings run and print what they show.

The public API is `hybrid_gn.__all__` plus the public names of `hybrid_gn.sources` and
`hybrid_gn.sampling`. Each object's docstring (and those of its methods) is collected with
`doctest.DocTestFinder` and run as its own test; every public callable must have an example.
The fields of the public dataclasses (`Config`, `Result`, ...) must all be documented under
`Attributes:`, and a default stated there (`Default: 8192.`) must be the real one.
"""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import io
import math
import re
import types

import pytest

import hybrid_gn

# The public names of a module are its `__all__`. Without one: for `hybrid_gn.sampling`, the
# functions it defines; for `hybrid_gn.sources`, which also holds the streaming driver's
# helpers, the sources.
_SOURCES = ("ArraySource", "CallableSource", "ChunkSource", "HDF5Source")
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _own_functions_and_classes(module: types.ModuleType) -> list[str]:
    """The names of the functions and classes `module` defines (not those it imports)."""
    return sorted(
        name for name, obj in vars(module).items()
        if not name.startswith("_") and callable(obj)
        and getattr(obj, "__module__", "").startswith(module.__name__))


def _public_names(module: types.ModuleType, fallback: list[str] | tuple[str, ...]) -> list[str]:
    return list(getattr(module, "__all__", fallback))


def public_api() -> dict[str, object]:
    """Every public object, by its public name (modules excluded: their members count)."""
    api = {f"hybrid_gn.{name}": getattr(hybrid_gn, name) for name in hybrid_gn.__all__
           if not inspect.ismodule(getattr(hybrid_gn, name))}
    for module, fallback in ((hybrid_gn.sources, _SOURCES),
                             (hybrid_gn.sampling, _own_functions_and_classes(hybrid_gn.sampling))):
        for name in _public_names(module, fallback):
            obj = getattr(module, name)
            if not inspect.ismodule(obj):
                api[f"{module.__name__}.{name}"] = obj
    return api


API = public_api()
_FINDER = doctest.DocTestFinder(recurse=True)


def _doctests(name: str) -> list[doctest.DocTest]:
    """The doctests of `name`'s docstring and of its methods', run in a fresh namespace."""
    return [test for test in _FINDER.find(API[name], name, globs={}) if test.examples]


def test_the_api_is_found() -> None:
    assert {"hybrid_gn.fit", "hybrid_gn.Config", "hybrid_gn.sources.ArraySource",
            "hybrid_gn.sources.ChunkSource", "hybrid_gn.sampling.sobol"} <= set(API)


@pytest.mark.parametrize("name", sorted(API))
def test_public_object_has_an_example(name: str) -> None:
    own = [test for test in _doctests(name) if test.name == name]
    assert own, f"the docstring of {name} has no example (a `>>>` doctest)"


@pytest.mark.parametrize("name", sorted(API))
def test_docstring_examples_run(name: str) -> None:
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    failed = attempted = 0
    for test in _doctests(name):
        outcome = runner.run(test, out=report.write)
        failed, attempted = failed + outcome.failed, attempted + outcome.attempted
    assert attempted > 0, f"{name} has no example to run"
    assert failed == 0, report.getvalue()


def _attributes(cls: type) -> dict[str, str]:
    """The entries of the `Attributes:` section of `cls`'s docstring, by name."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return {}
    entries: dict[str, str] = {}
    for line in lines[lines.index("Attributes:") + 1:]:
        if line and not line.startswith("    "):
            break
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name = entry.group(1)
            entries[name] = entry.group(2)
        elif line.strip():
            entries[name] += " " + line.strip()
    return entries


DATACLASSES = sorted(name for name, obj in API.items()
                     if inspect.isclass(obj) and dataclasses.is_dataclass(obj))


@pytest.mark.parametrize("name", DATACLASSES)
def test_every_field_is_documented(name: str) -> None:
    fields = {field.name for field in dataclasses.fields(API[name])}
    assert set(_attributes(API[name])) == fields


def _stated_defaults(cls: type) -> dict[str, str]:
    """The defaults the `Attributes:` section states (`Default: value.`), by field."""
    found = {field: re.search(r"Default: (.+)\.$", text)
             for field, text in _attributes(cls).items()}
    return {field: match.group(1) for field, match in found.items() if match}


@pytest.mark.parametrize("name", [name for name in DATACLASSES if _stated_defaults(API[name])])
def test_documented_defaults_are_the_defaults(name: str) -> None:
    instance = API[name]()
    for field, text in _stated_defaults(API[name]).items():
        assert eval(text, {"inf": math.inf}) == getattr(instance, field), field
