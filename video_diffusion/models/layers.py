"""Building blocks of the Unet3D: convolutions, norms and residual blocks.

Every array is channels-last: videos are (batch, frames, height, width, channels).
Spatial (1, k, k) convolutions of the reference run as 2-D convolutions over
(batch * frames, height, width, channels), which XLA executes about twice as fast
as the equivalent 3-D convolution on CPU.

Mixed precision: layers taking `dtype` keep float32 parameters and run their
convolutions/matmuls in `dtype` (activations and parameters are cast at use);
the norms compute in float32 and return their input's dtype. With dtype float32
nothing is cast, so the numerics are those of a plain float32 model.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.models.init import deferred, deferred_param


def scoped(name: str):
  """Decorator: runs a method under jax.named_scope(name), so that profiles and
  HLO dumps attribute its operations (forward and backward) to `name`."""

  def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      with jax.named_scope(name):
        return fn(*args, **kwargs)

    return wrapper

  return decorate


def _over_frames(fn, x: jax.Array) -> jax.Array:
  """Applies a per-image function to a (b, f, h, w, c) video, frame by frame."""
  b, f = x.shape[:2]
  y = fn(x.reshape((b * f,) + x.shape[2:]))
  return y.reshape((b, f) + y.shape[1:])


def linear(
  d_in: int, d_out: int, *, use_bias: bool = True, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs
) -> nnx.Linear:
  """nnx.Linear with float32 params computing in `dtype`; weights set by init.torch_default_init."""
  return nnx.Linear(
    d_in,
    d_out,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=deferred,
    bias_init=deferred,
    rngs=rngs,
  )


@jax.custom_vjp
def conv_input(x: jax.Array) -> jax.Array:
  """x unchanged; when differentiated on CPU, computed into a buffer of its own.

  XLA's CPU convolutions take the weight gradient on a transposed copy of the
  input. When the input is an element-wise result (RMSNorm, scale/shift,
  SiLU), XLA recomputes it inside that transpose, which then runs 10-20x
  slower than a plain copy (40x64x64x32: 115 ms against 6 ms). A conditional
  is a boundary XLA does not fuse across (`optimization_barrier` is removed
  before fusion on CPU). Its other branch, taken only when x's first element
  is NaN, fills x with NaN, so XLA cannot fold it away, and the result differs
  from x only when x holds a NaN already.
  """
  return x


def _conv_input_fwd(x: jax.Array):
  if jax.default_backend() != 'cpu':
    return x, None
  first = x.ravel()[0]
  kept = jax.lax.cond(first == first, lambda v: v, lambda v: jnp.full_like(v, jnp.nan), x)
  return kept, None


conv_input.defvjp(_conv_input_fwd, lambda _, grad: (grad,))


class SpatialConv(nnx.Module):
  """A (1, k, k) convolution of the reference, run as a 2-D conv over frames."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    use_bias: bool = True,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    padding = kernel_size // 2 if padding is None else padding
    self.conv = nnx.Conv(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=deferred,
      bias_init=deferred,
      rngs=rngs,
    )

  @scoped('conv')
  def __call__(self, x: jax.Array) -> jax.Array:
    return _over_frames(self.conv, conv_input(x))


# For each output phase (even, odd) of a stride-2, kernel-4, padding-1 transposed
# conv: which kernel tap multiplies input offsets (-1, 0, +1); -1 means none.
_PHASE_TAPS = np.array([[3, 1, -1], [-1, 2, 0]])


class Upsample(nnx.Module):
  """The reference's ConvTranspose3d((1, 4, 4), stride (1, 2, 2), padding (0, 1, 1)).

  `kernel` is (4, 4, in, out) with kernel[i, j, a, b] == torch_weight[a, b, 0, i, j].
  It runs as one 3x3 convolution producing the four output phases as channels,
  then a depth-to-space shuffle: no multiplications by the zeros of a dilated input.
  """

  torch_fan_in_axis = -1  # torch counts a ConvTranspose's fan-in over its out channels

  def __init__(self, dim: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    del rngs  # the weights are set by init.torch_default_init
    self.dtype = jnp.dtype(dtype)
    self.kernel = deferred_param((4, 4, dim, dim))
    self.bias = deferred_param((dim,))

  def phase_kernel(self) -> jax.Array:
    """(3, 3, in, 4 * out): the kernel of each (row, column) phase as output channels."""
    kernel = self.kernel[...]
    padded = jnp.concatenate([kernel, jnp.zeros_like(kernel[:1])], axis=0)
    padded = jnp.concatenate([padded, jnp.zeros_like(padded[:, :1])], axis=1)  # tap -1 -> 0
    taps = _PHASE_TAPS
    phases = [padded[taps[py]][:, taps[px]] for py in range(2) for px in range(2)]
    return jnp.concatenate(phases, axis=-1)

  @scoped('upsample_conv')
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.phase_kernel().astype(self.dtype)
    bias = self.bias[...].astype(self.dtype)
    x = conv_input(x.astype(self.dtype))
    out = kernel.shape[-1] // 4

    def up(images):
      n, h, w, _ = images.shape
      y = jax.lax.conv_general_dilated(
        images, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
      y = y.reshape(n, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5)
      return y.reshape(n, 2 * h, 2 * w, out) + bias

    return _over_frames(up, x)


def Downsample(dim: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs) -> SpatialConv:
  """The reference's Conv3d((1, 4, 4), stride (1, 2, 2), padding (0, 1, 1))."""
  return SpatialConv(dim, dim, 4, stride=2, padding=1, dtype=dtype, rngs=rngs)


class ChannelLayerNorm(nnx.Module):
  """LayerNorm over channels with a gain only (eps 1e-5, biased variance)."""

  def __init__(self, dim: int, eps: float = 1e-5):
    self.eps = eps
    self.gamma = deferred_param((dim,))

  @scoped('layer_norm')
  def __call__(self, x: jax.Array) -> jax.Array:
    """Computes in float32; returns x's dtype."""
    dtype, x = x.dtype, x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return ((x - mean) * jax.lax.rsqrt(var + self.eps) * self.gamma[...]).astype(dtype)


class RMSNorm(nnx.Module):
  """x / ||x||_channels * sqrt(dim) * gamma, as F.normalize in the reference."""

  def __init__(self, dim: int):
    self.scale = dim**0.5
    self.gamma = deferred_param((dim,))

  @scoped('rms_norm')
  def __call__(self, x: jax.Array) -> jax.Array:
    """Computes in float32; returns x's dtype."""
    dtype, x = x.dtype, x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return (x / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...]).astype(dtype)


class Block(nnx.Module):
  """(1, 3, 3) conv -> RMSNorm -> optional scale/shift -> SiLU."""

  def __init__(self, dim: int, dim_out: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.proj = SpatialConv(dim, dim_out, 3, dtype=dtype, rngs=rngs)
    self.norm = RMSNorm(dim_out)

  def __call__(self, x, scale_shift=None):
    x = self.norm(self.proj(x))
    if scale_shift is not None:
      scale, shift = scale_shift
      x = x * (scale + 1) + shift
    return jax.nn.silu(x)


class ResnetBlock(nnx.Module):
  """Two Blocks with a time-conditioned scale/shift and a residual 1x1 conv."""

  def __init__(
    self,
    dim: int,
    dim_out: int,
    *,
    time_emb_dim: int | None = None,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.mlp = (
      linear(time_emb_dim, dim_out * 2, dtype=dtype, rngs=rngs)
      if time_emb_dim is not None
      else None
    )
    self.block1 = Block(dim, dim_out, dtype=dtype, rngs=rngs)
    self.block2 = Block(dim_out, dim_out, dtype=dtype, rngs=rngs)
    self.res_conv = linear(dim, dim_out, dtype=dtype, rngs=rngs) if dim != dim_out else None

  def __call__(self, x: jax.Array, time_emb: jax.Array | None = None) -> jax.Array:
    scale_shift = None
    if self.mlp is not None:
      if time_emb is None:
        raise ValueError('ResnetBlock with time_emb_dim needs a time embedding.')
      with jax.named_scope('time_mlp'):
        emb = self.mlp(jax.nn.silu(time_emb))[:, None, None, None, :]
      scale_shift = jnp.split(emb, 2, axis=-1)
    h = self.block2(self.block1(x, scale_shift))
    with jax.named_scope('res_conv'):
      return h + (self.res_conv(x) if self.res_conv is not None else x)


def sinusoidal_embedding(time: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding of diffusion times (batch,) -> (batch, dim)."""
  half_dim = dim // 2
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -(math.log(10000) / (half_dim - 1)))
  args = time.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
