"""hybrid_gn: pure-JAX nonlinear least squares for huge data and many problems.

Four phases in one jitted function (no host round trips): parameter normalization, an
L-BFGS warmup with divergence defenses, streaming trust-region Gauss-Newton
with exact J^T J, and `curve_fit`-style covariance.

Importing the package turns on float64 in JAX unless the user chose already
through the JAX_ENABLE_X64 environment variable; float32 inputs stay float32.
"""

import os

import jax

if "JAX_ENABLE_X64" not in os.environ:
    jax.config.update("jax_enable_x64", True)

from . import sampling, sources  # noqa: E402
from ._config import Config  # noqa: E402
from ._drivers._batch import fit_batch  # noqa: E402
from ._drivers._checkpoint import CheckpointError  # noqa: E402
from ._drivers._curve_fit import curve_fit  # noqa: E402
from ._drivers._fit import fit  # noqa: E402
from ._drivers._least_squares import LeastSquaresResult, least_squares  # noqa: E402
from ._drivers._multistart import Tournament, fit_multistart  # noqa: E402
from ._drivers._scipy_options import CovarianceWarning  # noqa: E402
from ._drivers._stream import fit_stream  # noqa: E402
from ._group_weights import GroupWeights  # noqa: E402
from ._host import HostModelWarning  # noqa: E402
from ._penalty import GroupPenalty  # noqa: E402
from ._result import Phase, Result, Status, Trace, WarmupMode, WarmupReason  # noqa: E402

__all__ = [
    "CheckpointError",
    "Config",
    "CovarianceWarning",
    "GroupPenalty",
    "GroupWeights",
    "HostModelWarning",
    "LeastSquaresResult",
    "Phase",
    "Result",
    "Status",
    "Tournament",
    "Trace",
    "WarmupMode",
    "WarmupReason",
    "sampling",
    "sources",
    "curve_fit",
    "fit",
    "fit_batch",
    "fit_multistart",
    "fit_stream",
    "least_squares",
]
__version__ = "0.1.0"
