"""Run a test script in a subprocess that sees 4 host CPU devices (the suite keeps one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_on_four_devices(script: str, *cases: str) -> dict:
    """The JSON the script prints last, run with `cases` as its arguments."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_ENABLE_X64="1")
    done = subprocess.run([sys.executable, "-c", script, *cases], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
