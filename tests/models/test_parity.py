"""Float32 parity with video-diffusion-pytorch 0.7.0 on golden outputs (no torch)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import to_channels_last
from flax import nnx

from video_diffusion import GaussianDiffusion
from video_diffusion.interop.convert import unet_from_state_dict

pytestmark = pytest.mark.optimized  # compiled as users' runs are (tests/conftest.py)

ATOL = 1e-4
CONFIG_NAMES = ['cond_linear_attn', 'uncond_defaults', 'cond_partial_rotary', 'long_clip_out_dim']
DIFFUSION_CONFIGS = ['cond_linear_attn', 'uncond_defaults', 'cond_partial_rotary']


def spec_of(golden, name):
  return json.loads(str(golden[f'{name}/spec']))


def build_model(golden, name):
  """Our Unet3D with the reference's random-init weights of config `name`."""
  prefix = f'{name}/weights/'
  state_dict = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
  return unet_from_state_dict(state_dict, **spec_of(golden, name)['unet'])


@pytest.fixture(scope='session')
def models(golden):
  return {name: build_model(golden, name) for name in CONFIG_NAMES}


def assert_close(ours, reference_channels_first):
  ours = np.asarray(ours)
  ref = to_channels_last(reference_channels_first)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


def inputs(golden, name):
  x = jnp.asarray(to_channels_last(golden[f'{name}/x']))
  cond = golden.get(f'{name}/cond')
  return x, jnp.asarray(golden[f'{name}/t']), None if cond is None else jnp.asarray(cond)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_denoiser_matches_reference(golden, models, name):
  x, t, cond = inputs(golden, name)
  batch = x.shape[0]
  model = models[name]
  forward = nnx.jit(lambda m, x, t, cond, mask: m(x, t, cond, focus_present_mask=mask))
  assert_close(forward(model, x, t, cond, None), golden[f'{name}/out'])
  mixed = jnp.arange(batch) == 0
  assert_close(forward(model, x, t, cond, mixed), golden[f'{name}/out_focus_mixed'])
  assert_close(forward(model, x, t, cond, jnp.ones(batch, bool)), golden[f'{name}/out_focus_all'])


@pytest.mark.parametrize('name', ['cond_linear_attn', 'cond_partial_rotary'])
def test_null_condition_and_guidance_match_reference(golden, models, name):
  x, t, cond = inputs(golden, name)
  model = models[name]
  null = nnx.jit(lambda m, x, t, cond: m(x, t, cond, null_cond_prob=1.0))
  assert_close(null(model, x, t, cond), golden[f'{name}/out_null'])
  scale = spec_of(golden, name)['cond_scale']
  guided = nnx.jit(lambda m, x, t, cond: m.forward_with_cond_scale(x, t, cond, cond_scale=scale))
  assert_close(guided(model, x, t, cond), golden[f'{name}/out_guided'])


def build_diffusion(golden, models, name):
  return GaussianDiffusion(models[name], **spec_of(golden, name)['diffusion'])


@pytest.mark.parametrize('name', DIFFUSION_CONFIGS)
def test_schedule_buffers_match_reference(golden, models, name):
  diffusion = build_diffusion(golden, models, name)
  prefix = f'{name}/buffers/'
  names = [k[len(prefix) :] for k in golden if k.startswith(prefix)]
  assert len(names) == 12
  for buffer in names:
    np.testing.assert_allclose(
      getattr(diffusion, buffer)[...], golden[prefix + buffer], rtol=1e-6, atol=1e-6, err_msg=buffer
    )


@pytest.mark.parametrize('name', DIFFUSION_CONFIGS)
def test_training_loss_matches_reference(golden, models, name):
  diffusion = build_diffusion(golden, models, name)
  x01 = jnp.asarray(to_channels_last(golden[f'{name}/loss_x01']))
  noise = jnp.asarray(to_channels_last(golden[f'{name}/loss_noise']))
  _, t, cond = inputs(golden, name)
  loss = nnx.jit(lambda d, *args: d.p_losses(*args, cond=cond))(diffusion, x01 * 2 - 1, t, noise)
  np.testing.assert_allclose(float(loss), float(golden[f'{name}/loss']), rtol=0, atol=ATOL)


@pytest.mark.parametrize('name', DIFFUSION_CONFIGS)
def test_p_mean_variance_matches_reference(golden, models, name):
  diffusion = build_diffusion(golden, models, name)
  x_t = jnp.asarray(to_channels_last(golden[f'{name}/p_x_t']))
  _, t, cond = inputs(golden, name)
  scale = spec_of(golden, name)['cond_scale']
  mean, variance, log_variance = nnx.jit(
    lambda d, x_t, t: d.p_mean_variance(x_t, t, cond=cond, cond_scale=scale)
  )(diffusion, x_t, t)
  assert_close(mean, golden[f'{name}/p_mean'])
  np.testing.assert_allclose(
    variance.reshape(-1), golden[f'{name}/p_variance'].reshape(-1), rtol=1e-6, atol=1e-7
  )
  np.testing.assert_allclose(
    log_variance.reshape(-1), golden[f'{name}/p_log_variance'].reshape(-1), rtol=1e-5
  )


def test_parity_is_compiled_with_xla_optimisations():
  """The `optimized` mark turns XLA's passes back on (the rest of the suite runs
  without them, tests/conftest.py): parity holds for what users run."""
  assert jax.config.values['jax_disable_most_optimizations'] is False
