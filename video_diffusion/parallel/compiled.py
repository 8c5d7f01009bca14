"""Compiled functions kept for the rest of the process, keyed by what built them.

jax.jit reuses a compilation only for the same Python function; a run builds its
step and sampler functions afresh, so a second run in one process (a notebook,
the tests) would trace, lower and load them again. `reuse(key, build)` returns
the function built earlier for an equal key. A key holds hashable parts: graph
definitions, option dataclasses, meshes and shardings, and `fingerprint(arrays)`
for arrays a function closes over.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Hashable

import jax
import numpy as np

_KEPT = 8  # functions kept, most recently used last
_functions: collections.OrderedDict = collections.OrderedDict()


def fingerprint(tree) -> tuple:
  """A hashable summary of a pytree of arrays: its structure, and each leaf's
  shape, dtype and a digest of its values."""
  leaves, structure = jax.tree.flatten(tree)
  digests = []
  for leaf in leaves:
    array = np.asarray(leaf)
    digests.append((array.shape, str(array.dtype), hashlib.sha1(array.tobytes()).hexdigest()))
  return structure, tuple(digests)


def shardings_key(shardings) -> tuple:
  """A hashable form of a pytree of shardings (None leaves kept)."""
  leaves, structure = jax.tree.flatten(shardings, is_leaf=lambda x: x is None)
  return structure, tuple(leaves)


def reuse(key: Hashable, build: Callable[[], Callable]) -> Callable:
  """The function built for `key` before in this process, else `build()` (kept)."""
  if key in _functions:
    _functions.move_to_end(key)
    return _functions[key]
  function = _functions[key] = build()
  while len(_functions) > _KEPT:
    _functions.popitem(last=False)
  return function
