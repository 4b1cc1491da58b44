"""The streaming driver's tqdm bars: iterations, and the chunks of the current pass."""

from __future__ import annotations

from .._pipeline import PipelineState
from .._result import Phase


class Progress:
    """tqdm bars over iterations and over the chunks of the current pass (or nothing)."""

    def __init__(self, enabled: bool, n_chunks: int):
        self.enabled = enabled
        self.n_chunks = n_chunks

    def __enter__(self) -> Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self.outer = tqdm(desc="hybrid_gn iterations", unit="it", position=0)
            self.inner = tqdm(desc="pass", total=self.n_chunks, unit="chunk", position=1,
                              leave=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.inner.close()
            self.outer.close()

    def iteration(self, state: PipelineState, done: int) -> None:
        if not self.enabled or done == 0:
            return
        trace = state.trace
        k = min(done, trace.cost.shape[0]) - 1
        phase = "warmup" if int(trace.phase[k]) == Phase.WARMUP else "gauss-newton"
        self.outer.n = done
        self.outer.set_postfix(phase=phase, cost=f"{float(trace.cost[k]):.6g}",
                               grad=f"{float(trace.grad_norm[k]):.3g}",
                               radius=f"{float(trace.radius[k]):.3g}")

    def new_pass(self) -> None:
        if self.enabled:
            self.inner.reset(total=self.n_chunks)

    def chunk(self, count: int = 1) -> None:
        if self.enabled:
            self.inner.update(count)
