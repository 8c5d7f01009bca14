"""Wan 2.1's causal video autoencoder (diffusers' AutoencoderKLWan) in Flax NNX."""

from video_diffusion.vae.config import VAEConfig
from video_diffusion.vae.loading import load_vae
from video_diffusion.vae.wan import Posterior, WanVAE

__all__ = ['Posterior', 'VAEConfig', 'WanVAE', 'load_vae']
