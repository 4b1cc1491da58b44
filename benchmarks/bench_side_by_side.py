"""Two versions of hybrid_gn side by side in one process: the warm time of `jit(vmap(fit))`.

    git worktree add ../base <commit>
    PYTHONPATH=. python3 benchmarks/bench_side_by_side.py ../base \
        [--family exp_offset,gaussian_offset] [--starts uniform,gaussian] [--size 1e4]
        [--calls 6]

Timings across processes on a shared machine move by 30 % and more, which hides a 5-10 %
change. Here the base checkout's package is copied under another name
(`hybrid_gn_base`, its imports are relative), both are compiled on the same
`bench_many_small.py` problems (float64, `.params` only), and their warm calls
alternate; each figure is the median of `--calls`, the ratio this version's over the
base's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_many_small as small


def _import_base(checkout: Path):
    """The package of `checkout` imported as `hybrid_gn_base`."""
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(checkout / "hybrid_gn", folder / "hybrid_gn_base")
    sys.path.insert(0, str(folder))
    import hybrid_gn_base

    return hybrid_gn_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--family", default="exp_offset,gaussian_offset")
    parser.add_argument("--starts", default="uniform,gaussian")
    parser.add_argument("--size", default="1e4")
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import hybrid_gn

    versions = {"base": _import_base(args.base), "this": hybrid_gn}
    print("| family | starts | base ms | this ms | this ÷ base |\n|---|---|---|---|---|")
    for name in args.family.split(","):
        for starts in args.starts.split(","):
            x, y, _, start = small.problems(name, starts, int(float(args.size)))
            family_model = small.FAMILIES[name].model
            xj, yj, sj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(start)

            def model(p, x, family_model=family_model):
                return family_model(p, x, jnp)

            def solver(package, model=model, x=xj):
                return jax.jit(jax.vmap(lambda p0, yb: package.fit(model, p0, x, yb).params))

            solvers = {label: solver(package) for label, package in versions.items()}
            for solve in solvers.values():
                jax.block_until_ready(solve(sj, yj))
            seconds = {label: [] for label in solvers}
            for _ in range(args.calls):
                for label, solve in solvers.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(solve(sj, yj))
                    seconds[label].append(time.perf_counter() - t0)
            base, this = (1e3 * statistics.median(seconds[k]) for k in ("base", "this"))
            print(f"| {name} | {starts} | {base:.1f} | {this:.1f} | {this / base:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
