"""`fit(..., mesh=)` and `fit_batch(..., mesh=)` on 4 devices equal the one-device fits.

Each case runs in a subprocess with 4 host CPU devices (`XLA_FLAGS`), so the rest of the
suite keeps its one device. References: the same `fit` on one device (params to 1e-10,
same iterations and status, covariance), the single-device gradient, and the compiled
HLO, whose only collectives must be the per-pass all-reduce of p x p + p + 1 numbers (or
the gather of the (p + 1)-square QR factors) and the one gather of the warmup subsample:
nothing the size of the data.
"""

from __future__ import annotations

import textwrap

import pytest
from four_devices import run_on_four_devices

SCRIPT = textwrap.dedent('''
    import json, re, sys
    import numpy as np, jax, jax.numpy as jnp
    import hybrid_gn
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    from hybrid_gn._drivers import _sharded
    from hybrid_gn._validate import check_fit

    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",))

    def model(p, x):
        a, mu, s, b0, b1 = p
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    rng = np.random.default_rng(0)
    n = 4003  # not a multiple of the 4 devices, nor of the chunk
    x = np.linspace(0, 10, n)
    sigma = rng.uniform(0.1, 0.3, n)
    y = np.asarray(model(np.array([3, 5, .8, .5, .1]), x)) + sigma * rng.standard_normal(n)
    p0 = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
    config = hybrid_gn.Config(chunk_size=256, warmup_max_points=500)
    out = {}

    def compare(name, config, **kw):
        one = hybrid_gn.fit(model, p0, x, y, config=config, **kw)
        split = hybrid_gn.fit(model, p0, x, y, config=config, mesh=mesh, **kw)
        out[name] = {
            "params": float(np.max(np.abs(split.params / one.params - 1))),
            "pcov": float(np.max(np.abs(split.pcov - one.pcov)) / np.max(np.abs(one.pcov))),
            "iterations": [[int(r.warmup_iterations), int(r.gn_iterations), int(r.status)]
                           for r in (one, split)],
            "success": bool(split.success), "n_points": int(split.n_points)}

    for case in sys.argv[1:]:
        if case == "plain":
            compare("plain", config, sigma=sigma,
                    bounds=([0, 0, 0.1, -1, -1], [10, 10, 5, 5, 1]))
        elif case == "objective":  # a robust loss, group weights and a penalty
            robust = hybrid_gn.Config(chunk_size=256, warmup_max_points=500, loss="huber",
                                      f_scale=0.3,
                                      penalty=hybrid_gn.GroupPenalty([[3, 4]], 10.0))
            compare("objective", robust, sigma=sigma, group_weights=hybrid_gn.GroupWeights(
                [1.0, 2.0], labels=(x > 5).astype(int)))
        elif case == "qr":  # ill-conditioned: J^T J loses half the digits, the QR path
            qr = hybrid_gn.Config(chunk_size=256, warmup_max_points=500, qr_condition=1.0)
            compare("qr", qr)
        elif case == "placed":  # arrays already on the (Explicit) mesh are used in place
            m = 4000
            xp = jax.device_put(x[:m], NamedSharding(mesh, PartitionSpec("data")))
            yp = jax.device_put(y[:m], NamedSharding(mesh, PartitionSpec("data")))
            one = hybrid_gn.fit(model, p0, x[:m], y[:m], config=config)
            split = hybrid_gn.fit(model, p0, xp, yp, config=config, mesh=mesh)
            out["placed"] = float(np.max(np.abs(split.params / one.params - 1)))
        elif case == "batch":  # problems split over the devices: 10, not a multiple of 4
            b, m = 10, 64
            xb = np.broadcast_to(np.linspace(0, 4, m), (b, m))
            truth = np.stack([rng.uniform(1, 3, b), rng.uniform(0.5, 2, b),
                              rng.uniform(-1, 1, b)], 1)
            yb = (truth[:, :1] * np.exp(-truth[:, 1:2] * xb) + truth[:, 2:]
                  + 0.01 * rng.standard_normal((b, m)))

            def decay(p, x):
                return p[0] * jnp.exp(-p[1] * x) + p[2]

            one = hybrid_gn.fit_batch(decay, np.tile([1.0, 1.0, 0.0], (b, 1)), xb, yb)
            split = hybrid_gn.fit_batch(decay, np.tile([1.0, 1.0, 0.0], (b, 1)), xb, yb,
                                        mesh=mesh)
            out["batch"] = {
                # in standard errors: the offsets are near zero, so relative to the value
                # would magnify rounding
                "params": float(np.max(np.abs(split.params - one.params) / one.perr)),
                "iterations_apart": int(np.max(np.abs(split.gn_iterations
                                                      - one.gn_iterations))),
                "success": bool(np.all(split.success)),
                "shape": list(split.params.shape)}
        elif case == "grad":
            def centre(y, mesh):
                return hybrid_gn.fit(model, p0, x, y, config=config, mesh=mesh).params[1]
            g1 = jax.grad(lambda y: centre(y, None))(jnp.asarray(y))
            g4 = jax.grad(lambda y: centre(y, mesh))(jnp.asarray(y))
            out["grad"] = float(jnp.max(jnp.abs(g4 - g1)) / jnp.max(jnp.abs(g1)))
        elif case.startswith("hlo"):
            auto = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
            m = 40000  # 10000 points a device; the warmup subsample is 500
            xs, ys = (jax.device_put(a, NamedSharding(auto, PartitionSpec("data")))
                      for a in (np.linspace(0, 10, m), np.ones(m)))
            collectives = {}
            for factorization in case.split(":")[1].split(","):
                c = hybrid_gn.Config(chunk_size=256, warmup_max_points=500,
                                     factorization=factorization)
                inputs = check_fit(model, p0, xs, ys, None, None, True, c)
                text = _sharded._fit_sharded.jitted.lower(
                    *inputs, False, c, auto, "data").compile().as_text()
                found = []
                for line in text.splitlines():
                    op = re.search(r"= (.*?) (all-reduce|all-gather|all-to-all|"
                                   r"collective-permute|reduce-scatter)(-start)?\\(", line)
                    if op:
                        sizes = [int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                                 for dims in re.findall(r"\\[([0-9,]*)\\]", op.group(1))]
                        found.append([op.group(2), sum(sizes)])
                collectives[factorization] = found
            out["hlo"] = collectives
    print(json.dumps(out))
''')


def run(*cases: str) -> dict:
    return run_on_four_devices(SCRIPT, *cases)


def assert_same(case: dict) -> None:
    assert case["params"] < 1e-10 and case["pcov"] < 1e-8, case
    one, split = case["iterations"]
    assert one == split, case  # the same warmup and Gauss-Newton iterations, same status
    assert case["success"] and case["n_points"] == 4003


def assert_collectives(hlo: dict) -> None:
    p = 5
    for factorization, found in hlo.items():
        kinds = {kind for kind, _ in found}
        assert kinds <= {"all-reduce", "all-gather", "collective-permute"}, found
        # per pass: J^T J, J^T r and the cost in one all-reduce, or the 4 QR factors
        # ("auto" holds both routes)
        per_pass = {"normal": [p * p + p + 1], "qr": [4 * (p + 1) ** 2],
                    "auto": [p * p + p + 1, 4 * (p + 1) ** 2]}[factorization]
        for size in per_pass:
            assert any(s == size for _, s in found), (factorization, size, found)
        # nothing else but the one gather of the 500-point warmup subsample (with its
        # neighbours' offsets); a device holds 10000 points
        assert max(size for _, size in found) <= 500 + 8, (factorization, found)


def test_sharded_fit_equals_the_single_device_fit_and_only_reduces_small_sums():
    """Bounds, sigma, n not a multiple of devices or chunks; fit_batch with the problems
    split; the compiled program moves nothing the size of the data between devices."""
    out = run("plain", "batch", "hlo:auto")
    assert_same(out["plain"])
    assert_collectives(out["hlo"])
    batch = out["batch"]  # fit_batch(mesh=): each device its own problems
    # the same optimum (to 1e-6 standard errors, as against scipy elsewhere); a problem may
    # take its rounding-level last step in another iteration: each device's program is
    # compiled for its own sub-batch, and the stopping tests at rounding level see that
    assert batch["params"] < 1e-6 and batch["iterations_apart"] <= 2 and batch["success"]
    assert batch["shape"] == [10, 3]


@pytest.mark.slow
def test_sharded_qr_path_placed_inputs_and_gradient():
    """The QR path (its HLO too), inputs already placed on an Explicit mesh, the implicit
    rule on sharded data (d centre / d y equals the single-device one), and a robust loss
    with group weights and a penalty (the same accumulation as one device's). The
    default suite has the fast variant: the normal-equations path, the HLO of "auto",
    which holds both routes, and fit_batch."""
    out = run("qr", "placed", "grad", "objective", "hlo:normal,qr")
    assert_same(out["qr"])
    assert_same(out["objective"])
    assert out["placed"] < 1e-10
    assert out["grad"] < 1e-8
    assert_collectives(out["hlo"])


def test_sharded_fit_refuses_what_is_not_a_mesh():
    import numpy as np

    import hybrid_gn

    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        hybrid_gn.fit(lambda p, x: p[0] * x, np.ones(1), np.arange(3.0), np.arange(3.0),
                      mesh="data")
