"""The VAE's training loss: its gradient reaches a decoder whose outputs overshoot [-1, 1]."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.vae import VAEConfig, WanVAE
from video_diffusion.vae.training import vae_loss

TINY = VAEConfig(
  base_dim=4,
  dim_mult=(1, 2),
  z_dim=4,
  num_res_blocks=1,
  temperal_downsample=(True,),
  in_channels=1,
  out_channels=1,
)


def test_the_loss_still_has_a_gradient_when_every_output_is_below_minus_one():
  """A decoder that outputs below -1 everywhere (its last bias at -5): a loss on the
  clipped decode would be flat there, and training would never leave it."""
  vae = WanVAE(TINY, rngs=nnx.Rngs(0))
  vae.decoder.conv_out.bias[...] = jnp.full((1,), -5.0)
  videos = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 5, 8, 8, 1)), jnp.float32)
  latents = vae.encode(videos)
  assert float(jnp.max(vae.decode(latents, clip=False))) < -1.0
  assert float(jnp.min(vae.decode(latents))) == -1.0  # decode clips by default

  graphdef, params = nnx.split(vae)

  @jax.jit
  def grads(params):
    loss = lambda p: vae_loss(nnx.merge(graphdef, p), videos, jax.random.key(0), 'l1', 1e-6)[0]
    return jax.grad(loss)(params)

  bias_grad = grads(params)['decoder']['conv_out']['bias'][...]
  assert float(bias_grad[0]) < -0.9  # d/db mean|x - (y + b)| = -1 where y + b < x
