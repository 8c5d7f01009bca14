"""The config schema: every key of the unet, diffusion, dit and trainer sections.

Each key is a dataclass field with its default, a one-line meaning (shown in
the table of docs/configuration.md) and an optional range check. Loading and
cross-section validation live in video_diffusion.config. This module does not
import JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from video_diffusion.config.registry import (
  BACKBONES,
  BETA_SCHEDULES,
  LOSS_WEIGHTINGS,
  LOSSES,
  OBJECTIVES,
  SAMPLERS,
  TIME_SAMPLINGS,
  steps_help,
)


# Checks: value -> None when fine, else the end of the message ("must be > 0, got 0").
def _rule(ok: Callable[[Any], bool], text: str) -> Callable[[Any], str | None]:
  return lambda v: (
    None if ok(v) else (f'must be {text}, got {list(v) if isinstance(v, tuple) else v!r}')
  )


_positive = _rule(lambda v: v > 0, '> 0')
_nonneg = _rule(lambda v: v >= 0, '>= 0')
_unit = _rule(lambda v: 0 <= v <= 1, 'in [0, 1]')
_open_unit = _rule(lambda v: 0 < v <= 1, 'in (0, 1]')
_odd = _rule(lambda v: v > 0 and v % 2 == 1, 'a positive odd int')
_mults = _rule(lambda v: bool(v) and all(m > 0 for m in v), 'a non-empty list of positive ints')


def default_cond_frames(num_frames: int) -> int:
  """Frames given to a frame-conditioned model when no number is set: half of them."""
  return max(1, num_frames // 2)


def _among(table) -> Callable[[Any], str | None]:
  """Check: the value is a name of `table` (a registry of config.registry, read when
  checking, so names registered later count too)."""

  def check(v):
    return None if v in table else f'must be one of {", ".join(map(repr, table))}, got {v!r}'

  check.allowed = table  # the choices, for comparing with the registries that use them
  return check


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
  return _among(allowed)


def _key(default, help: str, check: Callable[[Any], str | None] | None = None):
  """A config key: its default, a one-line meaning and an optional range check."""
  return field(default=default, metadata={'help': help, 'check': check})


config_key = _key  # the keys of a new backbone's own section are declared with it too


@dataclass(frozen=True)
class UnetConfig:
  """Arguments of Unet3D (the denoiser)."""

  dim: int = _key(64, 'Base channel width of the U-Net.', _positive)
  dim_mults: tuple[int, ...] = _key(
    (1, 2, 4, 8),
    'Width multiplier of each resolution level; the frame size is halved len-1 times.',
    _mults,
  )
  channels: int = _key(
    3, 'Channels of the video (1 grey, 3 RGB); equals diffusion.channels.', _positive
  )
  out_dim: int | None = _key(None, 'Output channels; null = channels.', _positive)
  cond_dim: int | None = _key(
    None,
    "Width of the condition: the data's vectors, the text "
    'embedding (null = 768) or the class embedding (null = 4 * dim); '
    'null and no text or classes = unconditional.',
    _positive,
  )
  attn_heads: int = _key(8, 'Attention heads.', _positive)
  attn_dim_head: int = _key(32, 'Width of each attention head.', _positive)
  use_bert_text_cond: bool = _key(
    False, 'Condition on text embedded by a local BERT (trainer.text_encoder_path).'
  )
  init_dim: int | None = _key(None, 'Width of the first convolution; null = dim.', _positive)
  init_kernel_size: int = _key(7, 'Kernel size of the first convolution (odd).', _odd)
  use_sparse_linear_attn: bool = _key(True, 'Add spatial linear attention at each level.')
  num_classes: int | None = _key(
    None,
    'Class-conditional model: number of classes (labels '
    '0..n-1, embedded to cond_dim; null cond_dim = 4 * dim); '
    'null = no class labels.',
    _positive,
  )
  rngs_seed: int = _key(0, 'Seed of the nnx.Rngs that initialise the weights.', _nonneg)


@dataclass(frozen=True)
class DiffusionConfig:
  """Arguments of GaussianDiffusion."""

  image_size: int = _key(64, 'Height and width of the frames in pixels.', _positive)
  num_frames: int = _key(16, 'Frames per video.', _positive)
  channels: int = _key(3, 'Channels of the video; equals unet.channels.', _positive)
  timesteps: int = _key(1000, 'Diffusion steps (training and sampling).', _positive)
  loss_type: str = _key('l1', "Denoising loss: 'l1' or 'l2'.", _among(LOSSES))
  beta_schedule: str = _key(
    'cosine', "Noise schedule: 'cosine' or 'linear'.", _among(BETA_SCHEDULES)
  )
  use_dynamic_thres: bool = _key(False, 'Dynamic thresholding of x0 while sampling.')
  dynamic_thres_percentile: float = _key(
    0.9, 'Percentile of |x0| used by dynamic thresholding, in (0, 1].', _open_unit
  )
  backbone: str = _key(
    'unet3d',
    "The denoiser: 'unet3d' (the reference's U-Net, section unet) or 'dit' (a space-time "
    'transformer, section dit; it reads unet.channels and the condition keys too).',
    _among(BACKBONES),
  )
  objective: str = _key(
    'eps',
    "What the network predicts: 'eps' (the noise, as the "
    "reference), 'x0' (the clean video), 'v' (Salimans & Ho) or 'flow' (flow matching: "
    'the velocity noise - x0 of x_t = (1 - t) x0 + t noise, t in [0, 1]).',
    _among(OBJECTIVES),
  )
  time_sampling: str = _key(
    'uniform',
    "flow: how training times are drawn: 'uniform' or 'logit_normal' (sigmoid of a normal).",
    _among(TIME_SAMPLINGS),
  )
  logit_normal_mean: float = _key(0.0, 'flow, logit_normal: mean of the normal.')
  logit_normal_scale: float = _key(1.0, 'flow, logit_normal: its standard deviation.', _positive)
  time_shift: float = _key(
    1.0,
    'flow: timestep shift s, noise level t = s u / (1 + (s - 1) u) of time u, in training and '
    'sampling; > 1 spends more steps at high noise; 1 = none.',
    _positive,
  )
  loss_weighting: str = _key(
    'none',
    "Per-timestep loss weights: 'none' or 'min_snr' (min-SNR-gamma, Hang et al. 2023).",
    _among(LOSS_WEIGHTINGS),
  )
  min_snr_gamma: float = _key(5.0, 'Gamma of min_snr loss weighting.', _positive)
  text_use_bert_cls: bool = _key(
    False, 'Text condition from the BERT CLS token instead of the mean over tokens.'
  )
  frame_conditioning: bool = _key(
    False,
    'Train one model for generation, prediction and '
    'interpolation: random frames are given clean with a mask '
    'channel, and the loss is on the other frames.',
  )

  @property
  def video_shape(self) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of one video."""
    return (self.num_frames, self.image_size, self.image_size, self.channels)

  @property
  def is_flow(self) -> bool:
    """True for flow matching (the flow samplers), False for the Gaussian objectives."""
    return OBJECTIVES[self.objective].flow


@dataclass(frozen=True)
class DiTConfig:
  """The space-time transformer of diffusion.backbone 'dit'."""

  patch_size: int = _key(2, 'Height and width of a patch in pixels.', _positive)
  temporal_patch_size: int = _key(1, 'Frames per patch.', _positive)
  width: int = _key(256, 'Token width.', _positive)
  depth: int = _key(
    8, 'Transformer blocks (factorised: alternately spatial and temporal).', _positive
  )
  heads: int = _key(4, 'Attention heads; width / heads is the width of a head.', _positive)
  mlp_ratio: float = _key(4.0, 'Hidden width of the MLPs as a multiple of width.', _positive)
  attention: str = _key(
    'factorised',
    "'factorised': blocks alternate attention within a frame and across frames (Latte); "
    "'full': every block attends over all space-time tokens.",
    _one_of('factorised', 'full'),
  )
  positions: str = _key(
    'rope3d',
    "Token positions: 'rope3d' (rotary over frame, row and column) or 'sincos' "
    '(fixed 3-D sinusoids added to the tokens).',
    _one_of('rope3d', 'sincos'),
  )


@dataclass(frozen=True)
class TrainerConfig:
  """The training loop: data, optimiser, EMA, logging and checkpoints."""

  folder: str | None = _key(
    None,
    "The reference Trainer's folder argument; kept for the seed "
    'configs, data comes from dataset_path.',
  )
  dataset_path: str | None = _key(
    None,
    'Training videos: a Moving MNIST .npy (frames, '
    'sequences, h, w) or a folder of .gif/.mp4/.webm/.avi files '
    '(searched recursively); null or "" = built-in synthetic moving digits.',
  )
  frame_stride: int = _key(
    1, 'Clips of a dataset take every k-th frame of the source video; 1 = every frame.', _positive
  )
  fps: float | None = _key(
    None,
    'Clips of video files are resampled to this frame rate (instead of frame_stride); '
    'null = the source rate.',
    _positive,
  )
  clips_per_video: int = _key(
    1,
    'Clips drawn from each video (or .npy sequence) per epoch, from evenly spaced parts of it.',
    _positive,
  )
  random_flip: bool = _key(False, 'Flip half of the training clips left to right.')
  image_dataset_path: str | None = _key(
    None,
    'Still images for image-video co-training: a folder of images (.png, .jpg, ...) or of '
    'one-frame clips made by video-diffusion prepare --num-frames 1; null = none.',
  )
  image_fraction: float = _key(
    0.0,
    'Fraction of each batch that is stacks of num_frames independent images from '
    'image_dataset_path, trained without temporal attention and condition; 0 = videos only.',
    _rule(lambda v: 0 <= v < 1, 'in [0, 1)'),
  )
  train_batch_size: int = _key(32, 'Videos per optimiser micro-batch.', _positive)
  train_lr: float = _key(1e-4, 'Adam learning rate.', _positive)
  train_num_steps: int = _key(100000, 'Optimiser steps to train for.', _positive)
  warmup_steps: int = _key(0, 'Linear learning-rate warm-up steps from 0; 0 = none.', _nonneg)
  lr_decay_start_step: int | None = _key(
    None, 'Step at which learning-rate decay starts; null = constant rate.', _nonneg
  )
  lr_decay_steps: int | None = _key(
    None, 'Steps over which the rate decays to train_lr * lr_decay_coeff.', _positive
  )
  lr_decay_coeff: float = _key(0.1, 'Final learning rate as a fraction of train_lr.', _unit)
  num_frames: int | None = _key(
    None,
    "The reference Trainer's argument: null or diffusion.num_frames (filled from it).",
    _positive,
  )
  image_size: int | None = _key(
    None,
    "The reference Trainer's argument: null or diffusion.image_size (filled from it).",
    _positive,
  )
  channels: int | None = _key(
    None,
    "The reference Trainer's argument: null or diffusion.channels (filled from it).",
    _positive,
  )
  gradient_accumulate_every: int = _key(
    2, 'Micro-batches whose gradients make one step.', _positive
  )
  prob_focus_present: float = _key(
    0.0,
    'Probability of training a video with temporal attention masked (focus on the present frame).',
    _unit,
  )
  step_start_ema: int = _key(2000, 'Before this step the EMA weights copy the model.', _nonneg)
  update_ema_every: int = _key(10, 'Steps between EMA updates.', _positive)
  ema_decay: float = _key(0.995, 'EMA decay per update, in [0, 1].', _unit)
  max_grad_norm: float | None = _key(
    None, 'Clip gradients to this global norm; null = no clipping.', _positive
  )
  save_and_sample_every: int = _key(
    1000, 'Steps between sample GIFs written to results_folder.', _positive
  )
  eval_every: int | None = _key(
    None,
    'Steps between FVD evaluations of the EMA weights during '
    'training (fvd in metrics.jsonl, eval/fvd in TensorBoard); '
    'null = none.',
    _positive,
  )
  eval_num_videos: int = _key(
    64, 'Generated and held-out real videos per training-time FVD.', _rule(lambda v: v >= 2, '>= 2')
  )
  eval_sampler: str | None = _key(
    None,
    f'Sampler of training-time FVD: {", ".join(SAMPLERS)}; null = ddim, or euler for a flow model.',
    _among(SAMPLERS),
  )
  eval_steps: int | None = _key(
    None, f'Model calls per video of eval_sampler; null = its default ({steps_help()}).', _positive
  )
  val_every: int | None = _key(
    None,
    'Steps between validation losses of the online weights on held-out clips at '
    'fixed noise (val_loss in metrics.jsonl, val/loss in TensorBoard); null = none.',
    _positive,
  )
  val_times: int = _key(
    8,
    'Evenly spaced diffusion times of the validation loss, each logged '
    '(val_loss_t<time>) and averaged (val_loss).',
    _positive,
  )
  val_batch_size: int | None = _key(
    None,
    'Held-out clips of the validation loss (the same ones, with the same noise, '
    'every time); null = train_batch_size.',
    _positive,
  )
  results_folder: str = _key(
    './results', 'Folder of samples, loss plots and (by default) checkpoints.'
  )
  num_sample_rows: int = _key(4, 'Samples are a num_sample_rows^2 grid.', _positive)
  use_path_as_cond: bool = _key(
    False,
    'Text condition of each video of a folder dataset: its '
    'parent folder name (instead of {clip}.txt beside it).',
  )
  sample_text: str | None = _key(
    None, 'Text condition of the periodic samples; null = the texts of the first training videos.'
  )
  cond_scale: float = _key(1.0, 'Classifier-free guidance scale when sampling; 1 = none.')
  cond_drop_prob: float = _key(
    0.1,
    'Probability of training a video with the null '
    'condition (classifier-free guidance); conditional models only.',
    _unit,
  )
  text_encoder_path: str | None = _key(
    None,
    'Local Hugging Face BERT folder (config.json, '
    'model.safetensors, tokenizer.json) for '
    'unet.use_bert_text_cond.',
  )
  text_max_length: int = _key(64, 'Tokens per text condition (padded or truncated).', _positive)
  cond_frames_prob_none: float = _key(
    0.2, 'frame_conditioning: probability that no frame is given (unconditional generation).', _unit
  )
  cond_frames_prob_interpolate: float = _key(
    0.3,
    'frame_conditioning: probability that the '
    'first and last frames are given '
    '(interpolation); otherwise the first ones '
    '(prediction).',
    _unit,
  )
  max_cond_frames: int | None = _key(
    None, 'frame_conditioning: most frames given; null = half of diffusion.num_frames.', _positive
  )
  checkpoint_every_steps: int = _key(1000, 'Steps between checkpoints.', _positive)
  checkpoint_dir_path: str = _key('', 'Checkpoint folder; "" = <results_folder>/checkpoints.')
  max_to_keep: int | None = _key(3, 'Checkpoints kept on disk; null = all.', _positive)
  resume_training_step: int = _key(
    0,
    'Checkpoint step to resume from; 0 = start afresh; -1 = the newest (afresh if none).',
    _rule(lambda v: v >= -1, '>= -1'),
  )
  add_loss_plot: bool = _key(
    False,
    'Also copy the loss curve next to each sample grid '
    '(samples/loss-<step>.png); loss_curve.png is always written.',
  )
  tensorboard_dir: str | None = _key(None, 'TensorBoard log folder; null = no TensorBoard logs.')
  profile_flush_step: int | None = _key(
    None,
    'Write a JAX profiler trace (results_folder/profile) from step 2 up to this step; null = none.',
    _positive,
  )
  num_model_shards: int | None = _key(
    None, "The seed configs' name of mesh_fsdp; null or equal to it.", _positive
  )
  mesh_fsdp: int | None = _key(
    None,
    "Size of the mesh's fsdp axis (params, EMA and optimiser "
    'state sharded over it); null = num_model_shards, else 1 '
    '(replicated).',
    _positive,
  )
  mesh_data: int = _key(
    -1,
    "Size of the mesh's data axis; -1 = all devices / mesh_fsdp.",
    _rule(lambda v: v == -1 or v > 0, '-1 or > 0'),
  )
  compute_dtype: str = _key(
    'float32',
    "Dtype of the model's computation: 'float32' or "
    "'bfloat16' (params, loss and optimiser stay float32).",
    _one_of('float32', 'bfloat16'),
  )
  remat: bool = _key(
    False,
    'Recompute the U-Net or DiT blocks in the backward pass instead of '
    'storing their activations (less memory, more compute).',
  )
  data_workers: int = _key(
    2, 'Grain worker processes preparing batches; 0 = in the main process.', _nonneg
  )
  seed: int = _key(0, 'Seed of data order, noise and timesteps.', _nonneg)


@dataclass(frozen=True)
class Config:
  """A whole run: model, diffusion and trainer; `extra` holds the (name, value)
  of sections registered beyond these four (a new backbone's), read as cfg.<name>."""

  unet: UnetConfig = field(default_factory=UnetConfig)
  diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
  dit: DiTConfig = field(default_factory=DiTConfig)
  trainer: TrainerConfig = field(default_factory=TrainerConfig)
  extra: tuple[tuple[str, Any], ...] = ()

  def __getattr__(self, name: str):
    """A registered section of `extra`, or its defaults when this config has none."""
    for key, value in self.__dict__.get('extra', ()):
      if key == name:
        return value
    if name in SECTIONS:
      return SECTIONS[name]()
    raise AttributeError(f'{type(self).__name__!r} object has no attribute {name!r}')


# Every section a config may have; factory.register_backbone adds a backbone's own.
SECTIONS: dict[str, type] = {
  'unet': UnetConfig,
  'diffusion': DiffusionConfig,
  'dit': DiTConfig,
  'trainer': TrainerConfig,
}
