"""The diffusion process: noise schedule, objectives, the GaussianDiffusion
wrapper (the loss), the samplers, and the model built from a config."""

from video_diffusion.diffusion.gaussian import GaussianDiffusion

__all__ = ['GaussianDiffusion']
