"""Video diffusion in JAX and Flax NNX: a port of video-diffusion-pytorch 0.7.0.

Arrays are channels-last: videos are (batch, frames, height, width, channels).
The model classes are imported on first use, so light modules (the allocator
helper, the checkpoint reader) load without JAX. Importing the package sets
the XLA options of `xla_options` (before JAX starts a backend).
"""

import importlib

from video_diffusion.runtime import xla_options

xla_options.apply()

__all__ = ['GaussianDiffusion', 'Unet3D']
__version__ = '0.1.0'

_LAZY = {'GaussianDiffusion': 'video_diffusion.diffusion', 'Unet3D': 'video_diffusion.models'}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
