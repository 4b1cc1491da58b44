"""Datasets of an HDF5 file as a source, read slice by slice."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np

from ._protocol import Block, ChunkSource, native_dtype


class HDF5Source(ChunkSource):
    """Named datasets of an HDF5 file: `x` (n,) or (n, d), `y` (n,), optional `sigma` (n,).

    For data on disk, larger than memory. The file is opened for each pass
    (in the reading thread) and read one slice at a time, so memory stays at
    one chunk whatever the file size. Big-endian datasets are converted. It
    has random access, so the warmup subsample reads only the chunks it
    needs.

    Args:
        path: the HDF5 file.
        x: the name of the x dataset, (n,) or (n, d).
        y: the name of the y dataset, (n,).
        sigma: None, or the name of the (n,) sigma dataset.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a dataset is missing (the message lists those there) or
            has the wrong shape.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import h5py
        >>> import numpy as np
        >>> import hybrid_gn
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "data.h5")
        ...     with h5py.File(path, "w") as file:
        ...         _ = file.create_dataset("time", data=np.linspace(0.0, 1.0, 10))
        ...         _ = file.create_dataset("signal", data=np.ones(10))
        ...     source = hybrid_gn.sources.HDF5Source(path, x="time", y="signal")
        ...     print(source.n_points, [block.length for block in source.blocks(4)])
        10 [4, 4, 2]
    """

    random_access = True

    def __init__(self, path: str | os.PathLike, x: str = "x", y: str = "y",
                 sigma: str | None = None):
        import h5py

        self.path = os.fspath(path)
        self.names = {"x": x, "y": y, "sigma": sigma}
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"HDF5 file not found: {self.path}")
        with h5py.File(self.path, "r") as f:
            shapes = {}
            for field, name in self.names.items():
                if name is None:
                    continue
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    available = sorted(k for k in f if isinstance(f[k], h5py.Dataset))
                    raise ValueError(f"HDF5 dataset {name!r} (for {field}) does not exist in "
                                     f"{self.path}; datasets there: {available}")
                shapes[field] = f[name].shape
        n = shapes["y"][0] if len(shapes["y"]) == 1 else None
        if n is None:
            raise ValueError(f"{self.describe('y')} must be 1-D, got shape {shapes['y']}")
        if len(shapes["x"]) not in (1, 2) or shapes["x"][0] != n:
            raise ValueError(f"{self.describe('x')} must have shape (n,) or (n, d) with "
                             f"n = {n} (the length of {self.describe('y')}), "
                             f"got {shapes['x']}")
        if sigma is not None and shapes["sigma"] != (n,):
            raise ValueError(f"{self.describe('sigma')} must have shape ({n},), "
                             f"got {shapes['sigma']}")
        self.n_points = int(n)

    def describe(self, field: str) -> str:
        return f"dataset {self.names[field]!r} of {os.path.basename(self.path)}"

    def _check_length(self, f) -> None:
        """The file is read anew for each pass: it must still hold the points it had."""
        for field, name in self.names.items():
            if name is not None and f[name].shape[0] != self.n_points:
                raise ValueError(f"the source changed between passes: {self.describe(field)} "
                                 f"now has {f[name].shape[0]} points, it had {self.n_points}")

    def _read(self, f, start: int, stop: int) -> Block:
        sigma = self.names["sigma"]
        return Block(f[self.names["x"]][start:stop], f[self.names["y"]][start:stop],
                     None if sigma is None else f[sigma][start:stop])

    def block_range(self, start: int, stop: int) -> Block:
        import h5py

        with h5py.File(self.path, "r") as f:
            return self._read(f, start, stop)

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[int, int, Block], None]]:
        import h5py

        with h5py.File(self.path, "r") as f:
            self._check_length(f)
            datasets = {field: f[name] for field, name in self.names.items() if name is not None}

            def read(start: int, stop: int, out: Block) -> None:
                for field, buffer in (("x", out.x), ("y", out.y), ("sigma", out.sigma)):
                    if buffer is not None:
                        datasets[field].read_direct(buffer, np.s_[start:stop])

            yield read

    def blocks(self, size: int) -> Iterator[Block]:
        """Reads into two or three buffers reused for every block of the pass."""
        import h5py

        with h5py.File(self.path, "r") as f:
            datasets = [f[name] for name in self.names.values() if name is not None]
            self._check_length(f)
            buffers = [np.empty((size, *d.shape[1:]), native_dtype(d.dtype)) for d in datasets]
            for start in range(0, self.n_points, size):
                m = min(size, self.n_points - start)
                for d, b in zip(datasets, buffers, strict=True):
                    d.read_direct(b, np.s_[start:start + m], np.s_[0:m])
                views = [b[:m] for b in buffers]
                yield Block(views[0], views[1], views[2] if len(views) == 3 else None)
