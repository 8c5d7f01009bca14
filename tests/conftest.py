"""Shared fixtures: golden outputs of video-diffusion-pytorch 0.7.0."""

import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


@pytest.fixture(scope='session')
def golden():
  """The reference's weights, inputs and outputs written by tools/make_parity_fixtures.py."""
  with np.load(FIXTURES / 'parity.npz') as data:
    return {k: data[k] for k in data.files}


def to_channels_last(video):
  """(b, c, f, h, w) of the reference -> our (b, f, h, w, c)."""
  return np.transpose(video, (0, 2, 3, 4, 1))
