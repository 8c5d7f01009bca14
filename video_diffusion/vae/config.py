"""The Wan 2.1 VAE's config: the keys of diffusers' AutoencoderKLWan config.json (no JAX).

It is the run config's `vae` section, defined in the config stage
(video_diffusion.config.vae); the names are kept here for the vae modules.
"""

from video_diffusion.config.vae import CLASS_NAME, ENCODER_CHUNK, VAEConfig

__all__ = ['CLASS_NAME', 'ENCODER_CHUNK', 'VAEConfig']
