"""Attention layers of the Unet3D: temporal, full spatial and linear spatial.

Videos are channels-last (batch, frames, height, width, channels).
With `dtype` bfloat16 the projections and attention matmuls run in bfloat16
(float32 parameters cast at use); the rotary embedding (or, in the pixels-minor
temporal attention, its folding into the query and key kernels), position bias
and softmaxes run in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.models import pixels_minor
from video_diffusion.models.init import deferred_param
from video_diffusion.models.layers import ChannelLayerNorm, linear, scoped


def relative_position_buckets(
  num_frames: int, num_buckets: int = 32, max_distance: int = 32
) -> np.ndarray:
  """T5 relative-position buckets (num_frames, num_frames), as the reference."""
  pos = np.arange(num_frames)
  n = -(pos[None, :] - pos[:, None])
  num_buckets //= 2
  ret = (n < 0).astype(np.int64) * num_buckets
  n = np.abs(n)
  max_exact = num_buckets // 2
  far = np.maximum(n, max_exact).astype(np.float32)
  large = max_exact + (
    np.log(far / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return ret + np.where(n < max_exact, n, large)


class RelativePositionBias(nnx.Module):
  """Learned T5-style bias over frame offsets, shared by all temporal attentions."""

  def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32, *, rngs: nnx.Rngs):
    self.num_buckets = num_buckets
    self.max_distance = max_distance
    del rngs  # the weights are set by init.torch_default_init
    self.embedding = deferred_param((num_buckets, heads))

  def __call__(self, num_frames: int) -> jax.Array:
    """Returns the bias (heads, num_frames, num_frames)."""
    buckets = relative_position_buckets(num_frames, self.num_buckets, self.max_distance)
    return jnp.transpose(self.embedding[...][buckets], (2, 0, 1))


def rotary_frequencies(dim: int, theta: float = 10000.0) -> np.ndarray:
  """Inverse frequencies of rotary-embedding-torch ('lang'), dim // 2 values."""
  exponent = np.arange(0, dim, 2)[: dim // 2].astype(np.float32) / np.float32(dim)
  return (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)


def apply_rotary(x: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates interleaved pairs of the first 2*len(inv_freq) features of x (..., n, d)."""
  rot_dim = 2 * inv_freq.shape[0]
  positions = jnp.arange(x.shape[-2], dtype=jnp.float32)
  angles = jnp.repeat(positions[:, None] * jnp.asarray(inv_freq)[None, :], 2, axis=-1)
  head, tail = x[..., :rot_dim], x[..., rot_dim:]
  pairs = head.reshape(head.shape[:-1] + (rot_dim // 2, 2))
  rotated_half = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(head.shape)
  head = head * jnp.cos(angles) + rotated_half * jnp.sin(angles)
  return jnp.concatenate([head, tail], axis=-1)


class Attention(nnx.Module):
  """Multi-head softmax attention over the second-to-last axis of (..., n, dim).

  With `rotary_dim`, queries and keys get the rotary embedding of their position
  (temporal attention). `focus_present_mask` (batch,) makes masked batch items
  attend to their own position only.
  """

  def __init__(
    self,
    dim: int,
    heads: int = 4,
    dim_head: int = 32,
    *,
    rotary_dim: int | None = None,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.scale = dim_head**-0.5
    self.heads = heads
    hidden_dim = dim_head * heads
    self.rotary_dim = rotary_dim
    self.dtype = jnp.dtype(dtype)
    self.to_qkv = linear(dim, hidden_dim * 3, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_out = linear(hidden_dim, dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x, pos_bias=None, focus_present_mask=None):
    with jax.named_scope('qkv_projection'):
      q, k, v = jnp.split(self.to_qkv(x), 3, axis=-1)
    split_heads = lambda t: jnp.swapaxes(
      t.reshape(t.shape[:-1] + (self.heads, -1)), -2, -3
    )  # (..., h, n, d)
    q, k, v = split_heads(q) * self.scale, split_heads(k), split_heads(v)
    if self.rotary_dim is not None:
      inv_freq = rotary_frequencies(self.rotary_dim)
      rotate = lambda t: apply_rotary(t.astype(jnp.float32), inv_freq).astype(self.dtype)
      q, k = rotate(q), rotate(k)
    sim = jnp.einsum('...hid,...hjd->...hij', q, k).astype(jnp.float32)
    if pos_bias is not None:
      sim = sim + pos_bias
    attn = jax.nn.softmax(sim, axis=-1).astype(self.dtype)
    out = jnp.einsum('...hij,...hjd->...hid', attn, v)
    if focus_present_mask is not None:
      mask = focus_present_mask.reshape((-1,) + (1,) * (out.ndim - 1))
      out = jnp.where(mask, v, out)
    out = jnp.swapaxes(out, -2, -3)
    with jax.named_scope('out_projection'):
      return self.to_out(out.reshape(out.shape[:-2] + (-1,)))


class TemporalAttention(nnx.Module):
  """Attention across frames at every pixel of a (b, f, h, w, c) video.

  Where the frame has at least as many pixels as channels and
  pixels_minor.MIN_PIXELS (and at most pixels_minor.MAX_UNROLLED_FRAMES
  frames), it runs in the pixels-minor layout
  of `pixels_minor`, which XLA runs 1.3-2.5x faster on CPU; otherwise as a
  batched matmul over (b * h * w, heads). Both compute the same function.
  Large frames (pixels_minor.MIN_TILED_PIXELS) run in tiles of
  pixels_minor.TILE_PIXELS pixels, one at a time and rematerialised.
  """

  def __init__(
    self, dim: int, heads: int, dim_head: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs
  ):
    self.attn = Attention(
      dim, heads, dim_head, rotary_dim=min(32, dim_head), dtype=dtype, rngs=rngs
    )

  @scoped('temporal_attention')
  def __call__(self, x, pos_bias=None, focus_present_mask=None):
    b, f, h, w, c = x.shape
    if h * w >= max(c, pixels_minor.MIN_PIXELS) and f <= pixels_minor.MAX_UNROLLED_FRAMES:
      return self._pixels_minor(x, pos_bias, focus_present_mask)
    tokens = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, h * w, f, c)
    out = self.attn(tokens, pos_bias, focus_present_mask)
    return jnp.transpose(out.reshape(b, h, w, f, c), (0, 3, 1, 2, 4))

  def _pixels_minor(self, x, pos_bias, focus_present_mask, tile=None):
    """The pixels-minor form, on tiles of `tile` pixels (default
    pixels_minor.pixel_tile). With more than one tile per video the tiles run
    one at a time in a loop, each recomputed in the backward pass: only the
    narrow input is kept, and a tile's q, k, v stay in cache."""
    b, f, h, w, c = x.shape
    tiles = pixels_minor.to_tiles(x.reshape(b, f, h * w, c), tile or pixels_minor.pixel_tile(h * w))
    per_video = tiles.shape[0] // b
    mask = None if focus_present_mask is None else jnp.repeat(focus_present_mask, per_video)
    bias = (
      jnp.zeros((f, f, self.attn.heads, 1))
      if pos_bias is None
      else jnp.transpose(pos_bias, (1, 2, 0))[..., None]
    )
    kernels = self._frame_kernels(f) + (self.attn.to_out.kernel[...],)
    if per_video == 1:
      out = self._attend_tiles(tiles, kernels, bias, mask)
    else:

      def one_tile(tile_and_mask):
        tile_x, tile_mask = jax.tree.map(lambda a: a[None], tile_and_mask)
        return self._attend_tiles(tile_x, kernels, bias, tile_mask)[0]

      out = jax.lax.map(jax.checkpoint(one_tile), (tiles, mask))
    return pixels_minor.from_tiles(out, b).reshape(b, f, h, w, c)

  def _frame_kernels(self, frames: int) -> tuple:
    """Per-frame query, key and value kernels (frames, c_in, heads * dim_head):
    the query scale and each frame's rotary embedding folded into the query and
    key kernels, so that the projections give rotated queries and keys (the
    same function as rotating them, in one matmul, with nothing recomputed)."""
    attn = self.attn
    wq, wk, wv = jnp.split(attn.to_qkv.kernel[...], 3, axis=-1)
    dim_head = wq.shape[-1] // attn.heads
    rotations = pixels_minor.rotary_matrices(frames, dim_head, rotary_frequencies(attn.rotary_dim))
    return (
      pixels_minor.rotated_kernel(wq * attn.scale, rotations, attn.heads),
      pixels_minor.rotated_kernel(wk, rotations, attn.heads),
      jnp.broadcast_to(wv, (frames,) + wv.shape),
    )

  def _attend_tiles(self, x, kernels, bias, focus_present_mask):
    """Attention across frames of tiles x (n, frames, channels, pixels) ->
    the same shape; `kernels` are the per-frame query, key and value kernels
    of `_frame_kernels` and the to_out kernel."""
    n, f, c, p = x.shape
    attn, dtype = self.attn, self.attn.dtype
    *frame_kernels, out_kernel = kernels
    with jax.named_scope('qkv_projection'):
      q, k, v = (
        pixels_minor.project_frames(kernel, x, dtype).reshape(n, f, attn.heads, -1, p)
        for kernel in frame_kernels
      )
    out = pixels_minor.attend_frames(q, k, v, bias)
    if focus_present_mask is not None:
      out = jnp.where(focus_present_mask[:, None, None, None, None], v, out)
    with jax.named_scope('out_projection'):
      out = pixels_minor.project(out_kernel, out.reshape(n * f, -1, p), dtype)
    return out.reshape(n, f, c, p)


class SpatialAttention(nnx.Module):
  """Full attention across the pixels of each frame of a (b, f, h, w, c) video."""

  def __init__(
    self,
    dim: int,
    heads: int,
    dim_head: int = 32,
    *,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.attn = Attention(dim, heads, dim_head, dtype=dtype, rngs=rngs)

  @scoped('full_attention')
  def __call__(self, x):
    b, f, h, w, c = x.shape
    return self.attn(x.reshape(b, f, h * w, c)).reshape(x.shape)


class SpatialLinearAttention(nnx.Module):
  """Linear attention across the pixels of each frame of a (b, f, h, w, c) video."""

  def __init__(
    self,
    dim: int,
    heads: int = 4,
    dim_head: int = 32,
    *,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.scale = dim_head**-0.5
    self.heads = heads
    hidden_dim = dim_head * heads
    self.dtype = jnp.dtype(dtype)
    self.to_qkv = linear(dim, hidden_dim * 3, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_out = linear(hidden_dim, dim, dtype=dtype, rngs=rngs)

  @scoped('linear_attention')
  def __call__(self, x):
    """Runs in the pixels-minor layout (see `pixels_minor`), with the value and
    output projections folded into each frame's small context matrix: values
    and the 256-wide attention output are never formed (the same function up
    to float rounding, with a third fewer FLOPs; docs/performance.md)."""
    b, f, h, w, c = x.shape
    dtype, heads = self.dtype, self.heads
    tokens = pixels_minor.to_pixels_minor(x.reshape(b * f, h * w, c)).astype(dtype)
    wq, wk, wv = jnp.split(self.to_qkv.kernel[...].astype(dtype), 3, axis=-1)
    wo = self.to_out.kernel[...].astype(dtype)
    with jax.named_scope('qkv_projection'):
      q_logits = pixels_minor.project(wq, tokens, dtype).reshape(b * f, heads, -1, h * w)
      k_logits = pixels_minor.project(wk, tokens, dtype)
    # context[d, e] = sum_n k[d, n] v[e, n] with v = Wv x: keys times pixels first.
    keyed_pixels = pixels_minor.key_pixels(k_logits, tokens).reshape(b * f, heads, -1, c)
    context = jnp.einsum('bhdc,che->bhde', keyed_pixels, wv.reshape(c, heads, -1))
    # to_out(context^T q) = (Wo context^T) q: one (c_out, heads * dim_head) matrix per frame.
    mixing = jnp.einsum('bhde,heo->bohd', context, wo.reshape(heads, -1, wo.shape[-1]))
    with jax.named_scope('out_projection'):
      out = pixels_minor.read_queries(mixing.reshape(b * f, wo.shape[-1], -1), q_logits, self.scale)
      out = out + self.to_out.bias[...].astype(dtype)[:, None]
    return pixels_minor.to_pixels_minor(out).reshape(b, f, h, w, c)


class PreNormResidual(nnx.Module):
  """x + fn(ChannelLayerNorm(x), **kwargs): the reference's Residual(PreNorm(fn))."""

  def __init__(self, dim: int, fn: nnx.Module):
    self.norm = ChannelLayerNorm(dim)
    self.fn = fn

  def __call__(self, x, **kwargs):
    return self.fn(self.norm(x), **kwargs) + x
