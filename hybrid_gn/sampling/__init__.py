"""Multi-start candidates: Sobol', Halton, Latin hypercube and uniform points in JAX.

Every generator is a pure function of a PRNG key. The point count `n` and the dimension
`d` fix array shapes, so they are static Python ints; everything else traces, so the
generators jit and vmap over keys. Unscrambled Sobol' and Halton points equal
`scipy.stats.qmc.Sobol(d, scramble=False)` / `Halton(d, scramble=False)` without needing
scipy at run time: the Sobol' direction numbers ship in `data/sobol_directions.npz`, the
rows for dimensions 2..1024 of `new-joe-kuo-6.21201` (S. Joe and F. Y. Kuo, "Constructing
Sobol sequences with better two-dimensional projections", SIAM J. Sci. Comput. 30,
2635-2654, 2008; https://web.maths.unsw.edu.au/~fkuo/sobol/), the table scipy also uses.

Scrambling (randomized QMC, needs a key): Sobol' gets a linear matrix scramble plus a
digital shift, Halton gets Owen's random digit permutations; both keep their
stratification. `candidates` maps unit-cube points to starting points of a fit: into the
box where both bounds of a parameter are finite, else into a box around `p0`.
"""

from ._candidates import candidate_box, candidates
from ._common import METHODS as METHODS
from ._common import Method as Method
from ._halton import first_primes, halton
from ._random import latin_hypercube, uniform, unit_points
from ._sobol import sobol, sobol_max_dim

# the generators; `Method` and `METHODS` (the method names) are importable too
__all__ = ["candidate_box", "candidates", "first_primes", "halton", "latin_hypercube", "sobol",
           "sobol_max_dim", "uniform", "unit_points"]
