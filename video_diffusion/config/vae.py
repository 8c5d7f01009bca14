"""The `vae` and `vae_trainer` sections: the Wan 2.1 VAE's config and how train-vae trains it.

`VAEConfig` holds the keys of diffusers' AutoencoderKLWan config.json under
their names there, so a config.json is a valid `vae` section (its `_class_name`,
`_diffusers_version`, ... are skipped). This module does not import JAX.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from video_diffusion.config.keys import among, config_key, mults, nonneg, positive, unit
from video_diffusion.config.registry import LOSSES

CLASS_NAME = 'AutoencoderKLWan'
ENCODER_CHUNK = 4  # frames per encoder chunk after the first frame (diffusers' _encode)
# The top-level key of a checkpoint's saved config that names what the run trained;
# absent: a diffusion model.
MODEL_KIND = 'model'
# The top-level key of a latent diffusion model's checkpoint config: its autoencoder
# (path, weights' fingerprint, the latents' mean and std; vae.latent.LatentSpace.record).
LATENTS_RECORD = 'latents'


@dataclass(frozen=True)
class VAEConfig:
  """AutoencoderKLWan's __init__ arguments in diffusers 0.42.1, named as its
  config.json names them, with its defaults (Wan 2.1's sizes), except that
  latents_mean / latents_std are None when absent. `temperal_downsample` (sic)
  holds one flag per level; the decoder reads it reversed, as diffusers does.
  `dropout` applies only in training and `scale_factor_*` only to diffusers'
  tiling: both are kept, neither changes encode or decode."""

  base_dim: int = config_key(96, 'Width of the first level of the encoder and decoder.', positive)
  decoder_base_dim: int | None = config_key(
    None, "Width of the decoder's first level; null = base_dim.", positive
  )
  z_dim: int = config_key(16, 'Latent channels.', positive)
  dim_mult: tuple[int, ...] = config_key(
    (1, 2, 4, 4), 'Width multiplier of each level; height and width are halved len-1 times.', mults
  )
  num_res_blocks: int = config_key(
    2, 'Residual blocks per encoder level (the decoder has one more).', positive
  )
  attn_scales: tuple[float, ...] = config_key(
    (),
    'Scales (1.0, 0.5, ...) of the encoder levels with attention after each residual block; '
    '[] = none (Wan 2.1).',
  )
  temperal_downsample: tuple[bool, ...] = config_key(
    (False, True, True),
    "Per downsampling (diffusers' spelling): whether it halves the frames too (at most 2); "
    'the decoder reads the flags reversed.',
  )
  dropout: float = config_key(
    0.0, 'Dropout of the residual blocks; not applied (train-vae needs 0).', unit
  )
  latents_mean: tuple[float, ...] | None = config_key(
    None, 'Per-channel mean of the latents (z_dim values), for models trained on them; null = none.'
  )
  latents_std: tuple[float, ...] | None = config_key(
    None, 'Per-channel standard deviation of the latents (z_dim values); null = none.'
  )
  is_residual: bool = config_key(False, "Wan 2.2's VAE: only false (Wan 2.1) is supported.")
  in_channels: int = config_key(
    3, 'Channels of the videos encoded; train-vae needs diffusion.channels.', positive
  )
  out_channels: int = config_key(
    3, 'Channels of the videos decoded; train-vae needs diffusion.channels.', positive
  )
  patch_size: int | None = config_key(
    None, "Wan 2.2's patchifying: only null (Wan 2.1) is supported.", positive
  )
  scale_factor_temporal: int | None = config_key(
    4, "Frames per latent frame as diffusers' tiling reads it; kept, not read.", positive
  )
  scale_factor_spatial: int | None = config_key(
    8, "Pixels per latent pixel as diffusers' tiling reads it; kept, not read.", positive
  )

  def __post_init__(self):
    for name in ('dim_mult', 'attn_scales', 'temperal_downsample', 'latents_mean', 'latents_std'):
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(value))
    self._check()

  def _check(self) -> None:
    if self.is_residual or self.patch_size is not None:
      raise ValueError(
        f'is_residual={self.is_residual}, patch_size={self.patch_size} is the Wan 2.2 VAE; '
        'only Wan 2.1 (is_residual=False, patch_size=None) is supported'
      )
    levels = len(self.dim_mult)
    if levels < 1 or self.num_res_blocks < 1:
      raise ValueError('dim_mult needs at least one level and num_res_blocks at least 1')
    if len(self.temperal_downsample) < levels - 1:
      raise ValueError(
        f'temperal_downsample needs a flag for each of the {levels - 1} downsamplings '
        f'(len(dim_mult) - 1); got {list(self.temperal_downsample)}'
      )
    if self.temporal_downsamplings > 2:
      raise ValueError(
        'at most 2 temporal downsamplings: the encoder runs chunks of 4 frames, and a third '
        'stride-2 time conv would see fewer frames than its kernel; '
        f'got {self.temporal_downsamplings}'
      )

  @property
  def temporal_downsamplings(self) -> int:
    """How many of the encoder's levels halve the frames."""
    return sum(map(bool, self.temperal_downsample[: len(self.dim_mult) - 1]))

  @property
  def temporal_upsamplings(self) -> int:
    """How many of the decoder's levels double the frames (the flags reversed)."""
    return sum(map(bool, self.temperal_downsample[::-1][: len(self.dim_mult) - 1]))

  @property
  def spatial_compression(self) -> int:
    """Pixels per latent pixel in height and width: one halving per downsampling."""
    return 2 ** (len(self.dim_mult) - 1)

  def latent_frames(self, frames: int) -> int:
    """Latent frames of a `frames`-frame video; raises unless frames is 1 + 4k."""
    if frames < 1 or (frames - 1) % ENCODER_CHUNK:
      raise ValueError(
        f'the Wan VAE encodes 1 + 4k frames (the first frame alone, then chunks of '
        f'{ENCODER_CHUNK}); got {frames}'
      )
    per_chunk = ENCODER_CHUNK // 2**self.temporal_downsamplings
    return 1 + (frames - 1) // ENCODER_CHUNK * per_chunk

  def video_frames(self, latent_frames: int) -> int:
    """Frames decoded from `latent_frames` latent frames (the first one gives one frame)."""
    return 1 + (latent_frames - 1) * 2**self.temporal_upsamplings

  @classmethod
  def own_keys(cls, values: Mapping) -> dict:
    """A config.json's dict without its metadata keys (starting with '_'); raises
    ValueError when its `_class_name` is another model's."""
    class_name = values.get('_class_name', CLASS_NAME)
    if class_name != CLASS_NAME:
      raise ValueError(f'config is for {class_name!r}, not {CLASS_NAME!r}')
    return {k: v for k, v in values.items() if not str(k).startswith('_')}

  @classmethod
  def from_dict(cls, values: Mapping) -> VAEConfig:
    """From a config.json's dict; keys starting with '_' (_class_name, ...) are skipped."""
    values = cls.own_keys(values)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
      raise ValueError(f'unknown {CLASS_NAME} config keys {unknown}; known: {sorted(known)}')
    return cls(**values)

  @classmethod
  def from_json(cls, path: str | pathlib.Path) -> VAEConfig:
    """Reads a diffusers config.json."""
    return cls.from_dict(json.loads(pathlib.Path(path).read_text()))


@dataclass(frozen=True)
class VAETrainerConfig:
  """What train-vae adds to the trainer section (whose data, optimiser, EMA,
  checkpoint and logging keys it reads as train.py does): the loss and the
  held-out measurements."""

  loss_type: str = config_key(
    'l1', "Reconstruction loss of [-1, 1] pixels, averaged: 'l1' or 'l2'.", among(LOSSES)
  )
  kl_weight: float = config_key(
    1e-6,
    'Weight in the loss of the KL divergence of the posterior from N(0, 1), averaged over '
    'latent elements.',
    nonneg,
  )
  eval_num_videos: int = config_key(
    8,
    'Held-out clips whose reconstruction PSNR and SSIM are logged at each checkpoint and at '
    'the end, shown beside their reconstructions in samples/reconstruction-<step>.gif.',
    positive,
  )


def num_frames_problem(v: VAEConfig, num_frames: int) -> str | None:
  """Why the autoencoder `v` cannot encode clips of diffusion.num_frames, with the
  nearest count it can, or None."""
  try:
    v.latent_frames(num_frames)
  except ValueError as e:
    chunks = -(-(num_frames - 1) // ENCODER_CHUNK)
    return f'diffusion.num_frames: {e}; set it to {1 + chunks * ENCODER_CHUNK}, say'
  return None


def vae_run_problem(cfg) -> str | None:
  """What a config gets wrong for training or evaluating its `vae` section on
  clips of diffusion.num_frames x image_size x channels, or None."""
  v, d = cfg.vae, cfg.diffusion
  for key in ('in_channels', 'out_channels'):
    if getattr(v, key) != d.channels:
      return (
        f'vae.{key} ({getattr(v, key)}) must equal diffusion.channels ({d.channels}), '
        f'the channels of the clips: set vae.{key}: {d.channels} (or change diffusion.channels)'
      )
  if problem := num_frames_problem(v, d.num_frames):
    return problem
  decoded = v.video_frames(v.latent_frames(d.num_frames))
  if decoded != d.num_frames:
    return (
      f'vae.temperal_downsample ({list(v.temperal_downsample)}) decodes the '
      f'{d.num_frames} frames to {decoded}: the decoder reads the flags reversed, so give '
      f'exactly one per downsampling of vae.dim_mult ({len(v.dim_mult) - 1})'
    )
  if d.image_size % v.spatial_compression:
    return (
      f'diffusion.image_size ({d.image_size}) must be divisible by {v.spatial_compression}, since '
      f'vae.dim_mult ({list(v.dim_mult)}) halves it {len(v.dim_mult) - 1} times'
    )
  if v.dropout:
    return f'vae.dropout ({v.dropout}) is not applied in training: set vae.dropout: 0'
  return None
