"""Video diffusion in JAX and Flax NNX: a port of video-diffusion-pytorch 0.7.0.

Arrays are channels-last: videos are (batch, frames, height, width, channels).
"""

from video_diffusion.diffusion import GaussianDiffusion
from video_diffusion.unet import Unet3D

__all__ = ['GaussianDiffusion', 'Unet3D']
__version__ = '0.1.0'
