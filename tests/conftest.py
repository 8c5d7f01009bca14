"""Shared fixtures: golden outputs of video-diffusion-pytorch 0.7.0."""

import atexit
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
ROOT = FIXTURES.parent.parent

# One XLA compilation cache for the whole session, in-process and in the CLI
# subprocesses: the same model compiled twice is then loaded, not rebuilt.
# Set before JAX is imported (it reads these at import).
_CACHE = tempfile.mkdtemp(prefix='xla-cache-')
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


@pytest.fixture(scope='session')
def golden():
  """The reference's weights, inputs and outputs written by tools/make_parity_fixtures.py."""
  with np.load(FIXTURES / 'parity.npz') as data:
    return {k: data[k] for k in data.files}


def to_channels_last(video):
  """(b, c, f, h, w) of the reference -> our (b, f, h, w, c)."""
  return np.transpose(video, (0, 2, 3, 4, 1))
