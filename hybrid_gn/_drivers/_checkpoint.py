"""Checkpoints of the streaming driver: atomic writes, checked reads.

A checkpoint is an `.npz` file (no pickle) holding the optimizer state's
leaves, a JSON header (format version, problem fingerprint, configuration,
progress) and a SHA-256 digest of both. It is written to a temporary file in
the same directory, flushed to disk and renamed over the target, so a crash
leaves either the previous checkpoint or the new one, never half of one.

Reading verifies the digest and then that the header's fingerprint and
configuration equal the current problem's, and that every leaf has the
shape and dtype the current problem expects; anything else is refused with a
`CheckpointError` (a ValueError) that says what differs, so a fit never
resumes silently into a wrong state.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jaxtyping import PyTree

FORMAT = "hybrid_gn-checkpoint-3"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (corrupt, truncated or not this problem's).

    `fit_stream(..., resume=path)` raises it instead of resuming silently
    into a wrong state: when the file is truncated or corrupt (its digest
    does not match), has another format, or was written for another problem,
    configuration or data; the message says what differs. It is a
    `ValueError`.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import hybrid_gn
        >>> def model(p, x):
        ...     return p[0] * jnp.exp(-p[1] * x)
        >>> x = np.linspace(0.0, 4.0, 50)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "fit.ckpt")
        ...     with open(path, "wb") as file:
        ...         _ = file.write(b"not a checkpoint")
        ...     try:
        ...         hybrid_gn.fit_stream(model, np.ones(2), (x, np.exp(-x)), resume=path,
        ...                              progress=False)
        ...     except hybrid_gn.CheckpointError as error:
        ...         print("refused:", "truncated or corrupt" in str(error))
        refused: True
    """


class Checkpoint(NamedTuple):
    """A checkpoint as read from disk (before it is matched to a problem)."""

    header: dict[str, Any]  # format, fingerprint, config, progress
    leaves: list[np.ndarray]

    @property
    def iteration(self) -> int:
        """Iterations (warmup and Gauss-Newton) completed when it was written."""
        return int(self.header["progress"]["iteration"])

    @property
    def finished(self) -> bool:
        return bool(self.header["progress"]["finished"])


def _digest(header_text: str, leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256(header_text.encode())
    for leaf in leaves:
        h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, naming `path`, if a checkpoint cannot be written there (not at the first
    save, hours later); remove temporary files a killed save left behind."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {path}: the directory {folder} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory; give a file path")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists()
                                                    and not os.access(path, os.W_OK)):
        raise PermissionError(f"checkpoint {path}: cannot write there (permission denied)")
    for stale in folder.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def save(path: str | os.PathLike, state: PyTree, fingerprint: dict, config: dict,
         progress: dict) -> None:
    """Write `state` and its header to `path` atomically (temporary file, fsync, rename).

    A failed write removes its temporary file and raises an OSError naming `path`.
    """
    path = Path(path)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(state)]
    header = json.dumps({"format": FORMAT, "fingerprint": fingerprint, "config": config,
                         "progress": progress}, sort_keys=True)
    arrays = {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}
    arrays["header"] = np.array(header)
    arrays["digest"] = np.array(_digest(header, leaves))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise type(error)(f"could not write checkpoint {path}: {error}") from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def read(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint file (digest and format), without matching a problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted(k for k in f.files if k.startswith("leaf_"))
            leaves = [f[k] for k in names]
            header_text = str(f["header"])
            digest = str(f["digest"])
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({error}); "
                              "it cannot be resumed from") from error
    if _digest(header_text, leaves) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its "
                              "digest; it cannot be resumed from")
    header = json.loads(header_text)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')!r}, "
                              f"expected {FORMAT!r}")
    return Checkpoint(header, leaves)


def restore(checkpoint: Checkpoint, template: PyTree,
            path: str | os.PathLike = "checkpoint") -> PyTree:
    """The state saved in `checkpoint`, if it has the layout of `template`.

    `template` is a pytree (arrays or `jax.ShapeDtypeStruct`s) with the
    structure, shapes and dtypes of the state the current problem would start
    from. Whether the checkpoint belongs to this problem and configuration is
    `check_identity`'s question, asked before the data is read.
    """
    expected, treedef = jax.tree.flatten(template)
    if len(expected) != len(checkpoint.leaves):
        raise CheckpointError(f"checkpoint {path} holds {len(checkpoint.leaves)} state arrays, "
                              f"this problem's state has {len(expected)}")
    for i, (leaf, want) in enumerate(zip(checkpoint.leaves, expected, strict=True)):
        if leaf.shape != tuple(want.shape) or leaf.dtype != np.dtype(want.dtype):
            raise CheckpointError(f"checkpoint {path}: state array {i} has shape {leaf.shape} "
                                  f"and dtype {leaf.dtype}, this problem expects "
                                  f"{tuple(want.shape)} and {np.dtype(want.dtype)}")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(leaf) for leaf in checkpoint.leaves])


def check_identity(checkpoint: Checkpoint, fingerprint: dict, config: dict,
                   path: str | os.PathLike = "checkpoint") -> None:
    """Refuse a checkpoint written for another problem or configuration."""
    _compare(path, "problem", checkpoint.header["fingerprint"], fingerprint)
    _compare(path, "configuration", checkpoint.header["config"], config)


def _compare(path, what: str, saved: dict, current: dict) -> None:
    keys = sorted(set(saved) | set(current))
    differ = [k for k in keys if saved.get(k) != current.get(k)]
    if differ:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
                            for k in differ[:4])
        raise CheckpointError(f"checkpoint {path} was written for a different {what} "
                              f"({details}); refusing to resume from it")
