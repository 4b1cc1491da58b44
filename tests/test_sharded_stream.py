"""`fit_stream(..., mesh=)` on 4 devices equals the one-device stream.

Each case runs in a subprocess with 4 host CPU devices (`XLA_FLAGS`), so the rest of the
suite keeps its one device. References: the same `fit_stream` on one device (params to
1e-10, the same iterations and status), the one-device accumulation of one pass (the
combined per-device accumulators equal it), and the uninterrupted fit for a fit stopped
on the mesh and resumed from its checkpoint (on the mesh and on one device).
"""

from __future__ import annotations

import textwrap

import pytest
from four_devices import run_on_four_devices

SCRIPT = textwrap.dedent('''
    import json, os, sys, tempfile
    import numpy as np, jax, jax.numpy as jnp
    import hybrid_gn
    from hybrid_gn._drivers import _stream_steps
    from hybrid_gn._drivers._checkpoint import read
    from hybrid_gn._drivers._stream_devices import OneDevice, placement
    from hybrid_gn._drivers._stream_run import StreamRun
    from hybrid_gn._phases._accumulate import finish
    from hybrid_gn._validate import check_fit
    from hybrid_gn.sources import as_source

    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",))

    def model(p, x):
        a, mu, s, b0, b1 = p
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    rng = np.random.default_rng(0)
    # 18 blocks of 256 (the last one short): 4 steps of 4 devices, then one of 2 blocks
    n = 4503
    x = np.linspace(0, 10, n)
    sigma = rng.uniform(0.1, 0.3, n)
    y = np.asarray(model(np.array([3, 5, .8, .5, .1]), x)) + sigma * rng.standard_normal(n)
    p0 = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
    bounds = ([0, 0, 0.1, -1, -1], [10, 10, 5, 5, 1])
    out = {}

    def stream(case, **kw):
        """The default case starts near the optimum without a warmup (the warmup compiles
        the longest); the slow one warms up from p0 and takes the QR path."""
        config = hybrid_gn.Config(chunk_size=128, warmup_max_points=500,
                                  factorization="qr" if "qr" in case else "normal",
                                  warmup="warmup" in case)
        return hybrid_gn.fit_stream(model, p0, kw.pop("source", (x, y, sigma)), bounds=bounds,
                                    config=config, block_size=256, progress=False, **kw)

    def apart(a, b):
        return float(np.max(np.abs(a.params / b.params - 1)))

    def summary(one, split):
        return {"params": apart(split, one),
                "iterations": [[int(r.warmup_iterations), int(r.gn_iterations), int(r.status)]
                               for r in (one, split)],
                "pcov": float(np.max(np.abs(split.pcov - one.pcov)) / np.max(np.abs(one.pcov))),
                "n_points": int(split.n_points), "success": bool(split.success),
                "devices": len(split.params.sharding.device_set)}

    def one_pass(factorization):
        """One pass at p0 (J^T r, J^T J, cost): on one device, and four devices combined."""
        config = hybrid_gn.Config(chunk_size=128)
        inputs = check_fit(model, p0, x[:256], y[:256], sigma[:256], None, True, config,
                           n_points=n)
        found = []
        for devices in (OneDevice(), placement(mesh, "data")):
            run = StreamRun(as_source((x, y, sigma)), n, 256, np.float64, True, 2, 8,
                            devices=devices)
            setup = devices.replicate(_stream_steps.make_setup(
                inputs.model, jnp.asarray(p0), None, inputs.model_args, config,
                run.sample(config), n))
            lin = finish(run.one_pass(setup, setup.problem.u0,
                                      devices.empty(setup, 5, np.float64, factorization == "qr")))
            found.append(np.concatenate([lin.gradient, (lin.factor.T @ lin.factor).ravel(),
                                         [lin.cost]]))
        return float(np.max(np.abs(found[1] - found[0])) / np.max(np.abs(found[0])))

    for case in sys.argv[1:]:
        if case.startswith("fit"):
            out[case] = summary(stream(case), stream(case, mesh=mesh))
            out[case]["pass"] = one_pass("qr" if "qr" in case else "normal")
        elif case == "resume":  # stopped on the mesh (as by Ctrl-C) and resumed
            one = stream("fit")
            path = os.path.join(tempfile.mkdtemp(), "fit.ckpt")
            calls = []

            def source():
                calls.append(1)
                if len(calls) == 6:  # the third Gauss-Newton pass
                    raise KeyboardInterrupt
                return iter([(x[i:i + 1000], y[i:i + 1000], sigma[i:i + 1000])
                             for i in range(0, n, 1000)])

            try:
                stream("fit", source=source, mesh=mesh, checkpoint=path,
                       checkpoint_every=1)
            except KeyboardInterrupt:
                pass
            saved = read(path)
            out["resume"] = {
                "stopped_at": saved.iteration, "finished": saved.header["progress"]["finished"],
                "on_mesh": summary(one, stream("fit", mesh=mesh, resume=path)),
                "on_one_device": summary(one, stream("fit", resume=path))}
    print(json.dumps(out))
''')


def run(*cases: str) -> dict:
    return run_on_four_devices(SCRIPT, *cases)


def assert_same(case: dict) -> None:
    assert case["params"] < 1e-10 and case["pcov"] < 1e-8, case
    one, split = case["iterations"]
    assert one == split, case  # the same warmup and Gauss-Newton iterations, same status
    assert case["success"] and case["n_points"] == 4503


def test_stream_on_four_devices_equals_the_one_device_stream_and_resumes():
    """Blocks spread round-robin (the last step holds 2 of the 4), sigma and bounds; a fit
    stopped on the mesh resumes from its checkpoint on the mesh or on one device."""
    out = run("fit", "resume")
    assert_same(out["fit"])
    assert out["fit"]["devices"] == 4
    assert out["fit"]["pass"] < 1e-12  # one pass: four accumulators combined = one device's
    resume = out["resume"]
    assert resume["stopped_at"] >= 1 and not resume["finished"], resume
    assert_same(resume["on_mesh"])
    assert_same(resume["on_one_device"])


@pytest.mark.slow
def test_stream_on_four_devices_qr_path_after_a_warmup():
    """The streamed QR (each device's (p + 1)-square factor, gathered and re-factored),
    after the L-BFGS warmup run on every device alike."""
    out = run("fit-qr-warmup")
    assert_same(out["fit-qr-warmup"])
    assert out["fit-qr-warmup"]["iterations"][0][0] > 0  # the warmup ran
    assert out["fit-qr-warmup"]["pass"] < 1e-12


def test_stream_refuses_a_mesh_without_the_data_axis():
    import jax
    import numpy as np

    import hybrid_gn

    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match="data_axis 'points' is not an axis of the mesh"):
        hybrid_gn.fit_stream(lambda p, x: p[0] * x, np.ones(1), (np.arange(3.0),) * 2,
                             mesh=mesh, data_axis="points", progress=False)
