"""Data sources for the streaming driver: the data is read in passes, chunk by chunk.

A source only has to produce, for each pass, a fresh sequence of raw blocks
`(x, y, sigma or None)`; this package turns them into fixed-size chunks
`(x, y, weight)` with the last, short chunk padded by weight-0 points (so one
compiled accumulation serves every chunk), checks each block (shapes, dtypes,
NaN/Inf, sigma > 0) with errors that name the chunk and the dataset, and can
read ahead in a background thread while the current chunk is being computed.

Three sources: `ArraySource` (numpy arrays, `np.memmap`), `HDF5Source`
(datasets of an HDF5 file read slice by slice) and `CallableSource` (a user
function returning a new iterator of chunks for each pass). Array and HDF5
sources have random access, so the warmup subsample reads only the chunks it
needs.
"""

from ._arrays import ArraySource
from ._as_source import as_source
from ._callable import CallableSource
from ._hdf5 import HDF5Source
from ._protocol import Block, ChunkSource

__all__ = ["ArraySource", "Block", "CallableSource", "ChunkSource", "HDF5Source", "as_source"]
