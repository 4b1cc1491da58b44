"""Group-variance regularization: parameters of a group are pulled towards their mean.

In a multi-angle fit each angle has its own contrast and offset; left free,
those per-angle parameters can absorb what the shared physics should
explain. `GroupPenalty` adds, for each declared group g of parameters,

    1/2 * strength * sum_{i in g} (theta_i - mean_g theta)^2

to the cost, as extra residual rows sqrt(strength) (theta_i - mean_g theta).
The problem stays a least-squares problem: the rows enter J^T J and J^T r
once per pass (not per chunk, not per device), so the trust region, the
covariance and the implicit gradient all see the penalty. It needs the dense
Gauss-Newton path (p <= `Config.dense_max_params`).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree


class GroupPenalty(eqx.Module):
    """Penalize the spread of groups of parameters (flat indices in `ravel_pytree` order).

    Attributes:
        groups: tuples of flat parameter indices, one per group (each of at least two
            distinct parameters; `range`s and lists are accepted). `from_mask` builds
            them from a pytree shaped like `p0`.
        strength: the weight lambda of the penalty 1/2 lambda sum_g sum_{i in g}
            (theta_i - mean_g)^2 (a leaf: traced, vmapped or differentiated without
            recompiling).

    Examples:
        >>> import jax.numpy as jnp
        >>> import hybrid_gn
        >>> penalty = hybrid_gn.GroupPenalty([range(0, 3)], strength=4.0)
        >>> penalty.rows(jnp.array([1.0, 2.0, 3.0, 10.0]))
        Array([-2.,  0.,  2.], dtype=float64)
    """

    groups: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    strength: Float[Array, ""] | float = 1.0

    def __init__(self, groups: Iterable[Iterable[int]], strength=1.0):
        self.groups = tuple(_group(g, k) for k, g in enumerate(groups))
        if not self.groups:
            raise ValueError("GroupPenalty needs at least one group of parameters")
        if isinstance(strength, numbers.Real) and not strength >= 0:
            raise ValueError(f"GroupPenalty strength must be >= 0, got {strength!r}")
        self.strength = strength

    @classmethod
    def from_mask(cls, p0: PyTree, mask: PyTree, strength=1.0) -> GroupPenalty:
        """Groups from a pytree shaped like `p0`: True (one group) or integer labels >= 0
        (one group per label); False or a negative label: not penalized."""
        labels = []
        for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(p0), strict=True):
            m = np.asarray(m)
            m = np.where(m, 0, -1) if m.dtype == bool else m.astype(int)
            labels.append(np.broadcast_to(m, np.shape(p)).ravel())
        flat = np.concatenate(labels) if labels else np.zeros(0, int)
        return cls([np.flatnonzero(flat == g).tolist() for g in np.unique(flat[flat >= 0])],
                   strength)

    @property
    def n_rows(self) -> int:
        return sum(len(g) for g in self.groups)

    def check(self, n_params: int) -> None:
        """Every index names a parameter (raised before anything is compiled)."""
        largest = max(max(g) for g in self.groups)
        if largest >= n_params:
            raise ValueError(f"GroupPenalty names parameter index {largest}, but p0 has "
                             f"{n_params} parameters (flat indices in ravel order)")

    def rows(self, theta: Float[Array, " p"]) -> Float[Array, " rows"]:
        """The residual rows sqrt(strength) (theta_i - mean_g theta), group after group."""
        root = jnp.sqrt(jnp.asarray(self.strength, theta.dtype))
        parts = []
        for g in self.groups:
            members = theta[np.asarray(g)]
            parts.append(root * (members - jnp.mean(members)))
        return jnp.concatenate(parts)

    def describe(self) -> str:
        """The penalty as text (what a checkpoint records)."""
        return f"groups {self.groups} strength {float(self.strength)!r}"


def _group(members: Iterable[int], k: int) -> tuple[int, ...]:
    group = tuple(int(i) for i in members)
    if len(group) < 2 or len(set(group)) != len(group) or min(group) < 0:
        raise ValueError(f"GroupPenalty group {k} must name at least two distinct parameter "
                         f"indices >= 0, got {group}")
    return group
