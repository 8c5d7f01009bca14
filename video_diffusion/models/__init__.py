"""Networks: the Unet3D denoiser, its layers and attention, the weight
initialisation, and the BERT text encoder's network. Channels-last arrays."""

from video_diffusion.models.unet import Unet3D
from video_diffusion.runtime import xla_options

xla_options.run_cpu_computations_inline()

__all__ = ['Unet3D']
