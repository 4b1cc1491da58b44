"""Cost of a gradient through the fit, relative to the fit itself.

    PYTHONPATH=. python benchmarks/bench_gradient.py --repeats 5   # RESULTS.md
    python benchmarks/bench_gradient.py [--quick] [--timeout 600]

Two cases; each computation is timed warm (median, min–max, of --repeats after a first
call) in its own subprocess (`harness.in_subprocess`; one past --timeout is reported as
timed out):

* one fit of a 5-parameter peak on n = 1e5 points: `fit` against
  `jax.grad` (reverse) and `jax.jacfwd` (forward) of the fitted centre with
  respect to y, and `jax.grad` with respect to a model argument;
* 1e3 small Gaussian fits under `jax.vmap`: the batched fit against the
  batched gradient of each fitted centre with respect to that problem's y.

The gradient includes the fit (it needs the solution), so the ratio
gradient / fit is the whole price of the derivative; the implicit function
theorem adds one Hessian and one linear solve at the solution, not the
iterations. Target: at most 2. `--quick` runs n = 1e4 and 100 small fits (a check that
the script runs, not figures to quote).
"""

from __future__ import annotations

import argparse

import harness
import numpy as np

BIG = "one fit"
SMALL = "small fits, vmap"
COMPUTATIONS = [(BIG, "fit"), (BIG, "grad wrt y (reverse)"),
                (BIG, "jacfwd wrt y[:5] (forward, 5 tangents)"),
                (BIG, "grad wrt model argument"),
                (SMALL, "fit"), (SMALL, "grad wrt y (reverse)")]
M = 64  # points per small fit


def peak(p, x, shift=0.0):
    import jax.numpy as jnp

    a, mu, s, b0, b1 = p
    return a * jnp.exp(-0.5 * ((x - mu - shift) / s) ** 2) + b0 + b1 * x


def gauss(p, x):
    import jax.numpy as jnp

    a, mu, s, c = p
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def _computation(case: str, name: str, n: int, b: int):
    """(function, arguments) of one computation; the data are those of every other one
    (one generator, drawn in the same order)."""
    import jax
    import jax.numpy as jnp

    import hybrid_gn

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 10, n))
    truth = jnp.asarray([3.0, 5.0, 0.8, 0.5, 0.1])
    y = peak(truth, x) + 0.2 * jnp.asarray(rng.standard_normal(n))
    p0 = jnp.asarray([2.0, 4.6, 1.1, 0.2, 0.0])

    xs = jnp.linspace(-4.0, 4.0, M)
    truths = jnp.stack([rng.uniform(1, 3, b), rng.uniform(-1, 1, b), rng.uniform(0.5, 1.5, b),
                        rng.uniform(-0.5, 0.5, b)], axis=1)
    ys = jax.vmap(lambda p: gauss(p, xs))(truths) + 0.05 * jnp.asarray(
        rng.standard_normal((b, M)))
    starts = truths * jnp.asarray(rng.uniform(0.8, 1.2, (b, 4)))

    def centre(y):
        return hybrid_gn.fit(peak, p0, x, y).params[1]

    def centre_args(shift):
        return hybrid_gn.fit(lambda p, x, s: peak(p, x, s), p0, x, y, args=shift).params[1]

    def small_centre(y, p0):
        return hybrid_gn.fit(gauss, p0, xs, y).params[1]

    table = {
        (BIG, "fit"): (jax.jit(centre), (y,)),
        (BIG, "grad wrt y (reverse)"): (jax.jit(jax.grad(centre)), (y,)),
        (BIG, "jacfwd wrt y[:5] (forward, 5 tangents)"):
            (jax.jit(lambda y5: jax.jacfwd(lambda v: centre(y.at[:5].set(v)))(y5)), (y[:5],)),
        (BIG, "grad wrt model argument"): (jax.jit(jax.grad(centre_args)), (jnp.asarray(0.0),)),
        (SMALL, "fit"): (jax.jit(jax.vmap(small_centre)), (ys, starts)),
        (SMALL, "grad wrt y (reverse)"): (jax.jit(jax.vmap(jax.grad(small_centre))),
                                          (ys, starts)),
    }
    return table[case, name]


def measure(case: str, name: str, n: int, b: int, repeats: int) -> dict:
    """Warm times of one computation in this process (after a first, compiling call)."""
    f, args = _computation(case, name, n, b)
    first, warm = harness.time_calls(lambda: f(*args), repeats)
    return {"first": first.seconds[0], "warm": warm.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="n = 1e4, 100 small fits")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per computation")
    args = parser.parse_args()
    n, b = (10_000, 100) if args.quick else (100_000, 1000)
    label = {BIG: f"one fit, n = {harness.sci(n)}", SMALL: f"{harness.sci(b)} small fits, vmap"}

    rows, base = [], {}
    for case, name in COMPUTATIONS:
        out = harness.in_subprocess(measure, case, name, n, b, args.repeats,
                                    timeout=args.timeout)
        if not out.ok:
            print(f"  {label[case]}: {name}: {out.describe()}", flush=True)
            rows.append([label[case], name, out.describe(), None])
            continue
        warm = harness.Stats.of(out.value["warm"])
        if name == "fit":
            base[case] = warm.median
        print(f"  {label[case]}: {name}: warm {warm.text('.4f')} s, first "
              f"{out.value['first']:.1f} s", flush=True)
        ratio = f"{warm.median / base[case]:.2f}" if case in base else None
        rows.append([label[case], name, warm.text(".4f"), ratio])
    print()
    print(harness.markdown_table(["case", "computation", "warm s", "÷ fit"], rows))


if __name__ == "__main__":
    main()
