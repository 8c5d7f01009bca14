"""The names a config may use at each extension point, and what the config
needs to know about each: the JAX-free side of the registries.

The implementations are registered under the same names in the JAX modules:
diffusion.samplers.SAMPLERS, diffusion.factory.BACKBONES,
diffusion.objectives.OBJECTIVES, LOSS_WEIGHTINGS and LOSSES, and
diffusion.schedule.BETA_SCHEDULES and TIME_SAMPLINGS
(tests/diffusion/test_registries.py checks that both sides agree). The config
checks, default step counts, flow/Gaussian fit, checkpoint comparison and CLI
choices all read these tables; samplers.register_sampler and
factory.register_backbone fill both sides at once. This module does not import JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplerInfo:
  """flow: walks a flow-matching model (else a Gaussian one); default_steps:
  steps per video when none are asked for (None: every timestep of the model)."""

  flow: bool
  default_steps: int | None


SAMPLERS: dict[str, SamplerInfo] = {
  'ddpm': SamplerInfo(flow=False, default_steps=None),
  'ddim': SamplerInfo(flow=False, default_steps=50),
  'dpmpp': SamplerInfo(flow=False, default_steps=20),
  'euler': SamplerInfo(flow=True, default_steps=50),
  'heun': SamplerInfo(flow=True, default_steps=20),
}


@dataclass(frozen=True)
class ObjectiveInfo:
  """flow: flow matching (continuous times, the flow samplers), else a Gaussian objective."""

  flow: bool


OBJECTIVES: dict[str, ObjectiveInfo] = {
  'eps': ObjectiveInfo(flow=False),
  'x0': ObjectiveInfo(flow=False),
  'v': ObjectiveInfo(flow=False),
  'flow': ObjectiveInfo(flow=True),
}


@dataclass(frozen=True)
class WeightingInfo:
  """flow: also fits flow matching (else the Gaussian objectives only)."""

  flow: bool


LOSS_WEIGHTINGS: dict[str, WeightingInfo] = {
  'none': WeightingInfo(flow=True),
  'min_snr': WeightingInfo(flow=False),
}
LOSSES: list[str] = ['l1', 'l2']
BETA_SCHEDULES: list[str] = ['cosine', 'linear']  # the Gaussian objectives' noise schedules
TIME_SAMPLINGS: list[str] = ['uniform', 'logit_normal']  # flow matching's training times


@dataclass(frozen=True)
class BackboneInfo:
  """section: the backbone's own config section (beyond unet and diffusion,
  which every backbone reads), compared with a checkpoint's; None = none.
  check(cfg): what the config gets wrong for this backbone, or None."""

  section: str | None = None
  check: Callable[[Any], str | None] | None = None


def _check_unet3d(cfg) -> str | None:
  """Whole frames at every level of the U-Net."""
  d, u = cfg.diffusion, cfg.unet
  factor = 2 ** (len(u.dim_mults) - 1)
  if d.image_size % factor:
    return (
      f'diffusion.image_size ({d.image_size}) must be divisible by {factor}, '
      f'since unet.dim_mults ({list(u.dim_mults)}) halves the frame size '
      f'{len(u.dim_mults) - 1} times; change diffusion.image_size or unet.dim_mults'
    )
  return None


def _check_dit(cfg) -> str | None:
  """The dit section against the video shape: whole patches, whole heads,
  frames apart for image co-training."""
  d, m = cfg.diffusion, cfg.dit
  for size, key, patch, patch_key in (
    (d.image_size, 'image_size', m.patch_size, 'patch_size'),
    (d.num_frames, 'num_frames', m.temporal_patch_size, 'temporal_patch_size'),
  ):
    if size % patch:
      return (
        f'diffusion.{key} ({size}) must be divisible by dit.{patch_key} ({patch}); '
        'change one of them'
      )
  if m.width % m.heads or (m.width // m.heads) % 2:
    return (
      f'dit.width ({m.width}) must split into dit.heads ({m.heads}) heads of an even '
      'width; change dit.width or dit.heads'
    )
  if m.positions == 'sincos' and m.width % 2:
    return f'dit.width ({m.width}) must be even for sincos positions'
  if cfg.trainer.image_fraction and m.temporal_patch_size > 1:
    return (
      f'dit.temporal_patch_size {m.temporal_patch_size} mixes neighbouring '
      'frames in a patch, so the independent images of co-training would mix: set '
      'dit.temporal_patch_size: 1 or trainer.image_fraction: 0'
    )
  return None


BACKBONES: dict[str, BackboneInfo] = {
  'unet3d': BackboneInfo(section=None, check=_check_unet3d),  # its keys are the unet section's
  'dit': BackboneInfo(section='dit', check=_check_dit),
}
MODEL_SECTIONS = ('unet', 'diffusion')  # read by every backbone


def model_sections(*backbones: str | None) -> list[str]:
  """The config sections that describe a model of any of `backbones`: unet,
  diffusion and each known backbone's own section."""
  own = [BACKBONES[b].section for b in backbones if b in BACKBONES]
  return list(dict.fromkeys([*MODEL_SECTIONS, *(s for s in own if s)]))


def steps_help() -> str:
  """'all timesteps for ddpm, 50 for ddim, 20 for dpmpp, ...'."""
  return ', '.join(
    f'{"all timesteps" if s.default_steps is None else s.default_steps} for {name}'
    for name, s in SAMPLERS.items()
  )


def default_sampler(flow: bool, *, fast: bool = False) -> str:
  """The sampler used when none is named: for a Gaussian model the reference's
  ddpm, or ddim where a fast one is wanted (training-time FVD); for a flow model euler."""
  if flow:
    return 'euler'
  return 'ddim' if fast else 'ddpm'


def sampler_misfit(name: str, flow: bool) -> str | None:
  """Why sampler `name` cannot sample a (flow or Gaussian) model, or None if it can."""
  if SAMPLERS[name].flow == flow:
    return None
  fits = [n for n, s in SAMPLERS.items() if s.flow == flow]
  kind = 'a flow-matching model (diffusion.objective flow)' if flow else 'a Gaussian model'
  return f'the {name} sampler cannot sample {kind}: use {" or ".join(fits)}'
