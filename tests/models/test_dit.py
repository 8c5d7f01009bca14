"""The space-time transformer backbone: attention, positions, conditioning, masking,
initialisation, precision and remat, on tiny shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.config import config_from_dict
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.models.dit import (
  DiT,
  apply_rope,
  attend,
  attention_implementation,
  rope_angles,
  token_grid,
)

SHAPE = (2, 4, 8, 8, 1)  # (batch, frames, height, width, channels)


def plain_attention(q, k, v, mask=None):
  """softmax(q k^T / sqrt(d)) v, written out; (batch, tokens, heads, width)."""
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = jnp.where(mask, logits, -1e30)
  return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize('mask_shape', [None, (3, 1, 5, 5), (3, 2, 5, 5), (1, 1, 5, 5)])
def test_attention_equals_the_softmax_formula(mask_shape):
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (3, 5, 2, 8)) for key in keys[:3])
  mask = None
  if mask_shape is not None:
    mask = jax.random.bernoulli(keys[3], 0.6, mask_shape) | jnp.eye(5, dtype=bool)
  np.testing.assert_allclose(attend(q, k, v, mask), plain_attention(q, k, v, mask), atol=1e-5)


@pytest.mark.parametrize(
  'backend, dtype, head_width, expected',
  [
    ('gpu', jnp.bfloat16, 64, 'cudnn'),
    ('gpu', jnp.float16, 128, 'cudnn'),
    ('gpu', jnp.float32, 64, None),  # cuDNN's fused kernel takes no float32
    ('gpu', jnp.bfloat16, 12, None),  # head width not a multiple of 8
    ('gpu', jnp.bfloat16, 256, None),
    ('cpu', jnp.bfloat16, 64, None),
  ],
)
def test_cudnn_attention_only_where_it_fits(monkeypatch, backend, dtype, head_width, expected):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  q = jnp.zeros((1, 4, 2, head_width), dtype)
  k = jnp.zeros((1, 1024, 2, head_width), dtype)
  assert attention_implementation(q, k) == expected
  assert attention_implementation(q, k[:, :10]) is None  # XLA is faster on short axes


def test_rope3d_scores_depend_only_on_the_offset():
  """q.k after the rotation is a function of the positions' difference on each axis."""
  grid = token_grid(3, 4, 4)
  angles = jnp.asarray(rope_angles(grid, 12).reshape(3, 16, 6))
  q = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (12,)), (1, 3, 16, 1, 12))
  k = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (12,)), (1, 3, 16, 1, 12))
  rq, rk = apply_rope(q, angles).reshape(48, 12), apply_rope(k, angles).reshape(48, 12)
  scores = np.asarray(rq @ rk.T)
  pos = grid.astype(int)
  index = {tuple(p): i for i, p in enumerate(pos)}
  # (0,0,0)->(1,2,1) and (1,1,2)->(2,3,3) have the same offset; a different offset differs.
  same = scores[index[(0, 0, 0)], index[(1, 2, 1)]], scores[index[(1, 1, 2)], index[(2, 3, 3)]]
  np.testing.assert_allclose(*same, rtol=1e-5)
  assert abs(scores[index[(0, 0, 0)], index[(1, 2, 2)]] - same[0]) > 1e-3


def _dit(**kwargs):
  args = dict(channels=1, width=24, depth=2, heads=2, rngs=nnx.Rngs(0))
  return DiT(**(args | kwargs))


def _randomised(model, scale=0.2):
  """The model with every parameter redrawn (the zero-initialised layers too)."""
  graphdef, params = nnx.split(model, nnx.Param)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  new = [scale * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, new))


def test_adaln_zero_starts_at_zero_output_and_identity_blocks():
  model = _dit(num_classes=3)
  x = jax.random.normal(jax.random.key(0), SHAPE)
  out = model(x, jnp.array([1.0, 500.0]), jnp.array([0, 2]))
  assert out.shape == SHAPE and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)
  for block in model.blocks:
    np.testing.assert_array_equal(block.modulation.kernel[...], 0.0)
  kernel = np.asarray(model.blocks[0].qkv.kernel[...])
  bound = np.sqrt(6 / sum(kernel.shape))
  assert 0.5 * bound < np.abs(kernel).max() <= bound  # Xavier uniform


@pytest.mark.parametrize('attention', ['factorised', 'full'])
def test_focused_videos_see_only_their_own_frame(attention):
  """With focus_present_mask, changing frame 0 changes nothing in frames 1..3; without, it does."""
  model = _randomised(_dit(attention=attention, positions='sincos', depth=3))
  x = jax.random.normal(jax.random.key(0), SHAPE)
  y = x.at[:, 0].add(1.0)
  t = jnp.array([10.0, 700.0])
  focus = jnp.array([True, False])
  a, b = model(x, t, focus_present_mask=focus), model(y, t, focus_present_mask=focus)
  np.testing.assert_allclose(a[0, 1:], b[0, 1:], atol=1e-6)
  assert np.abs(a[1, 1:] - b[1, 1:]).max() > 1e-3
  assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-3


def test_the_null_condition_ignores_the_label_and_guidance_mixes_both():
  model = _randomised(_dit(num_classes=4))
  x = jax.random.normal(jax.random.key(0), SHAPE)
  t = jnp.array([100.0, 100.0])
  null = jnp.array([True, True])
  np.testing.assert_allclose(
    model(x, t, jnp.array([0, 1]), null_mask=null), model(x, t, jnp.array([3, 2]), null_mask=null)
  )
  cond, uncond = model(x, t, jnp.array([0, 1])), model(x, t, jnp.array([0, 1]), null_mask=null)
  assert np.abs(cond - uncond).max() > 1e-3
  guided = model.forward_with_cond_scale(x, t, jnp.array([0, 1]), cond_scale=3.0)
  np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_vector_conditions_and_temporal_patches():
  model = _randomised(_dit(cond_dim=5, temporal_patch_size=2, patch_size=4))
  x = jax.random.normal(jax.random.key(0), SHAPE)
  out = model(x, jnp.array([1.0, 2.0]), jnp.ones((2, 5)))
  assert out.shape == SHAPE
  with pytest.raises(ValueError, match='multiples of them; got 3 frames of 8x8'):
    model(x[:, :3], jnp.array([1.0, 2.0]), jnp.ones((2, 5)))
  with pytest.raises(ValueError, match='pass cond'):
    model(x, jnp.array([1.0, 2.0]))


DIT_CONFIG = {
  'unet': dict(channels=1),
  'diffusion': dict(
    backbone='dit', objective='flow', image_size=8, num_frames=4, channels=1, loss_type='l2'
  ),
  'dit': dict(width=24, depth=2, heads=2),
}

# Measured on this model and batch: bf16 loss within 1.3e-4 relative of float32;
# gradient cosine 0.99999; remat gradients within 7e-8 of the largest.
# Asserted with margins: 1e-2, 0.99 and 1e-5.
BF16_LOSS_RTOL = 1e-2
BF16_GRAD_MIN_COSINE = 0.99


@pytest.fixture(scope='module')
def precision_results():
  """(loss, grads) of the DiT with float32, bfloat16 and remat, fixed inputs."""
  rng = np.random.default_rng(0)
  x_start = jnp.asarray(rng.uniform(-1, 1, SHAPE), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
  u = jnp.array([0.3, 0.8])
  out = {}
  for name, trainer in {
    'f32': {},
    'bf16': {'compute_dtype': 'bfloat16'},
    'remat': {'remat': True},
  }.items():
    graphdef, params, constants = split_diffusion(
      config_from_dict(DIT_CONFIG | {'trainer': trainer})
    )
    params = jax.tree.map(
      lambda p, k: p + 0.1 * jax.random.normal(k, p.shape),
      params,
      jax.tree.unflatten(
        jax.tree.structure(params),
        list(jax.random.split(jax.random.key(3), len(jax.tree.leaves(params)))),
      ),
    )
    loss_fn = lambda p, g=graphdef, c=constants: nnx.merge(g, p, c).p_losses(x_start, u, noise)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    flat = np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(grads)])
    out[name] = (float(loss), flat)
  return out


def test_dit_bfloat16_is_close_to_float32(precision_results):
  loss32, g32 = precision_results['f32']
  loss16, g16 = precision_results['bf16']
  assert loss16 != loss32 and abs(loss16 - loss32) / loss32 < BF16_LOSS_RTOL
  assert g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16)) > BF16_GRAD_MIN_COSINE


def test_dit_remat_gives_the_same_loss_and_grads(precision_results):
  loss, g = precision_results['f32']
  loss_remat, g_remat = precision_results['remat']
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  assert np.max(np.abs(g_remat - g)) <= 1e-5 * np.max(np.abs(g))
