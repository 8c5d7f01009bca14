"""Video diffusion in JAX and Flax NNX: a port of video-diffusion-pytorch 0.7.0.

Arrays are channels-last: videos are (batch, frames, height, width, channels).
The names of `__all__` are imported on first use, so the package and its
light modules (the config, the allocator helper) load without JAX. Importing
any module changes neither os.environ nor jax.config: on the CPU, call
`configure_cpu()` first thing, before JAX computes anything (docs/notebooks.md).
"""

import importlib

__version__ = '0.1.0'

# name -> 'module' (or 'module:attribute') it is imported from on first use
_LAZY = {
  'configure_cpu': 'video_diffusion.runtime.xla_options',
  'Config': 'video_diffusion.config',
  'load_config': 'video_diffusion.config',
  'Unet3D': 'video_diffusion.models.unet',
  'DiT': 'video_diffusion.models.dit',
  'GaussianDiffusion': 'video_diffusion.diffusion',
  'train_model': 'video_diffusion.train.loop:train',  # `train` is the subpackage
  'sample_checkpoint': 'video_diffusion.inference.checkpoint',
  'evaluate_checkpoint': 'video_diffusion.eval.evaluate',
}
__all__ = list(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    module, _, attribute = _LAZY[name].partition(':')
    return getattr(importlib.import_module(module), attribute or name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted([*globals(), *_LAZY])
