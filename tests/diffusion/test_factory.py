"""The model of a config, initialised as PyTorch initialises the reference."""

import math

import jax
import numpy as np
from flax import nnx

from video_diffusion.config import config_from_dict
from video_diffusion.diffusion.factory import build_diffusion, split_diffusion
from video_diffusion.models.layers import Upsample

CONFIG = {
  'unet': dict(dim=16, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8, cond_dim=4),
  'diffusion': dict(image_size=8, num_frames=3, channels=1, timesteps=20),
}


def test_weights_are_uniform_in_one_over_sqrt_fan_in_like_torch():
  model = build_diffusion(config_from_dict(CONFIG))
  checked = 0
  for _, layer in nnx.iter_modules(model):
    if not isinstance(layer, (nnx.Linear, nnx.Conv, Upsample)):
      continue
    kernel = np.asarray(layer.kernel[...])
    # torch: fan_in = in_channels * kernel area; a transposed conv counts out_channels.
    channels = kernel.shape[-1] if isinstance(layer, Upsample) else kernel.shape[-2]
    bound = 1 / math.sqrt(channels * int(np.prod(kernel.shape[:-2])))
    assert np.abs(kernel).max() <= bound
    if kernel.size >= 2000:
      assert abs(kernel.std() - bound / math.sqrt(3)) < 0.1 * bound
      checked += 1
    if layer.bias is not None:
      assert np.abs(np.asarray(layer.bias[...])).max() <= bound
  assert checked >= 5
  gains = [
    np.asarray(v[...])
    for path, v in nnx.iter_graph(model)
    if isinstance(v, nnx.Param) and path[-1] == 'gamma'
  ]
  assert gains and all((g == 1).all() for g in gains)
  null = np.asarray(model.denoise_fn.null_cond_emb[...])
  assert null.shape == (4,) and null.std() > 0.1


def test_initialisation_is_deterministic_in_the_seed():
  _, a, _ = split_diffusion(config_from_dict(CONFIG))
  _, b, _ = split_diffusion(config_from_dict(CONFIG))
  other = dict(CONFIG, unet=dict(CONFIG['unet'], rngs_seed=1))
  _, c, _ = split_diffusion(config_from_dict(other))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_abstract_model_has_shapes_only_and_a_real_schedule():
  _, params, constants = split_diffusion(config_from_dict(CONFIG), abstract=True)
  _, real, _ = split_diffusion(config_from_dict(CONFIG))
  assert all(isinstance(p, jax.ShapeDtypeStruct) for p in jax.tree.leaves(params))
  assert [p.shape for p in jax.tree.leaves(params)] == [p.shape for p in jax.tree.leaves(real)]
  assert all(isinstance(c, jax.Array) for c in jax.tree.leaves(constants))
