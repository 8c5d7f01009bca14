"""One weight-initialisation path: the library constructor and a config agree, and
the weights are drawn once."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.config import config_from_dict
from video_diffusion.diffusion.factory import build_diffusion
from video_diffusion.models import init, unet
from video_diffusion.models.unet import Unet3D

UNET = dict(dim=8, dim_mults=(1, 2), channels=1, attn_heads=2, attn_dim_head=8, num_classes=3)


def _params(module):
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def test_a_config_and_the_constructor_with_the_same_seed_give_the_same_weights():
  cfg = config_from_dict(
    {
      'unet': dict(UNET, dim_mults=list(UNET['dim_mults']), rngs_seed=3),
      'diffusion': dict(image_size=8, num_frames=2, channels=1),
    }
  )
  from_config = _params(build_diffusion(cfg).denoise_fn)
  direct = _params(Unet3D(**UNET, rngs=nnx.Rngs(3)))
  other = _params(Unet3D(**UNET, rngs=nnx.Rngs(4)))
  leaves = jax.tree.leaves(from_config)
  assert len(leaves) == len(jax.tree.leaves(direct)) > 20
  jax.tree.map(np.testing.assert_array_equal, from_config, direct)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves, jax.tree.leaves(other)))


def test_the_weights_are_drawn_once(monkeypatch):
  calls = []

  def recording_init(module, seed):
    values = [v.get_value() for _, v in nnx.iter_graph(module) if isinstance(v, nnx.Param)]
    # Nothing was initialised before: every parameter is still only a shape.
    calls.append(all(isinstance(v, jax.ShapeDtypeStruct) for v in values))
    init.torch_default_init(module, seed)

  monkeypatch.setattr(unet, 'torch_default_init', recording_init)
  model = Unet3D(**UNET, rngs=nnx.Rngs(0))
  assert calls == [True]
  assert all(
    isinstance(v.get_value(), jax.Array) and v.dtype == jnp.float32
    for _, v in nnx.iter_graph(model)
    if isinstance(v, nnx.Param)
  )


def test_under_eval_shape_nothing_is_drawn():
  abstract = nnx.eval_shape(lambda: Unet3D(**UNET, rngs=nnx.Rngs(0)))
  assert all(
    isinstance(v.get_value(), jax.ShapeDtypeStruct)
    for _, v in nnx.iter_graph(abstract)
    if isinstance(v, nnx.Param)
  )
