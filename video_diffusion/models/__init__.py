"""Networks: the Unet3D denoiser, its layers and attention, the weight
initialisation, and the BERT text encoder's network. Channels-last arrays."""

from video_diffusion.models.unet import Unet3D

__all__ = ['Unet3D']
