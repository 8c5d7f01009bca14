"""What training the Wan VAE needs from this stage: its weights split off as a
pure dict, and the loss (reconstruction plus KL to a standard normal).

Videos are (batch, 1 + 4k, height, width, channels) in [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from video_diffusion.diffusion.objectives import LOSSES
from video_diffusion.vae.config import VAEConfig
from video_diffusion.vae.wan import Posterior, WanVAE


def split_vae(config: VAEConfig, seed: int, *, abstract: bool = False):
  """(graphdef, params, rest) of a WanVAE initialised from `seed`; params as a
  pure dict (ShapeDtypeStructs with abstract=True, for restoring into), rest the
  state that is not a Param (none today). nnx.merge(graphdef, params, rest) is the model."""
  build = lambda: WanVAE(config, rngs=nnx.Rngs(seed))
  model = nnx.eval_shape(build) if abstract else build()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), rest


def kl_to_standard_normal(posterior: Posterior) -> jax.Array:
  """KL(N(mean, var) || N(0, 1)) of each latent element, averaged over all of them."""
  mean, logvar = posterior.mean, posterior.logvar
  return 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def vae_loss(
  vae: WanVAE, videos: jax.Array, key: jax.Array, loss_type: str, kl_weight: float
) -> tuple[jax.Array, dict]:
  """(loss, {'recon_loss', 'kl'}) of videos in [-1, 1]: `loss_type` ('l1' or 'l2')
  of the decoded posterior sample (drawn from `key`) against the videos, averaged
  over pixels, plus kl_weight times the KL of the posterior to N(0, 1). The
  decode is not clipped: a clip would stop the gradient of every pixel beyond
  [-1, 1], and a decoder whose outputs all fell below -1 would never learn again."""
  posterior = vae.posterior(videos)
  reconstruction = vae.decode(posterior.sample(key), clip=False)
  recon_loss = jnp.mean(LOSSES[loss_type](reconstruction - videos))
  kl = kl_to_standard_normal(posterior)
  return recon_loss + kl_weight * kl, {'recon_loss': recon_loss, 'kl': kl}
