"""Attention kernels in a pixels-minor layout, for XLA on CPU.

Channels-last tokens (n, pixels, channels) put the reference's 256-wide
attention features (heads x dim_head, whatever the U-Net's width) in the minor
axis, so every einsum over heads needs transposes of those wide arrays, and
attention over a handful of frames becomes a batched matmul of thousands of
tiny matrices. Here features are (..., channels, pixels) instead: a projection
is one matmul per image with the pixels as the long minor axis, the scores
and the mixing across frames are sums with the pixels as vector lanes (on the
CPU, loops whose bodies update every pair of frames at once; on accelerators,
one fused product per pair), and only the narrow (channels wide) input and
output are transposed. docs/performance.md has the measurements.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Frame attention is unrolled over pairs of frames; past this many frames the
# program grows too large and the batched-matmul form is used instead.
MAX_UNROLLED_FRAMES = 16
# Below 16x16 pixels a frame gains little (8x8x64: 26 -> 19 ms forward and
# backward) for the compile time of the unrolled program.
MIN_PIXELS = 256
# On the CPU, frames of at least MIN_TILED_PIXELS pixels run in tiles of
# TILE_PIXELS pixels, one tile at a time, so a tile's 256-wide q, k, v stay in
# cache instead of streaming through memory once per pair of frames
# (docs/performance.md). Accelerators keep whole frames: a loop of small tiles
# would run their kernels one small launch after another.
MIN_TILED_PIXELS = 1024
TILE_PIXELS = 256  # faster than 128 or 512 on seed_v2_2 (docs/performance.md)


def to_pixels_minor(x: jax.Array) -> jax.Array:
  """(n, pixels, channels) -> (n, channels, pixels)."""
  return jnp.swapaxes(x, -1, -2)


def pixel_tile(pixels: int) -> int:
  """Pixels per tile of a frame of `pixels` pixels: TILE_PIXELS, or the whole frame."""
  tiled = (
    jax.default_backend() == 'cpu' and pixels >= MIN_TILED_PIXELS and pixels % TILE_PIXELS == 0
  )
  return TILE_PIXELS if tiled else pixels


def to_tiles(x: jax.Array, tile: int) -> jax.Array:
  """(b, f, pixels, c) -> (b * pixels // tile, f, c, tile): tiles of `tile`
  consecutive pixels, pixels-minor, batch-major."""
  b, f, p, c = x.shape
  x = x.reshape(b, f, p // tile, tile, c)
  return jnp.transpose(x, (0, 2, 1, 4, 3)).reshape(-1, f, c, tile)


def from_tiles(x: jax.Array, batch: int) -> jax.Array:
  """The inverse of to_tiles: (batch * n, f, c, tile) -> (batch, f, n * tile, c)."""
  _, f, c, tile = x.shape
  x = jnp.transpose(x.reshape(batch, -1, f, c, tile), (0, 2, 1, 4, 3))
  return x.reshape(batch, f, -1, c)


_BATCHED_MATMUL = (((2,), (1,)), ((0,), (0,)))  # (n, a, b) x (n, b, c) -> (n, a, c)
_BATCHED_MATMUL_BT = (((2,), (2,)), ((0,), (0,)))  # (n, a, b) x (n, c, b) -> (n, a, c)


def project(kernel: jax.Array, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x (n, c_in, pixels) times a Linear kernel (c_in, c_out) -> (n, c_out, pixels),
  as one batched matmul with the kernel shared by the n images."""
  n = x.shape[0]
  weights = jnp.broadcast_to(kernel.T.astype(dtype), (n,) + kernel.T.shape)
  return jax.lax.dot_general(weights, x.astype(dtype), _BATCHED_MATMUL)


def rotary_matrices(frames: int, dim_head: int, inv_freq: np.ndarray) -> np.ndarray:
  """The rotary embedding of each frame index as a matrix (frames, dim_head, dim_head):
  rotated[e] = sum_d R[f, e, d] x[d] rotates interleaved pairs of the first
  2*len(inv_freq) features by the frame's angles and keeps the rest."""
  rot_dim = 2 * inv_freq.shape[0]
  angles = np.arange(frames, dtype=np.float32)[:, None] * inv_freq[None, :]  # (f, rot_dim // 2)
  cos, sin = np.cos(angles), np.sin(angles)
  rotations = np.tile(np.eye(dim_head, dtype=np.float32), (frames, 1, 1))
  even = np.arange(0, rot_dim, 2)
  rotations[:, even, even] = cos
  rotations[:, even + 1, even + 1] = cos
  rotations[:, even, even + 1] = -sin
  rotations[:, even + 1, even] = sin
  return rotations


def rotated_kernel(kernel: jax.Array, rotations: np.ndarray, heads: int) -> jax.Array:
  """Per-frame kernels (frames, c_in, heads * dim_head) of a Linear kernel (c_in,
  heads * dim_head) followed by each frame's rotary matrix (frames, dim_head,
  dim_head), in float32: the rotary embedding folded into the projection."""
  c_in = kernel.shape[0]
  per_head = kernel.astype(jnp.float32).reshape(c_in, heads, -1)
  return jnp.einsum('chd,fed->fche', per_head, rotations).reshape(rotations.shape[0], c_in, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project_frames(kernels: jax.Array, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x (n, frames, c_in, pixels) times per-frame kernels (frames, c_in, c_out)
  -> (n, frames, c_out, pixels), as one batched matmul.

  Its input gradient is one (c_in x c_out) by (c_out x pixels) matmul per frame,
  written out: autodiff's form multiplies (pixels x c_out) by (c_out x c_in)
  and transposes the result, about 1.3x slower on the CPU (docs/performance.md).
  """
  per_frame = jnp.swapaxes(kernels, 1, 2).astype(dtype)  # (frames, c_out, c_in)
  weights = jnp.broadcast_to(per_frame, x.shape[:1] + per_frame.shape)
  return jax.lax.dot_general(weights, x.astype(dtype), (((3,), (2,)), ((0, 1), (0, 1))))


def _project_frames_fwd(kernels, x, dtype):
  return project_frames(kernels, x, dtype), (kernels, x)


def _project_frames_bwd(dtype, residuals, d_out):
  kernels, x = residuals
  d_out = d_out.astype(dtype)
  weights = jnp.broadcast_to(kernels.astype(dtype), x.shape[:1] + kernels.shape)
  d_x = jax.lax.dot_general(weights, d_out, (((3,), (2,)), ((0, 1), (0, 1))))
  d_kernels = jnp.einsum('nfcp,nfop->fco', x.astype(dtype), d_out)
  return d_kernels.astype(kernels.dtype), d_x.astype(x.dtype)


project_frames.defvjp(_project_frames_fwd, _project_frames_bwd)


def _scores(q, k):
  """(b, i, j, heads, pixels) float32: q_i . k_j over dim_head for every pair of frames."""
  return _scores_by_feature(q, k) if jax.default_backend() == 'cpu' else _scores_by_pair(q, k)


def _scores_by_pair(q, k):
  """_scores with each pair of frames a fused multiply and sum."""
  f = q.shape[1]
  return jnp.stack(
    [
      jnp.stack([jnp.sum(q[:, i] * k[:, j], axis=2, dtype=jnp.float32) for j in range(f)], axis=1)
      for i in range(f)
    ],
    axis=1,
  )


def _scores_by_feature(q, k):
  """_scores as a loop over dim_head whose body adds one feature's products for
  all pairs of frames at once. On the CPU, XLA runs each pair's (or each query
  frame's) sum as its own small fused loop or YNNPACK reduce, several times
  slower than this (docs/performance.md)."""
  n, f, heads, _, pixels = q.shape

  def add_feature(e, scores):
    q_e, k_e = (jax.lax.dynamic_index_in_dim(t, e, 3, False).astype(jnp.float32) for t in (q, k))
    return scores + q_e[:, :, None] * k_e[:, None]

  zeros = jnp.zeros((n, f, f, heads, pixels), jnp.float32)
  return jax.lax.fori_loop(0, q.shape[3], add_feature, zeros, unroll=4)


def _mix(weights, values, over_first: bool):
  """sum_j weights[:, i, j] * values[:, j] for each i (over_first=False), or
  sum_i weights[:, i, j] * values[:, i] for each j (True); values (b, f, h, d, p)."""
  mix = _mix_by_frame if jax.default_backend() == 'cpu' else _mix_unrolled
  return mix(weights, values, over_first)


def _mix_unrolled(weights, values, over_first: bool):
  """_mix as one unrolled sum of products per output frame."""
  f = values.shape[1]
  pick = (lambda a, b: weights[:, b, a]) if over_first else (lambda a, b: weights[:, a, b])
  return jnp.stack(
    [
      sum(pick(a, b)[:, :, None].astype(values.dtype) * values[:, b] for b in range(f))
      for a in range(f)
    ],
    axis=1,
  )


def _mix_by_frame(weights, values, over_first: bool):
  """_mix as a loop over the summed frame whose body updates every output frame
  at once. On the CPU, XLA's fusion emitter runs the unrolled per-frame sums
  (small fused loops of ten products each) at 2-5 GFLOP/s, 3.4x slower than
  this (docs/performance.md)."""
  summed_axis = 1 if over_first else 2

  def add_frame(b, out):
    w = jax.lax.dynamic_index_in_dim(weights, b, summed_axis, False)  # (n, f, h, p)
    v = jax.lax.dynamic_index_in_dim(values, b, 1, True)  # (n, 1, h, d, p)
    return out + w[:, :, :, None].astype(values.dtype) * v

  return jax.lax.fori_loop(0, values.shape[1], add_frame, jnp.zeros_like(values), unroll=2)


def _attend_forward(q, k, v, bias):
  weights = jax.nn.softmax(_scores(q, k) + bias, axis=2)
  return _mix(weights, v, over_first=False), weights


@jax.custom_vjp
def attend_frames(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
  """Softmax attention across frames at every pixel.

  q, k, v: (batch, frames, heads, dim_head, pixels), q already scaled; bias
  (frames, frames, heads, 1) is added to the float32 scores. Returns
  (batch, frames, heads, dim_head, pixels). The backward pass is written out
  in the same unrolled form, so no (frames x frames x dim_head) product is stored.
  """
  return _attend_forward(q, k, v, bias)[0]


def _attend_fwd(q, k, v, bias):
  out, weights = _attend_forward(q, k, v, bias)
  return out, (q, k, v, weights)


def _attend_bwd(residuals, d_out):
  q, k, v, weights = residuals
  d_v = _mix(weights, d_out, over_first=True)
  d_weights = _scores(d_out, v)
  # The row sum as an einsum, not jnp.sum(weights * d_weights, axis=2): XLA
  # hands a multiply-and-reduce over a middle axis to YNNPACK, which runs it
  # 20x slower than this dot (docs/performance.md).
  row_sums = jnp.einsum('bijhp,bijhp->bihp', weights, d_weights)[:, :, None]
  d_scores = weights * (d_weights - row_sums)
  d_q = _mix(d_scores, k, over_first=False).astype(q.dtype)
  d_k = _mix(d_scores, q, over_first=True).astype(k.dtype)
  d_bias = jnp.sum(d_scores, axis=(0, 4))[..., None]
  return d_q, d_k, d_v.astype(v.dtype), d_bias


attend_frames.defvjp(_attend_fwd, _attend_bwd)


def _softmax_grad(y: jax.Array, d_y: jax.Array, axis: int, scale: float = 1.0) -> jax.Array:
  """float32 gradient of the logits of y = scale * softmax(logits, axis), given d_y."""
  y, d_y = y.astype(jnp.float32), d_y.astype(jnp.float32)
  return y * (d_y - jnp.sum(d_y * y, axis=axis, keepdims=True) / scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def read_queries(mixing: jax.Array, logits: jax.Array, scale: float) -> jax.Array:
  """Linear attention's output: mixing (n, c_out, heads * dim_head) times the
  queries q = scale * softmax(logits) over each head's features, with logits
  (n, heads, dim_head, pixels) -> (n, c_out, pixels), in mixing's dtype.

  Written out so that q, stored once, is never transposed: autodiff's form
  copied the 256-wide q into pixels-major order for mixing's gradient and
  recomputed its softmax in each copy (docs/performance.md).
  """
  return _read_queries_fwd(mixing, logits, scale)[0]


def _read_queries_fwd(mixing, logits, scale):
  q = (jax.nn.softmax(logits.astype(jnp.float32), axis=2) * scale).astype(mixing.dtype)
  out = jax.lax.dot_general(mixing, q.reshape(q.shape[0], -1, q.shape[-1]), _BATCHED_MATMUL)
  return out, (mixing, q)


def _read_queries_bwd(scale, residuals, d_out):
  mixing, q = residuals
  d_out = d_out.astype(mixing.dtype)
  flat_q = q.reshape(q.shape[0], -1, q.shape[-1])
  d_mixing = jax.lax.dot_general(d_out, flat_q, _BATCHED_MATMUL_BT)
  d_q = jax.lax.dot_general(jnp.swapaxes(mixing, 1, 2), d_out, _BATCHED_MATMUL)
  d_logits = _softmax_grad(q, d_q.reshape(q.shape), 2, scale)
  return d_mixing, d_logits.astype(q.dtype)


read_queries.defvjp(_read_queries_fwd, _read_queries_bwd)


@jax.custom_vjp
def key_pixels(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Linear attention's keys times its inputs: k = softmax(logits) over the
  pixels, logits (n, heads * dim_head, pixels), x (n, c, pixels) -> (n, heads *
  dim_head, c) = sum over pixels of k x^T, in x's dtype. Written out like
  read_queries: k is stored once, normalized, and no broadcast of its softmax
  denominators is materialized for the backward pass.
  """
  return _key_pixels_fwd(logits, x)[0]


def _key_pixels_fwd(logits, x):
  k = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
  return jax.lax.dot_general(k, x, _BATCHED_MATMUL_BT), (k, x)


def _key_pixels_bwd(residuals, d_out):
  k, x = residuals
  d_out = d_out.astype(x.dtype)
  d_k = jax.lax.dot_general(d_out, x, _BATCHED_MATMUL)
  d_x = jax.lax.dot_general(jnp.swapaxes(d_out, 1, 2), k, _BATCHED_MATMUL)
  return _softmax_grad(k, d_k, -1).astype(k.dtype), d_x


key_pixels.defvjp(_key_pixels_fwd, _key_pixels_bwd)
