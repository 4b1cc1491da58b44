"""NIST StRD nonlinear regression problems: data, starting values and certified results.

The 27 datasets of the NIST Statistical Reference Datasets (StRD) nonlinear regression
suite ship as ``.dat`` files in ``data/nist`` next to this module. :func:`load` parses one
file into a :class:`NistProblem` holding the observations, both NIST starting points, the
certified parameters, standard deviations and residual sum of squares, plus the model
written in ``jax.numpy`` so that it can be jitted, differentiated and vmapped.

Each model is a literal transcription of the ``Model:`` section of its file (``**`` is
power, ``exp[...]`` is ``exp(...)``), so the residual sum of squares at the certified
parameters reproduces the certified value; ``tests/test_nist_models.py`` checks this.

Nelson is the one problem with two predictors and a transformed response
(``log[y] = b1 - b2*x1*exp[-b3*x2]``): its ``x`` has shape ``(n, 2)`` with columns
``(x1, x2)`` and its ``y`` holds ``log`` of the recorded response, which is the quantity
NIST's certified residual sum of squares refers to. Every other problem has one predictor.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402  (x64 must be enabled before any array is made)
import numpy as np  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent / "data" / "nist"

# NIST's own ordering: by level of difficulty (Lower, Average, Higher), then as listed.
NAMES: tuple[str, ...] = (
    # Lower
    "Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood", "Misra1b",
    # Average
    "Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3", "Misra1c",
    "Misra1d", "Roszman1", "ENSO",
    # Higher
    "MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class NistProblem:
    """One NIST StRD nonlinear least-squares problem.

    ``model(b, x)`` returns the model values for the 1-D parameter vector ``b`` at the
    predictor values ``x``; the residuals NIST certifies are ``y - model(b, x)``.
    All arrays are float64 and read-only.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    starts: tuple[np.ndarray, np.ndarray]
    certified: np.ndarray
    certified_sd: np.ndarray
    certified_rss: float
    difficulty: str
    model: Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------------------
# Models, one function per distinct NIST formula (quoted verbatim in each docstring).
# --------------------------------------------------------------------------------------


def _misra1a(b, x):
    """y = b1*(1-exp[-b2*x])  (Misra1a, BoxBOD)."""
    b1, b2 = b
    return b1 * (1 - jnp.exp(-b2 * x))


def _chwirut(b, x):
    """y = exp[-b1*x]/(b2+b3*x)  (Chwirut1, Chwirut2)."""
    b1, b2, b3 = b
    return jnp.exp(-b1 * x) / (b2 + b3 * x)


def _lanczos(b, x):
    """y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)  (Lanczos1, 2, 3)."""
    b1, b2, b3, b4, b5, b6 = b
    return b1 * jnp.exp(-b2 * x) + b3 * jnp.exp(-b4 * x) + b5 * jnp.exp(-b6 * x)


def _gauss(b, x):
    """y = b1*exp( -b2*x ) + b3*exp( -(x-b4)**2 / b5**2 ) + b6*exp( -(x-b7)**2 / b8**2 )."""
    b1, b2, b3, b4, b5, b6, b7, b8 = b
    return (
        b1 * jnp.exp(-b2 * x)
        + b3 * jnp.exp(-((x - b4) ** 2) / b5**2)
        + b6 * jnp.exp(-((x - b7) ** 2) / b8**2)
    )


def _danwood(b, x):
    """y = b1*x**b2."""
    b1, b2 = b
    return b1 * x**b2


def _misra1b(b, x):
    """y = b1 * (1-(1+b2*x/2)**(-2))."""
    b1, b2 = b
    return b1 * (1 - (1 + b2 * x / 2) ** (-2))


def _kirby2(b, x):
    """y = (b1 + b2*x + b3*x**2) / (1 + b4*x + b5*x**2)."""
    b1, b2, b3, b4, b5 = b
    return (b1 + b2 * x + b3 * x**2) / (1 + b4 * x + b5 * x**2)


def _cubic_over_cubic(b, x):
    """y = (b1 + b2*x + b3*x**2 + b4*x**3) / (1 + b5*x + b6*x**2 + b7*x**3)  (Hahn1, Thurber)."""
    b1, b2, b3, b4, b5, b6, b7 = b
    return (b1 + b2 * x + b3 * x**2 + b4 * x**3) / (1 + b5 * x + b6 * x**2 + b7 * x**3)


def _nelson(b, x):
    """log[y] = b1 - b2*x1 * exp[-b3*x2], with ``x[..., 0] = x1`` and ``x[..., 1] = x2``.

    Returns the model for ``log[y]``; the problem's ``y`` is already log-transformed.
    """
    b1, b2, b3 = b
    x1, x2 = x[..., 0], x[..., 1]
    return b1 - b2 * x1 * jnp.exp(-b3 * x2)


def _mgh17(b, x):
    """y = b1 + b2*exp[-x*b4] + b3*exp[-x*b5]."""
    b1, b2, b3, b4, b5 = b
    return b1 + b2 * jnp.exp(-x * b4) + b3 * jnp.exp(-x * b5)


def _misra1c(b, x):
    """y = b1 * (1-(1+2*b2*x)**(-.5))."""
    b1, b2 = b
    return b1 * (1 - (1 + 2 * b2 * x) ** (-0.5))


def _misra1d(b, x):
    """y = b1*b2*x*((1+b2*x)**(-1))."""
    b1, b2 = b
    return b1 * b2 * x * ((1 + b2 * x) ** (-1))


# Roszman1 states pi to 31 digits; float64 rounds it to exactly math.pi (== jnp.pi).
_ROSZMAN1_PI = 3.141592653589793238462643383279


def _roszman1(b, x):
    """y = b1 - b2*x - arctan[b3/(x-b4)]/pi."""
    b1, b2, b3, b4 = b
    return b1 - b2 * x - jnp.arctan(b3 / (x - b4)) / _ROSZMAN1_PI


def _enso(b, x):
    """y = b1 + b2*cos( 2*pi*x/12 ) + b3*sin( 2*pi*x/12 )
    + b5*cos( 2*pi*x/b4 ) + b6*sin( 2*pi*x/b4 )
    + b8*cos( 2*pi*x/b7 ) + b9*sin( 2*pi*x/b7 )."""
    b1, b2, b3, b4, b5, b6, b7, b8, b9 = b
    pi = jnp.pi
    return (
        b1
        + b2 * jnp.cos(2 * pi * x / 12)
        + b3 * jnp.sin(2 * pi * x / 12)
        + b5 * jnp.cos(2 * pi * x / b4)
        + b6 * jnp.sin(2 * pi * x / b4)
        + b8 * jnp.cos(2 * pi * x / b7)
        + b9 * jnp.sin(2 * pi * x / b7)
    )


def _mgh09(b, x):
    """y = b1*(x**2+x*b2) / (x**2+x*b3+b4)."""
    b1, b2, b3, b4 = b
    return b1 * (x**2 + x * b2) / (x**2 + x * b3 + b4)


def _rat42(b, x):
    """y = b1 / (1+exp[b2-b3*x])."""
    b1, b2, b3 = b
    return b1 / (1 + jnp.exp(b2 - b3 * x))


def _mgh10(b, x):
    """y = b1 * exp[b2/(x+b3)]."""
    b1, b2, b3 = b
    return b1 * jnp.exp(b2 / (x + b3))


def _eckerle4(b, x):
    """y = (b1/b2) * exp[-0.5*((x-b3)/b2)**2]."""
    b1, b2, b3 = b
    return (b1 / b2) * jnp.exp(-0.5 * ((x - b3) / b2) ** 2)


def _rat43(b, x):
    """y = b1 / ((1+exp[b2-b3*x])**(1/b4))."""
    b1, b2, b3, b4 = b
    return b1 / ((1 + jnp.exp(b2 - b3 * x)) ** (1 / b4))


def _bennett5(b, x):
    """y = b1 * (b2+x)**(-1/b3)."""
    b1, b2, b3 = b
    return b1 * (b2 + x) ** (-1 / b3)


MODELS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "Misra1a": _misra1a,
    "Chwirut2": _chwirut,
    "Chwirut1": _chwirut,
    "Lanczos3": _lanczos,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "DanWood": _danwood,
    "Misra1b": _misra1b,
    "Kirby2": _kirby2,
    "Hahn1": _cubic_over_cubic,
    "Nelson": _nelson,
    "MGH17": _mgh17,
    "Lanczos1": _lanczos,
    "Lanczos2": _lanczos,
    "Gauss3": _gauss,
    "Misra1c": _misra1c,
    "Misra1d": _misra1d,
    "Roszman1": _roszman1,
    "ENSO": _enso,
    "MGH09": _mgh09,
    "Thurber": _cubic_over_cubic,
    "BoxBOD": _misra1a,
    "Rat42": _rat42,
    "MGH10": _mgh10,
    "Eckerle4": _eckerle4,
    "Rat43": _rat43,
    "Bennett5": _bennett5,
}

# Problems whose NIST response is transformed before fitting: name -> transform of y.
_RESPONSE_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"Nelson": np.log}


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def _line_range(text: str, label: str) -> tuple[int, int]:
    """Return the 1-based inclusive ``(first, last)`` line range the header gives for ``label``."""
    m = re.search(label + r"\s*\(lines\s+(\d+)\s+to\s+(\d+)\)", text)
    if m is None:
        raise ValueError(f"header has no line range for {label!r}")
    return int(m.group(1)), int(m.group(2))


def _header_value(text: str, pattern: str) -> str:
    """Return the first capture group of ``pattern`` in ``text``, or raise if absent."""
    m = re.search(pattern, text)
    if m is None:
        raise ValueError(f"no match for {pattern!r}")
    return m.group(1)


def _readonly(a: np.ndarray) -> np.ndarray:
    """Mark ``a`` read-only so cached problems cannot be mutated by callers."""
    a.setflags(write=False)
    return a


@functools.cache
def load(name: str) -> NistProblem:
    """Parse ``data/nist/<name>.dat`` into a :class:`NistProblem`.

    Line ranges come from the file header rather than fixed offsets. Parameter lines read
    ``bK = start1 start2 certified sd``; the data section's column header (``y x`` or
    ``y x1 x2``) decides which column is the response. Counts are cross-checked against the
    header so that a truncated or misread file fails loudly.
    """
    if name not in MODELS:
        raise KeyError(f"unknown NIST problem {name!r}; expected one of {NAMES}")
    text = (DATA_DIR / f"{name}.dat").read_text()
    lines = text.splitlines()

    def section(label: str) -> list[str]:
        first, last = _line_range(text, label)
        return lines[first - 1 : last]

    params = []
    for line in section("Starting Values"):
        m = re.match(r"\s*b(\d+)\s*=\s*(.+)$", line)
        if m is None:
            raise ValueError(f"{name}: unexpected starting-value line {line!r}")
        if int(m.group(1)) != len(params) + 1:
            raise ValueError(f"{name}: parameters out of order at {line!r}")
        params.append([float(v) for v in m.group(2).split()])
    table = np.array(params, dtype=np.float64)
    if table.shape[1] != 4:
        raise ValueError(f"{name}: expected start1 start2 certified sd, got {table.shape}")

    certified_block = "\n".join(section("Certified Values"))
    rss = float(_header_value(certified_block, r"Residual Sum of Squares:\s*(\S+)"))

    first, last = _line_range(text, "Data")
    columns = lines[first - 2].split()
    if columns[:2] != ["Data:", "y"]:
        raise ValueError(f"{name}: data columns do not start with y: {columns}")
    data = np.array([[float(v) for v in line.split()] for line in lines[first - 1 : last]])
    if data.shape[1] != len(columns) - 1:
        raise ValueError(f"{name}: data rows have {data.shape[1]} columns, header {columns}")

    n = int(_header_value(text, r"Number of Observations:\s*(\d+)"))
    n_params = int(_header_value(text, r"(\d+) Parameters"))
    if data.shape[0] != n or table.shape[0] != n_params:
        raise ValueError(f"{name}: parsed {data.shape[0]} rows/{table.shape[0]} parameters")

    y = _RESPONSE_TRANSFORMS.get(name, lambda v: v)(data[:, 0])
    x = data[:, 1] if data.shape[1] == 2 else data[:, 1:]
    return NistProblem(
        name=name,
        x=_readonly(np.ascontiguousarray(x)),
        y=_readonly(np.ascontiguousarray(y)),
        starts=(_readonly(table[:, 0].copy()), _readonly(table[:, 1].copy())),
        certified=_readonly(table[:, 2].copy()),
        certified_sd=_readonly(table[:, 3].copy()),
        certified_rss=rss,
        difficulty=_header_value(text, r"(Lower|Average|Higher) Level of Difficulty"),
        model=MODELS[name],
    )
