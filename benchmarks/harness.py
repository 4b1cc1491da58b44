"""Shared harness of the benchmark scripts: fresh subprocesses, timeouts, medians, tables.

A measurement is a module-level function of a benchmark script taking JSON arguments and
returning a JSON dict. In the parent:

    out = harness.in_subprocess(measure, "hybrid_gn", 10**6, timeout=600)
    out.status            # "ok", "timeout" or "error"; out.value is the dict when ok
    out.max_rss_mib       # the child's peak RSS over its whole life (ru_maxrss)
    outs = harness.in_subprocesses(measure, "hybrid_gn", 10**6, runs=3, timeout=600)
    harness.pooled(outs, "warm")          # Stats (median, min, max) over the runs
    print(harness.markdown_table(["method", "warm s"], [["hybrid_gn", stats.text()]]))

Each call starts `python harness.py SCRIPT FUNCTION ARGS RESULT`, which imports the script
under another name than `__main__` (its `main` does not run), calls the function and
writes the result as JSON; compile caches, JAX's backend and peak memory are the run's
own. A run past its timeout is killed with its process group and reported as "timeout";
one that raises as "error" with the tail of its stderr. In the child:

    first, warm = harness.time_calls(f, repeats=3)  # first call, then 3 warm calls
    first.seconds[0], first.compile_s, warm.stats.median, warm.compiles (should be 0)
    with harness.PeakRSS() as peak: ...         # peak.mib: VmHWM above VmRSS at entry

`timed_calls` and `time_calls` wait for JAX results (`jax.block_until_ready`) when JAX is
loaded. No JAX import here: a child that does not use JAX does not pay for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "timeout", "error"]


# ------------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Stats:
    """Median and spread of repeated samples."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        values = [float(v) for v in samples]
        if not values:
            raise ValueError("no samples")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, spec: str = ".3f", scale: float = 1.0) -> str:
        """'median (min–max)' of the samples times `scale`; the median alone for one sample."""
        med = format(self.median * scale, spec)
        if self.n == 1:
            return med
        return f"{med} ({self.min * scale:{spec}}–{self.max * scale:{spec}})"


# --------------------------------------------------------------------- in the child


def _block(value: Any) -> Any:
    if "jax" in sys.modules:
        import jax

        return jax.block_until_ready(value)
    return value


class _CompileClock:
    """Seconds and count of XLA backend compiles while active (JAX's monitoring events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0

    def _listen(self, event: str, duration_secs: float, **_: Any) -> None:
        if event == self.EVENT:
            self.seconds += duration_secs
            self.count += 1

    def __enter__(self) -> _CompileClock:
        if "jax" in sys.modules:
            from jax import monitoring

            monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        if "jax" in sys.modules:
            from jax import monitoring

            with contextlib.suppress(AssertionError, ValueError):
                monitoring.unregister_event_duration_listener(self._listen)


@dataclass(frozen=True)
class Calls:
    """Wall times of some calls of one function, and the XLA compiles they triggered."""

    seconds: list[float]
    result: Any
    compile_s: float
    compiles: int

    @property
    def stats(self) -> Stats:
        return Stats.of(self.seconds)


def timed_calls(f: Callable[[], Any], repeats: int = 1) -> Calls:
    """Call `f()` `repeats` times, timing each; the last result is kept.

    A JAX result is waited for (`jax.block_until_ready`) inside the timing. XLA compiles
    (JAX's backend-compile events) are counted and timed over all the calls when JAX was
    imported before them.
    """
    seconds = []
    result = None
    with _CompileClock() as clock:
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = _block(f())
            seconds.append(time.perf_counter() - t0)
    return Calls(seconds, result, clock.seconds, clock.count)


def time_calls(f: Callable[[], Any], repeats: int) -> tuple[Calls, Calls]:
    """The first call of `f` (tracing and compiling included), then `repeats` warm ones."""
    return timed_calls(f), timed_calls(f, repeats)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_mib() -> float:
    """Resident memory of this process now (Linux)."""
    return _status_kib("VmRSS") / 1024


def max_rss_mib() -> float:
    """Peak resident memory of this process since it started (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class PeakRSS:
    """Peak RSS of a block above the RSS at its start (Linux).

    `reset=True` first resets the kernel's high-water mark (VmHWM) to the current RSS
    through /proc/self/clear_refs, so earlier peaks (a compile, a data set since freed) do
    not count; `reset=False` reports the process's peak since it started, above the RSS at
    entry. `baseline_mib` and `mib` are set on entry and exit.
    """

    reset: bool = True
    baseline_mib: float = 0.0
    mib: float = float("nan")

    def __enter__(self) -> PeakRSS:
        self.baseline_mib = rss_mib()
        if self.reset:
            Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        self.mib = _status_kib("VmHWM") / 1024 - self.baseline_mib


def _child_main(argv: list[str]) -> None:
    script, name, args_json, result_path = argv
    sys.path.insert(0, str(Path(script).resolve().parent))
    spec = importlib.util.spec_from_file_location("_bench_child", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    value = getattr(module, name)(*json.loads(args_json))
    payload = {"value": value, "max_rss_mib": max_rss_mib()}
    Path(result_path).write_text(json.dumps(payload))


# -------------------------------------------------------------------- in the parent


@dataclass
class Outcome:
    """One run of a measurement in its own process."""

    status: Status
    value: Any = None
    wall_s: float = 0.0
    max_rss_mib: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """'timed out after 600 s' / 'failed: <last stderr line>' / 'ok'."""
        if self.status == "timeout":
            return f"timed out after {self.wall_s:.0f} s"
        if self.status == "error":
            return f"failed: {self.detail.splitlines()[-1] if self.detail else '?'}"
        return "ok"


def in_subprocess(fn: Callable[..., Any], *args: Any, timeout: float | None = None,
                  env: dict[str, str] | None = None) -> Outcome:
    """Run `fn(*args)` in a fresh Python process and return its outcome.

    `fn` must be a module-level function of a script or module with a file; `args` and
    its return value must be JSON. `env` adds to the environment. Never raises for the
    child's failures: a timeout or an exception comes back as the outcome's status.
    """
    script = sys.modules[fn.__module__].__file__
    if script is None:
        raise ValueError(f"{fn.__module__} has no file")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, str(Path(script).resolve()), fn.__name__,
               json.dumps(list(args)), str(result_path)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            return Outcome("timeout", wall_s=time.perf_counter() - t0, detail=stderr)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not result_path.exists():
            detail = stderr.strip() or f"exit status {proc.returncode}"
            return Outcome("error", wall_s=wall, detail=detail)
        payload = json.loads(result_path.read_text())
    return Outcome("ok", payload["value"], wall, payload["max_rss_mib"], stderr)


def in_subprocesses(fn: Callable[..., Any], *args: Any, runs: int = 1,
                    timeout: float | None = None,
                    env: dict[str, str] | None = None) -> list[Outcome]:
    """`in_subprocess` `runs` times (each a fresh process); stops at the first failure."""
    out = []
    for _ in range(max(runs, 1)):
        out.append(in_subprocess(fn, *args, timeout=timeout, env=env))
        if not out[-1].ok:
            break
    return out


def pooled(outcomes: Sequence[Outcome], key: str) -> Stats | None:
    """Stats of `value[key]` over the successful outcomes (a number or a list of numbers
    each); None when none succeeded."""
    samples: list[float] = []
    for o in outcomes:
        if o.ok:
            v = o.value[key]
            samples.extend(v if isinstance(v, list) else [v])
    return Stats.of(samples) if samples else None


def failure(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The first outcome that is not ok, if any."""
    return next((o for o in outcomes if not o.ok), None)


def sci(x: float) -> str:
    """A count in short scientific notation: 100000 -> '1e5', 250 -> '2.5e2'."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; a cell is str() of its value, '–' for None, Stats as text()."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, Stats):
            return v.text()
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_out(text: str, path: Path | None) -> None:
    """Print `text` and, when `path` is given, also write it there."""
    print(text, flush=True)
    if path is not None:
        path.write_text(text + "\n")


if __name__ == "__main__":
    _child_main(sys.argv[1:])
