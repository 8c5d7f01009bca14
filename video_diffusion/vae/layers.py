"""Layers of Wan 2.1's causal video autoencoder (diffusers' AutoencoderKLWan), channels-last.

Videos are (batch, frames, height, width, channels). Each layer is called as
`layer(x, cache) -> (y, new_cache)`: `cache` is the layer's feature cache from
the previous chunk of frames (a pytree of arrays), or None for the first chunk.
A causal convolution's cache holds its last CACHE_T input frames, zeros where
there were none yet (the same as the zero padding diffusers falls back to), so
every chunk after the first has caches of one fixed shape and compiles once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from video_diffusion.models import layers
from video_diffusion.models.init import deferred_param

CACHE_T = 2  # frames of its input a causal convolution keeps for the next chunk


def _triple(value) -> tuple[int, int, int]:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


def conv_frames(x: jax.Array, kernel: jax.Array, stride=(1, 1), padding=((0, 0), (0, 0))):
  """A 2-D convolution of every frame of (b, f, h, w, c) videos; kernel (kh, kw, c, out)."""
  b, f = x.shape[:2]
  y = jax.lax.conv_general_dilated(
    x.reshape((b * f,) + x.shape[2:]),
    kernel,
    tuple(stride),
    tuple(padding),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return y.reshape((b, f) + y.shape[1:])


class CausalConv3d(nnx.Module):
  """WanCausalConv3d: a 3-D convolution padded by (2 * pad_t, 0) frames in time
  (causal) and pad_h, pad_w on both sides; given a cache, its frames come first
  and take the place of as many padding frames.

  It runs as one 2-D convolution of each output frame's input frames stacked
  as channels (the kernel's time taps folded into its input channels): XLA's
  CPU backend computes a 3-D convolution and its gradients 3 to 6 times slower
  than the same work as a 2-D one (docs/performance.md)."""

  def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, padding=0):
    self.kernel_size, self.stride, self.padding = _triple(kernel), _triple(stride), _triple(padding)
    self.kernel = deferred_param(self.kernel_size + (in_dim, out_dim))
    self.bias = deferred_param((out_dim,))

  def __call__(self, x: jax.Array, cache: jax.Array | None = None) -> jax.Array:
    pad_t, pad_h, pad_w = 2 * self.padding[0], self.padding[1], self.padding[2]
    if cache is not None and pad_t > 0:
      x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
      pad_t -= cache.shape[1]
    x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    taps, stride_t = self.kernel_size[0], self.stride[0]
    frames = (x.shape[1] - taps) // stride_t + 1
    last = stride_t * (frames - 1) + 1
    stacked = jnp.concatenate([x[:, tap : tap + last : stride_t] for tap in range(taps)], axis=-1)
    kh, kw, cin, cout = self.kernel.shape[1:]
    folded = self.kernel[...].transpose(1, 2, 0, 3, 4).reshape(kh, kw, taps * cin, cout)
    y = conv_frames(stacked, folded, self.stride[1:], ((pad_h, pad_h), (pad_w, pad_w)))
    return y + self.bias[...]


def cached_conv(conv: CausalConv3d, x: jax.Array, cache: jax.Array | None):
  """Runs `conv` on a chunk after its cache; returns (output, the new cache).

  The new cache is the chunk's last CACHE_T frames; a one-frame chunk keeps the
  previous cache's last frame before its own (diffusers' `cache_x.shape[2] < 2`
  case), so consecutive chunks see the same frames as one long causal conv.
  """
  previous = jnp.zeros_like(x[:, :1]).repeat(CACHE_T, axis=1) if cache is None else cache
  new_cache = jnp.concatenate([previous, x], axis=1)[:, -CACHE_T:]
  return conv(x, cache), new_cache


class Conv2d(nnx.Module):
  """nn.Conv2d applied to every frame: kernel (kh, kw, in, out), padding per side."""

  def __init__(
    self, in_dim: int, out_dim: int, kernel: int, stride: int = 1, padding=((0, 0), (0, 0))
  ):
    self.stride = (stride, stride)
    self.padding = (tuple(padding[0]), tuple(padding[1]))  # ((top, bottom), (left, right))
    self.kernel = deferred_param((kernel, kernel, in_dim, out_dim))
    self.bias = deferred_param((out_dim,))

  def __call__(self, x: jax.Array) -> jax.Array:
    return conv_frames(x, self.kernel[...], self.stride, self.padding) + self.bias[...]


class RMSNorm(layers.RMSNorm):
  """WanRMS_norm: x / ||x||_channels * sqrt(dim) * gamma (no bias). `images` only
  says which torch shape gamma has: (dim, 1, 1) for images, (dim, 1, 1, 1) for videos."""

  def __init__(self, dim: int, images: bool = False):
    super().__init__(dim)
    self.images = images


class ResidualBlock(nnx.Module):
  """WanResidualBlock: (RMS norm, SiLU, causal 3x3x3 conv) twice plus a shortcut
  (a 1x1x1 conv where the width changes). Dropout is not applied (inference)."""

  def __init__(self, in_dim: int, out_dim: int):
    self.norm1 = RMSNorm(in_dim)
    self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
    self.norm2 = RMSNorm(out_dim)
    self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
    self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

  def __call__(self, x: jax.Array, cache=None):
    cache1, cache2 = (None, None) if cache is None else cache
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    x, cache1 = cached_conv(self.conv1, jax.nn.silu(self.norm1(x)), cache1)
    x, cache2 = cached_conv(self.conv2, jax.nn.silu(self.norm2(x)), cache2)
    return x + shortcut, (cache1, cache2)


class AttentionBlock(nnx.Module):
  """WanAttentionBlock: single-head self-attention over each frame's pixels, residual."""

  def __init__(self, dim: int):
    self.norm = RMSNorm(dim, images=True)
    self.to_qkv = Conv2d(dim, 3 * dim, 1)
    self.proj = Conv2d(dim, dim, 1)

  def __call__(self, x: jax.Array, cache=None):
    del cache  # per frame: nothing carries over between chunks
    b, f, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * f, h * w, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    scores = jnp.einsum('nqc,nkc->nqk', q, k) * c**-0.5
    out = jnp.einsum('nqk,nkc->nqc', jax.nn.softmax(scores, axis=-1), v)
    return self.proj(out.reshape(b, f, h, w, c)) + x, None


class Resample(nnx.Module):
  """WanResample: 'upsample2d' / 'upsample3d' (nearest x2, 3x3 conv to dim // 2;
  3d first doubles the frames with a causal (3, 1, 1) conv to 2 * dim channels)
  or 'downsample2d' / 'downsample3d' (zero pad right and bottom, 3x3 stride-2
  conv; 3d then halves the frames with a (3, 1, 1) stride-2 conv)."""

  def __init__(self, dim: int, mode: str):
    self.mode = mode
    if mode in ('upsample2d', 'upsample3d'):
      self.resample = Conv2d(dim, dim // 2, 3, padding=((1, 1), (1, 1)))
    elif mode in ('downsample2d', 'downsample3d'):
      self.resample = Conv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)))
    else:
      raise ValueError(f'unknown resample mode {mode!r}')
    time_conv = None
    if mode == 'upsample3d':
      time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
    elif mode == 'downsample3d':
      time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
    self.time_conv = time_conv

  def __call__(self, x: jax.Array, cache=None):
    if self.mode == 'upsample3d':
      x, cache = self._double_frames(x, cache)
    if self.mode.startswith('upsample'):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact, scale 2
    x = self.resample(x)
    if self.mode == 'downsample3d':
      x, cache = self._halve_frames(x, cache)
    return x, cache

  def _double_frames(self, x: jax.Array, cache):
    """The first chunk passes unchanged and leaves a zero cache (diffusers' 'Rep'
    marker: the first frame never reaches time_conv); later chunks run the causal
    time_conv and interleave its two channel halves as two frames each."""
    if cache is None:
      return x, jnp.zeros_like(x[:, :1]).repeat(CACHE_T, axis=1)
    y, cache = cached_conv(self.time_conv, x, cache)
    b, f, h, w, c = x.shape
    y = y.reshape(b, f, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * f, h, w, c)
    return y, cache

  def _halve_frames(self, x: jax.Array, cache):
    """The first chunk passes unchanged; later chunks run the stride-2 time_conv
    on the previous chunk's last frame followed by this chunk's."""
    if cache is None:
      return x, x[:, -1:]
    return self.time_conv(jnp.concatenate([cache, x], axis=1)), x[:, -1:]


class MidBlock(nnx.Module):
  """WanMidBlock: residual block, attention, residual block."""

  def __init__(self, dim: int):
    self.resnets = nnx.List([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
    self.attentions = nnx.List([AttentionBlock(dim)])

  def __call__(self, x: jax.Array, cache=None):
    caches = [None, None] if cache is None else list(cache)
    x, caches[0] = self.resnets[0](x, caches[0])
    x, _ = self.attentions[0](x)
    x, caches[1] = self.resnets[1](x, caches[1])
    return x, tuple(caches)
