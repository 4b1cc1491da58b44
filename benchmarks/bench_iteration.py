"""The cost of one batched Gauss-Newton iteration, by part, against an optimistix LM step.

    cd benchmarks && PYTHONPATH=..:. python bench_iteration.py \
        [--family gaussian_offset,double_exp,two_lorentzians] [--size 1e4] [--steps 8]
        [--repeats 5] [--only hybrid_gn,optimistix] [--parts "while step,batch step,..."]

B problems of a `bench_many_small.py` family (uniform starts), float64, the default
`Config`. Every figure is ms per iteration for the whole batch: the time of 2 + K
iterations minus that of 2, over K (--steps), each the median of --repeats warm calls,
so the start and the first (evaluation-only) iteration are not counted. hybrid_gn parts:

* fori step: `pipeline.gauss_newton_step` of the whole batch in a `fori_loop`;
* while step: the steps as `pipeline.run` takes them under `jit(vmap(fit))` (the loop's
  predicate is batched: each iteration selects the carry of the finished problems);
* batch step: the steps as `fit_batch` takes them (`compacted_loop`, in chunks);
* evaluate: the trial's model (`Setup.evaluate`: Jacobian, J^T J, factorization, and the
  QR route when some problem of the batch is on it);
* accumulate: the Jacobian and J^T J, J^T r and cost alone;
* factorize: `from_normal_equations` alone (the eigendecomposition of J^T J);
* propose: the trust-region subproblem and the trial point (`pipeline.propose`);
* conclude: acceptance, radius, stopping tests and the trace (`pipeline.conclude`).

The parts (but for conclude) run on the states after two iterations, repeated in a loop
through an optimization barrier. optimistix: `least_squares` with LM (rtol = atol = 1e-8
as in `bench_many_small.py`) capped at 2 + K against 2 steps, under `jit(vmap)`. "max
steps": the most iterations (steps) any problem of the batch takes to converge.
"""

from __future__ import annotations

import argparse
import statistics
import time

import bench_many_small as small
import equinox as eqx
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)


PARTS = ("fori step", "while step", "batch step", "evaluate", "accumulate", "factorize",
         "propose", "conclude")


def _time(fn, *args, repeats: int) -> float:
    """Median warm seconds of `fn(*args)`."""
    jax.block_until_ready(fn(*args))
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def _problems(name: str, b: int):
    x, y, _, start = small.problems(name, "uniform", b)
    family_model = small.FAMILIES[name].model

    def model(p, x):
        return family_model(p, x, jnp)

    return model, jnp.asarray(x), jnp.asarray(y), jnp.asarray(start)


def _repeat(fn, steps: int):
    """`fn(*args)` `steps` times in one `fori_loop`. Result and arguments pass through an
    optimization barrier into the carry, so nothing is hoisted out of the loop."""
    def run(*args):
        def body(_, carry):
            return jax.lax.optimization_barrier((fn(*carry[1]), carry[1]))
        return jax.lax.fori_loop(0, steps, body, (fn(*args), args))
    return eqx.filter_jit(run)


def _per_step(loop, args, steps: int, repeats: int) -> float:
    """ms per step: (time of 2 + steps steps - time of 2 steps) / steps."""
    long, short = loop(2 + steps), loop(2)
    return 1e3 * (_time(long, *args, repeats=repeats) - _time(short, *args, repeats=repeats)
                  ) / steps


def _fori(k: int):
    """k Gauss-Newton steps of the batch in a `fori_loop` (no problem is left out)."""
    from hybrid_gn import _pipeline as pipeline

    def run(setups, data, states):
        step = jax.vmap(pipeline.gauss_newton_step)
        return jax.lax.fori_loop(0, k, lambda _, s: step(setups, data, s), states)
    return eqx.filter_jit(run)


def _while(k: int):
    """Up to k steps as `pipeline.run` takes them under `vmap` (a batched predicate)."""
    from hybrid_gn import _pipeline as pipeline

    def one(setup, data, state):
        def more(s):
            return pipeline.running(s) & (s.gauss_newton.iteration < k)

        def step(s):
            return pipeline.gauss_newton_step(setup, data, s)
        loop = getattr(pipeline, "_loop", None)  # None: before the trace was written in blocks
        if loop is None:
            return jax.lax.while_loop(more, step, state)
        return loop(setup.config, more, step, state)
    return eqx.filter_jit(jax.vmap(one))


def _batch(k: int):
    """Up to k steps as `fit_batch` takes them (its `compacted_loop`)."""
    from hybrid_gn import _pipeline as pipeline
    from hybrid_gn._compacted import compacted_loop

    def run(setups, data, states):
        def active(s):
            return pipeline.running(s) & (s.gauss_newton.iteration < k)

        return compacted_loop(active, lambda inputs, s: pipeline.gauss_newton_step(*inputs, s),
                              states, (setups, data))
    return eqx.filter_jit(run)


def _conclude(k: int):
    """`conclude` k times with the state as the carry (the trace written in place)."""
    from hybrid_gn import _pipeline as pipeline

    def run(setups, states, proposals, news):
        def body(_, s):
            return jax.vmap(pipeline.conclude)(setups, s, proposals, news)
        return jax.lax.fori_loop(0, k, body, states)
    return eqx.filter_jit(run)


def _hybrid_setup(name: str, b: int):
    """The vmapped setups, data and start states of the family's B problems."""
    from hybrid_gn import _pipeline as pipeline
    from hybrid_gn._config import DEFAULT
    from hybrid_gn._validate_batch import check_batch

    model, x, y, start = _problems(name, b)
    inputs = check_batch(model, start, jnp.broadcast_to(x, y.shape), y, None, None, None, True,
                         DEFAULT)
    wrapped, arrays = inputs.model, inputs.model_args[0]

    @eqx.filter_jit
    def prepare(p0, x, y, mask):
        def one(p0, x, y, mask):
            return pipeline.prepare(wrapped, p0, x, y, None, None, (arrays, None), mask,
                                    DEFAULT)
        setups, data = jax.vmap(one)(p0, x, y, mask)
        return setups, data, jax.vmap(pipeline.start)(setups)

    return prepare(inputs.p0, inputs.x, inputs.y, inputs.mask)


def _evaluate(setup, data, state):
    return setup.evaluate(state.gauss_newton.u, data, state.gauss_newton.use_qr)


def _accumulate(setup, data, state):
    from hybrid_gn._phases import _accumulate as accumulate

    u = state.gauss_newton.u
    return accumulate.fold_data(setup.residual, u,
                                accumulate.empty_accumulator(u.shape[0], u.dtype, False),
                                data, setup.config.jacobian)


def _factorize(jtj, jtr, cost):
    from hybrid_gn._phases import _accumulate as accumulate

    return accumulate.from_normal_equations(jtj, jtr, cost)


def _propose(setup, state):
    from hybrid_gn import _pipeline as pipeline

    return pipeline.propose(setup, state, None)


def hybrid(name: str, b: int, steps: int, repeats: int, parts) -> dict[str, float]:
    setups, data, states = _hybrid_setup(name, b)
    mid = _fori(2)(setups, data, states)
    jtj, jtr = jax.vmap(lambda m: (m.factor.T @ m.factor, m.gradient))(mid.gauss_newton.model)
    proposals = jax.vmap(_propose)(setups, mid)
    news = jax.vmap(_evaluate)(setups, data, mid)

    def part(fn):
        return lambda k: _repeat(jax.vmap(fn), k)

    cases = {
        "fori step": (_fori, (setups, data, states)),
        "while step": (_while, (setups, data, states)),
        "batch step": (_batch, (setups, data, states)),
        "evaluate": (part(_evaluate), (setups, data, mid)),
        "accumulate": (part(_accumulate), (setups, data, mid)),
        "factorize": (part(_factorize), (jtj, jtr, mid.gauss_newton.model.cost)),
        "propose": (part(_propose), (setups, mid)),
        "conclude": (_conclude, (setups, mid, proposals, news)),
    }
    out = {k: _per_step(loop, args, steps, repeats) for k, (loop, args) in cases.items()
           if k in parts}
    out["max steps"] = float(jnp.max(_while(1000)(setups, data, states).gauss_newton.iteration))
    return out


def optimistix(name: str, b: int, steps: int, repeats: int, parts) -> dict[str, float]:
    import optimistix as optx

    model, x, y, start = _problems(name, b)
    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)

    def fn(p, y):
        return model(p, x) - y, None

    def whole(k):  # optx.least_squares, capped at k steps
        def run(p0, y):
            return optx.least_squares(fn, solver, p0, args=y, has_aux=True, max_steps=k,
                                      throw=False).value
        return eqx.filter_jit(jax.vmap(run))

    trips = jax.vmap(lambda p0, y: optx.least_squares(
        fn, solver, p0, args=y, has_aux=True, max_steps=200, throw=False).stats["num_steps"])(
            start, y)
    return {"while step": _per_step(whole, (start, y), steps, repeats),
            "max steps": float(jnp.max(trips))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="gaussian_offset,double_exp,two_lorentzians")
    parser.add_argument("--size", default="1e4")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="hybrid_gn,optimistix")
    parser.add_argument("--parts", default=",".join(PARTS))
    args = parser.parse_args()
    b = int(float(args.size))
    for name in args.family.split(","):
        p = len(small.FAMILIES[name].params)
        for method, fn in (("hybrid_gn", hybrid), ("optimistix", optimistix)):
            if method not in args.only.split(","):
                continue
            ms = fn(name, b, args.steps, args.repeats, args.parts.split(","))
            parts = "  ".join(f"{k} {v:.2f}" for k, v in ms.items())
            print(f"{name} p={p} B={b} {method:10s} ms: {parts}", flush=True)



if __name__ == "__main__":
    main()
