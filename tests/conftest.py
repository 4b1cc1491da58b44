"""Test-session hygiene: each test module starts with JAX's caches emptied.

The suite compiles several hundred programs (every shape, model and configuration it
tries); keeping all of them alive for the whole session grew the process past 2.5 GB
and once ended in a crash inside XLA's compiler late in the run. Programs shared
within a module stay cached; between modules they are dropped.
"""

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    yield
    jax.clear_caches()
    gc.collect()
