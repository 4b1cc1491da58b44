"""`fit(..., mesh=)` over two processes (two hosts on one machine) equals the one-process fit.

Two worker processes with two CPU devices each join one JAX runtime
(`jax.distributed.initialize` with a localhost coordinator, collectives over gloo); each
holds only its half of the data (`jax.make_array_from_process_local_data` onto the
global 4-device mesh) and runs the same `fit`. The reference is the same fit in one
process on one device: every process must get its parameters to 1e-10, with the same
iterations and status. A process that dies must not leave the other waiting: it stops
with JAX's message within the heartbeat timeout, and the launcher's own deadline bounds
every case.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

WORKER = textwrap.dedent('''
    import json, os, sys
    process, port, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import jax
    import numpy as np

    if mode == "early" and process == 1:
        sys.exit(3)  # never joins
    if mode != "single":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                                   process_id=process, initialization_timeout=5,
                                   heartbeat_timeout_seconds=3)
    if mode == "late" and process == 1:
        os._exit(3)  # joins, then dies before the fit

    import jax.numpy as jnp
    import hybrid_gn
    from jax.sharding import NamedSharding, PartitionSpec

    def model(p, x):
        a, mu, s, b0, b1 = p
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    rng = np.random.default_rng(0)
    n, real = 4000, 3995  # the last 5 points are padding (mask False) that evens the shares
    x = np.linspace(0, 10, n)
    sigma = rng.uniform(0.1, 0.3, n)
    y = np.asarray(model(np.array([3, 5, .8, .5, .1]), x)) + sigma * rng.standard_normal(n)
    y[real:], sigma[real:] = np.nan, -1.0  # what padding holds must not matter
    mask = np.arange(n) < real
    if mode == "nan":
        y[3000] = np.nan  # a real point of process 1's share
    p0 = np.array([2.0, 4.6, 1.1, 0.2, 0.0])
    bounds = ([0, 0, 0.1, -1, -1], [10, 10, 5, 5, 1])
    # no warmup: compiling it would double the time of the test, and the warmup is the
    # same replicated program as in the one-host sharded fit (tests/test_sharded.py)
    config = hybrid_gn.Config(chunk_size=256, warmup=False)
    if mode == "single":
        result = hybrid_gn.fit(model, p0, x[:real], y[:real], sigma=sigma[:real],
                               bounds=bounds, config=config)
    else:
        assert jax.process_count() == 2 and jax.device_count() == 4
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        points = NamedSharding(mesh, PartitionSpec("data"))
        share = slice(process * n // 2, (process + 1) * n // 2)  # all this process holds
        x, y, sigma, mask = (jax.make_array_from_process_local_data(points, a[share])
                             for a in (x, y, sigma, mask))
        assert not y.is_fully_addressable
        result = hybrid_gn.fit(model, p0, x, y, sigma=sigma, mask=mask, bounds=bounds,
                               config=config, mesh=mesh)
    print(json.dumps({"params": np.asarray(result.params).tolist(),
                      "perr": np.asarray(result.perr).tolist(),
                      "iterations": [int(result.warmup_iterations), int(result.gn_iterations),
                                     int(result.status)],
                      "n_points": int(result.n_points)}))
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(mode: str, processes: int, deadline: float = 120) -> list[subprocess.CompletedProcess]:
    """Run WORKER as `processes` processes (2 CPU devices each) and wait for all of them;
    past `deadline` seconds every one still running is killed and the test fails, naming
    them."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_ENABLE_X64="1", PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    port = str(free_port())
    running = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, mode], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(processes)]
    start = time.monotonic()
    while any(p.poll() is None for p in running) and time.monotonic() - start < deadline:
        time.sleep(0.2)
    stuck = [i for i, p in enumerate(running) if p.poll() is None]
    for i in stuck:
        running[i].kill()
    done = [subprocess.CompletedProcess(p.args, p.wait(), *p.communicate()) for p in running]
    assert not stuck, (f"processes {stuck} still running after {deadline} s: "
                       + "\n".join(d.stderr[-1500:] for d in done))
    return done


def answer(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_processes_each_holding_half_the_data_get_the_one_process_answer():
    """Sigma, bounds and a mask spread over the processes too; every process ends with
    the whole answer."""
    reference = answer(launch("single", 1)[0])
    workers = [answer(done) for done in launch("two", 2)]
    for out in workers:
        apart = max(abs(a / b - 1) for a, b in zip(out["params"], reference["params"],
                                                    strict=True))
        assert apart < 1e-10, (out, reference)
        assert out["iterations"] == reference["iterations"] and out["n_points"] == 3995
        assert max(abs(a / b - 1) for a, b in zip(out["perr"], reference["perr"],
                                                  strict=True)) < 1e-8
    assert workers[0] == workers[1]


def test_a_process_that_dies_stops_the_other_within_the_heartbeat_timeout():
    """Process 1 joins and exits before the fit: process 0, waiting for it inside the fit,
    is stopped by JAX's coordination service (heartbeat timeout 3 s), not left hanging."""
    start = time.monotonic()
    survivor, dead = launch("late", 2, deadline=60)
    assert dead.returncode == 3
    assert survivor.returncode != 0
    assert "another task died" in survivor.stderr, survivor.stderr[-3000:]
    assert time.monotonic() - start < 60


def test_bad_data_in_one_share_is_refused_by_every_process():
    """The value checks count over the whole spread data (one compiled reduction), so
    both processes raise the same error, not only the one holding the NaN (the other
    would wait for it in the fit)."""
    for done in launch("nan", 2, deadline=60):
        assert done.returncode == 1
        assert "ValueError: y contains NaN or Inf (1 values)" in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_the_example_runs_two_local_processes():
    done = subprocess.run([sys.executable, "examples/multihost.py", "--local", "2"],
                          capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"2 processes, 4 devices: params \[([^]]*)\]", done.stdout)
    assert found, done.stdout
    # the example's truth, within its noise (sd 0.2 on 1e6 points)
    params = [float(v) for v in found.group(1).split()]
    assert max(abs(a - b) for a, b in zip(params, [3, 5, 0.8, 0.5, 0.1], strict=True)) < 0.01


@pytest.mark.slow
def test_a_process_that_never_joins_stops_the_other_within_the_initialization_timeout():
    """Process 1 exits before `jax.distributed.initialize`: process 0 gives up connecting
    after its initialization timeout (5 s) with JAX's message."""
    survivor, dead = launch("early", 2, deadline=60)
    assert dead.returncode == 3
    assert survivor.returncode != 0
    assert "DEADLINE_EXCEEDED" in survivor.stderr, survivor.stderr[-3000:]
