"""Mixed precision (trainer.compute_dtype) and rematerialisation (trainer.remat)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.config import config_from_dict
from video_diffusion.diffusion.factory import split_diffusion

pytestmark = pytest.mark.optimized  # compiled as users' runs are (tests/conftest.py)

UNET = dict(dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8)
DIFFUSION = dict(image_size=8, num_frames=3, channels=1, timesteps=20, loss_type='l2')
VARIANTS = {
  'f32': dict(compute_dtype='float32'),
  'bf16': dict(compute_dtype='bfloat16'),
  'remat': dict(compute_dtype='float32', remat=True),
}

# Measured on this model and batch: |loss_bf16 - loss_f32| / loss_f32 = 1.5e-3
# (1.3694 vs 1.3715) and gradient cosine similarity 0.9998. Asserted with a ~3x
# margin: relative loss difference < 5e-3, cosine > 0.99.
BF16_LOSS_RTOL = 5e-3
BF16_GRAD_MIN_COSINE = 0.99


def _cfg(**trainer):
  return config_from_dict({'unet': UNET, 'diffusion': DIFFUSION, 'trainer': trainer})


def _inputs():
  rng = np.random.default_rng(0)
  x_start = jnp.asarray(rng.uniform(-1, 1, (2, 3, 8, 8, 1)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((2, 3, 8, 8, 1)), jnp.float32)
  return x_start, jnp.array([3, 15]), noise


# The bfloat16 variant compiles as users' runs do; the float32 reference and remat,
# compared with each other to 1e-6, compile without XLA's optimisations (a third of the
# time; their difference from optimised float32 is ~1e-6, far inside the bfloat16 bounds).
OPTIMISED = {'bf16'}


@pytest.fixture(scope='module')
def results():
  """(params, loss, grads) of each variant: p_losses with fixed t and noise, jitted."""
  x_start, t, noise = _inputs()
  out = {}
  before = jax.config.values['jax_disable_most_optimizations']
  for name, trainer in VARIANTS.items():
    graphdef, params, constants = split_diffusion(_cfg(**trainer))

    @jax.jit
    def loss_and_grad(params, graphdef=graphdef, constants=constants):
      def loss_fn(p):
        return nnx.merge(graphdef, p, constants).p_losses(x_start, t, noise)

      return jax.value_and_grad(loss_fn)(params)

    jax.config.update('jax_disable_most_optimizations', name not in OPTIMISED)
    try:
      loss, grads = loss_and_grad(params)
    finally:
      jax.config.update('jax_disable_most_optimizations', before)
    out[name] = (params, float(loss), grads)
  return out


def _flat(tree):
  return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)])


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_params_stay_float32_with_the_same_tree(results):
  ref = jax.tree.map(lambda a: (a.shape, a.dtype), results['f32'][0])
  for name in VARIANTS:
    params, _, grads = results[name]
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == ref
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_bfloat16_loss_and_grads_are_close_to_float32(results):
  _, loss32, grads32 = results['f32']
  _, loss16, grads16 = results['bf16']
  assert np.isfinite(loss16) and loss16 != loss32  # bfloat16 really ran
  assert abs(loss16 - loss32) / loss32 < BF16_LOSS_RTOL
  g32, g16 = _flat(grads32), _flat(grads16)
  cosine = g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16))
  assert cosine > BF16_GRAD_MIN_COSINE


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_remat_gives_the_same_loss_and_grads(results):
  _, loss, grads = results['f32']
  _, loss_remat, grads_remat = results['remat']
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  g, g_remat = _flat(grads), _flat(grads_remat)
  # Relative to the gradient's scale: single entries near zero carry rounding noise.
  assert np.max(np.abs(g_remat - g)) <= 1e-6 * np.max(np.abs(g))


def _grad_jaxpr(**trainer) -> str:
  """The jaxpr text of the loss gradient of a variant's model."""
  x_start, t, noise = _inputs()
  graphdef, params, constants = split_diffusion(_cfg(**trainer), abstract=True)
  loss = lambda p: nnx.merge(graphdef, p, constants).p_losses(x_start, t, noise)
  return str(jax.make_jaxpr(jax.grad(loss))(params))


def test_float32_computes_in_float32_and_bfloat16_in_bfloat16():
  assert 'bf16' not in _grad_jaxpr(compute_dtype='float32')  # nothing is cast
  assert 'conv_general_dilated[' in _grad_jaxpr(compute_dtype='bfloat16')
  assert 'bf16' in _grad_jaxpr(compute_dtype='bfloat16')


def test_remat_recomputes_the_blocks_in_the_backward_pass():
  plain, remat = _grad_jaxpr(), _grad_jaxpr(remat=True)
  assert 'remat2[' not in plain
  assert remat.count('remat2[') == 5  # 2 down levels, the middle, 2 up levels
  # The forward convolutions run again in the backward pass.
  assert remat.count('conv_general_dilated[') > plain.count('conv_general_dilated[')
