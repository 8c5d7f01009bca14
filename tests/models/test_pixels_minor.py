"""The pixels-minor attention kernels against plain formulas: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.models import pixels_minor
from video_diffusion.models.attention import TemporalAttention, apply_rotary, rotary_frequencies
from video_diffusion.models.init import torch_default_init


def plain_attention(q, k, v, bias):
  """Softmax attention across frames, written as einsums (autodiff gives its gradient)."""
  scores = jnp.einsum('bihdp,bjhdp->bijhp', q, k) + bias
  return jnp.einsum('bijhp,bjhdp->bihdp', jax.nn.softmax(scores, axis=2), v)


def test_frame_attention_values_and_gradients_match_the_plain_formula():
  keys = jax.random.split(jax.random.key(0), 5)
  q, k, v = (jax.random.normal(key, (2, 5, 3, 8, 6)) for key in keys[:3])
  bias = jax.random.normal(keys[3], (5, 5, 3, 1))
  cotangent = jax.random.normal(keys[4], q.shape)
  loss = lambda fn: lambda *args: jnp.sum(fn(*args) * cotangent)
  np.testing.assert_allclose(
    pixels_minor.attend_frames(q, k, v, bias), plain_attention(q, k, v, bias), atol=1e-5
  )
  ours = jax.grad(loss(pixels_minor.attend_frames), argnums=(0, 1, 2, 3))(q, k, v, bias)
  plain = jax.grad(loss(plain_attention), argnums=(0, 1, 2, 3))(q, k, v, bias)
  for name, a, b in zip(('q', 'k', 'v', 'bias'), ours, plain):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=f'gradient of {name}')


@pytest.mark.parametrize(
  'scores', [pixels_minor._scores_by_pair, pixels_minor._scores_by_feature]
)  # the accelerators' form and the CPU's
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_both_forms_of_the_frame_pair_scores_equal_the_einsum_with_float32_results(scores, dtype):
  q, k = (jax.random.normal(key, (2, 5, 3, 8, 6)) for key in jax.random.split(jax.random.key(4), 2))
  q, k = q.astype(dtype), k.astype(dtype)
  expected = jnp.einsum('bihdp,bjhdp->bijhp', q.astype(jnp.float32), k.astype(jnp.float32))
  result = scores(q, k)
  assert result.dtype == jnp.float32
  # bfloat16: the pair form rounds each product to bfloat16 before its float32 sum.
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
  np.testing.assert_allclose(result, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize('mix', [pixels_minor._mix_unrolled, pixels_minor._mix_by_frame])
@pytest.mark.parametrize('over_first', [False, True])
def test_both_forms_of_the_frame_mixing_equal_the_einsum(mix, over_first):
  weights = jax.random.normal(jax.random.key(5), (2, 5, 5, 3, 6))  # (b, i, j, heads, pixels)
  values = jax.random.normal(jax.random.key(6), (2, 5, 3, 8, 6))  # (b, frames, heads, d, pixels)
  formula = 'bijhp,bihdp->bjhdp' if over_first else 'bijhp,bjhdp->bihdp'
  expected = jnp.einsum(formula, weights, values)
  np.testing.assert_allclose(mix(weights, values, over_first), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_frame_projection_values_and_gradients_equal_the_einsum(dtype):
  keys = jax.random.split(jax.random.key(7), 3)
  kernels = jax.random.normal(keys[0], (3, 4, 6))  # (frames, c_in, c_out)
  x = jax.random.normal(keys[1], (2, 3, 4, 5))  # (n, frames, c_in, pixels)
  cotangent = jax.random.normal(keys[2], (2, 3, 6, 5))

  def einsum(kernels, x, dtype):
    return jnp.einsum('fco,nfcp->nfop', kernels.astype(dtype), x.astype(dtype))

  loss = lambda fn: lambda k, x: jnp.sum(fn(k, x, dtype).astype(jnp.float32) * cotangent)
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
  ours = jax.value_and_grad(loss(pixels_minor.project_frames), argnums=(0, 1))(kernels, x)
  plain = jax.value_and_grad(loss(einsum), argnums=(0, 1))(kernels, x)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(a, b, atol=tolerance, rtol=tolerance)


def plain_read_queries(mixing, logits, scale):
  q = jax.nn.softmax(logits.astype(jnp.float32), axis=2) * scale
  per_head = mixing.reshape(logits.shape[:1] + (-1,) + logits.shape[1:3])
  return jnp.einsum('nohd,nhdp->nop', per_head, q)


def plain_key_pixels(logits, x):
  return jnp.einsum('nkp,ncp->nkc', jax.nn.softmax(logits.astype(jnp.float32), axis=-1), x)


def linear_attention_case(kernel):
  """(ours, plain formula, the two differentiable inputs) of a linear attention kernel."""
  keys = jax.random.split(jax.random.key(8), 3)
  n, heads, dim_head, c, c_out, pixels = 2, 3, 4, 5, 6, 7
  if kernel == 'read_queries':
    mixing = jax.random.normal(keys[0], (n, c_out, heads * dim_head))
    logits = 3 * jax.random.normal(keys[1], (n, heads, dim_head, pixels))
    scale = 0.3
    ours = lambda m, q: pixels_minor.read_queries(m, q, scale)
    return ours, lambda m, q: plain_read_queries(m, q, scale), (mixing, logits)
  logits = 3 * jax.random.normal(keys[1], (n, heads * dim_head, pixels))
  x = jax.random.normal(keys[2], (n, c, pixels))
  return pixels_minor.key_pixels, plain_key_pixels, (logits, x)


@pytest.mark.parametrize('kernel', ['read_queries', 'key_pixels'])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_linear_attention_kernels_values_and_gradients_equal_the_plain_formulas(kernel, dtype):
  ours_fn, plain_fn, args = linear_attention_case(kernel)
  args = tuple(a.astype(dtype) for a in args)
  out = ours_fn(*args)
  assert out.dtype == dtype
  cotangent = jax.random.normal(jax.random.key(9), out.shape)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * cotangent)
  ours = jax.value_and_grad(loss(ours_fn), argnums=(0, 1))(*args)
  plain = jax.value_and_grad(loss(plain_fn), argnums=(0, 1))(*args)
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.float32(a), np.float32(b), atol=tolerance, rtol=tolerance)


def test_rotary_matrices_and_rotated_kernels_equal_the_rotary_embedding_along_frames():
  heads, dim_head, frames = 3, 12, 5
  inv_freq = rotary_frequencies(8)  # a partial rotary: 8 of 12 features
  x = jax.random.normal(jax.random.key(1), (frames, heads, dim_head))
  expected = jnp.swapaxes(apply_rotary(jnp.swapaxes(x, 0, 1), inv_freq), 0, 1)
  rotations = pixels_minor.rotary_matrices(frames, dim_head, inv_freq)
  np.testing.assert_allclose(jnp.einsum('fed,fhd->fhe', rotations, x), expected, atol=1e-6)
  # Folded into a projection: rotate(x W) per frame == x (W rotated for that frame).
  tokens = jax.random.normal(jax.random.key(2), (frames, 7))
  kernel = jax.random.normal(jax.random.key(3), (7, heads * dim_head))
  projected = (tokens @ kernel).reshape(frames, heads, dim_head)
  expected = jnp.swapaxes(apply_rotary(jnp.swapaxes(projected, 0, 1), inv_freq), 0, 1)
  folded = jnp.einsum('fc,fce->fe', tokens, pixels_minor.rotated_kernel(kernel, rotations, heads))
  np.testing.assert_allclose(folded.reshape(expected.shape), expected, atol=1e-5)


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
@pytest.mark.parametrize('focus', [None, 'mixed'])
@pytest.mark.parametrize('tile', [None, 3])  # None: the whole frame; 3: a loop over 3 tiles
def test_temporal_attention_layouts_agree_with_gradients(focus, tile):
  layer = TemporalAttention(8, heads=2, dim_head=16, rngs=nnx.Rngs(0))
  torch_default_init(layer, 0)  # a layer alone holds shapes; Unet3D sets its own weights
  x = jax.random.normal(jax.random.key(2), (2, 4, 3, 3, 8))  # (b, f, h, w, c)
  pos_bias = jax.random.normal(jax.random.key(3), (2, 4, 4))
  mask = None if focus is None else jnp.array([True, False])
  graphdef, state = nnx.split(layer)

  def loss(state, x, pos_bias, pixels_minor_path):
    model = nnx.merge(graphdef, state)
    if pixels_minor_path:
      out = model._pixels_minor(x, pos_bias, mask, tile)
    else:  # the batched-matmul form the layer uses when a frame has few pixels
      b, f, h, w, c = x.shape
      tokens = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, h * w, f, c)
      out = model.attn(tokens, pos_bias, mask)
      out = jnp.transpose(out.reshape(b, h, w, f, c), (0, 3, 1, 2, 4))
    return jnp.sum(jnp.sin(out)), out

  grads = {}
  for path in (True, False):
    (_, out), grads[path] = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
      state, x, pos_bias, path
    )
    grads[path] = (out,) + grads[path]
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  assert layer(x, pos_bias, mask).shape == x.shape


def test_tiles_round_trip_and_hold_consecutive_pixels():
  x = jnp.arange(2 * 3 * 8 * 5).reshape(2, 3, 8, 5)  # (b, f, pixels, c)
  tiles = pixels_minor.to_tiles(x, 4)
  assert tiles.shape == (4, 3, 5, 4)
  np.testing.assert_array_equal(tiles[3, 1], x[1, 1, 4:8].T)  # video 1, second tile, frame 1
  np.testing.assert_array_equal(pixels_minor.from_tiles(tiles, 2), x)
  assert pixels_minor.pixel_tile(64 * 64) == pixels_minor.TILE_PIXELS
  assert pixels_minor.pixel_tile(16 * 16) == 16 * 16
