"""One fit whose data is split over several processes (hosts), each holding only its share.

Every process runs this same script: it joins the JAX runtime, reads its own share of
the points, places it on the global mesh and calls `hybrid_gn.fit(..., mesh=mesh)`. Each
Gauss-Newton pass then crosses the network once, with p x p + p + 1 numbers; every
process ends with the whole answer.

On one machine, two processes with two CPU devices each (this script starts them):

    python examples/multihost.py --local 2

On a cluster (SLURM, Open MPI) or a TPU pod, start it once per host with the launcher;
`jax.distributed.initialize()` then finds the coordinator, the number of processes and
this process's id by itself:

    srun --nodes 4 python examples/multihost.py
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

import numpy as np

N_POINTS = 1_000_000
TRUTH = np.array([3.0, 5.0, 0.8, 0.5, 0.1])


def share(process: int, processes: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's points (x, y): in practice, its own files or rows of a dataset."""
    rows = np.array_split(np.arange(N_POINTS), processes)[process]
    x = np.linspace(0.0, 10.0, N_POINTS)[rows]
    a, mu, s, b0, b1 = TRUTH
    noise = np.random.default_rng(process).normal(0.0, 0.2, rows.size)
    return x, a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x + noise


def fit(coordinator: str | None, processes: int | None, process: int | None) -> None:
    """Join the runtime, place this process's share on the global mesh, fit."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if coordinator is None:  # a cluster or a TPU pod: everything is found from the environment
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator, processes, process,
                                   initialization_timeout=60, heartbeat_timeout_seconds=30)
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    import hybrid_gn

    def model(p, x):
        a, mu, s, b0, b1 = p
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    points = NamedSharding(mesh, PartitionSpec("data"))
    # every process must hold as many points per device: pad the shorter shares with
    # points that `mask` leaves out
    x, y = share(jax.process_index(), jax.process_count())
    width = -(-N_POINTS // jax.process_count())
    mask = np.arange(width) < x.size
    x, y = (np.pad(a, (0, width - a.size), mode="edge") for a in (x, y))
    x, y, mask = (jax.make_array_from_process_local_data(points, a) for a in (x, y, mask))
    result = hybrid_gn.fit(model, np.array([2.0, 4.6, 1.1, 0.2, 0.0]), x, y, mask=mask,
                           mesh=mesh)
    if jax.process_index() == 0:
        print(f"{jax.process_count()} processes, {jax.device_count()} devices: "
              f"params {np.round(np.asarray(result.params), 4)} "
              f"+- {np.round(np.asarray(result.perr), 4)}, {result.message}")


def launch_local(processes: int) -> int:
    """Start `processes` copies of this script on this machine, two CPU devices each,
    coordinated on a free localhost port; if one fails, stop the others."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        coordinator = f"localhost:{s.getsockname()[1]}"
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2")
    running = [subprocess.Popen([sys.executable, __file__, "--coordinator", coordinator,
                                 "--processes", str(processes), "--process", str(i)], env=env)
               for i in range(processes)]
    codes = [p.wait() for p in running]
    failed = [i for i, code in enumerate(codes) if code != 0]
    if failed:
        print(f"processes {failed} failed (exit codes {[codes[i] for i in failed]})",
              file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=int, help="start this many processes here")
    parser.add_argument("--coordinator", help="host:port of process 0 (set by --local)")
    parser.add_argument("--processes", type=int)
    parser.add_argument("--process", type=int)
    args = parser.parse_args()
    if args.local:
        return launch_local(args.local)
    fit(args.coordinator, args.processes, args.process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
