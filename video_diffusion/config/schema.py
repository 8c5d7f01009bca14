"""The config schema: every key of the unet, diffusion, dit and trainer sections
(and, from config.vae, of the vae and vae_trainer sections).

Each key is a dataclass field with its default, a one-line meaning (shown in
the table of docs/configuration.md) and an optional range check. Loading and
cross-section validation live in video_diffusion.config. This module does not
import JAX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from video_diffusion.config.keys import (
  among,
  config_key,  # the keys of a new backbone's own section are declared with it too
  mults,
  nonneg,
  odd,
  one_of,
  open_unit,
  positive,
  rule,
  unit,
)
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
from video_diffusion.config.vae import VAEConfig, VAETrainerConfig


def default_cond_frames(num_frames: int) -> int:
  """Frames given to a frame-conditioned model when no number is set: half of them."""
  return max(1, num_frames // 2)


@dataclass(frozen=True)
class UnetConfig:
  """Arguments of Unet3D (the denoiser)."""

  dim: int = config_key(64, 'Base channel width of the U-Net.', positive)
  dim_mults: tuple[int, ...] = config_key(
    (1, 2, 4, 8),
    'Width multiplier of each resolution level; the frame size is halved len-1 times.',
    mults,
  )
  channels: int = config_key(
    3, 'Channels of the video (1 grey, 3 RGB); equals diffusion.channels.', positive
  )
  out_dim: int | None = config_key(None, 'Output channels; null = channels.', positive)
  cond_dim: int | None = config_key(
    None,
    "Width of the condition: the data's vectors, the text "
    'embedding (null = 768) or the class embedding (null = 4 * dim); '
    'null and no text or classes = unconditional.',
    positive,
  )
  attn_heads: int = config_key(8, 'Attention heads.', positive)
  attn_dim_head: int = config_key(32, 'Width of each attention head.', positive)
  use_bert_text_cond: bool = config_key(
    False, 'Condition on text embedded by a local BERT (trainer.text_encoder_path).'
  )
  init_dim: int | None = config_key(None, 'Width of the first convolution; null = dim.', positive)
  init_kernel_size: int = config_key(7, 'Kernel size of the first convolution (odd).', odd)
  use_sparse_linear_attn: bool = config_key(True, 'Add spatial linear attention at each level.')
  num_classes: int | None = config_key(
    None,
    'Class-conditional model: number of classes (labels '
    '0..n-1, embedded to cond_dim; null cond_dim = 4 * dim); '
    'null = no class labels.',
    positive,
  )
  rngs_seed: int = config_key(0, 'Seed of the nnx.Rngs that initialise the weights.', nonneg)


@dataclass(frozen=True)
class DiffusionConfig:
  """Arguments of GaussianDiffusion."""

  image_size: int = config_key(64, 'Height and width of the frames in pixels.', positive)
  num_frames: int = config_key(16, 'Frames per video.', positive)
  channels: int = config_key(3, 'Channels of the video; equals unet.channels.', positive)
  timesteps: int = config_key(1000, 'Diffusion steps (training and sampling).', positive)
  loss_type: str = config_key('l1', "Denoising loss: 'l1' or 'l2'.", among(LOSSES))
  beta_schedule: str = config_key(
    'cosine', "Noise schedule: 'cosine' or 'linear'.", among(BETA_SCHEDULES)
  )
  use_dynamic_thres: bool = config_key(False, 'Dynamic thresholding of x0 while sampling.')
  dynamic_thres_percentile: float = config_key(
    0.9, 'Percentile of |x0| used by dynamic thresholding, in (0, 1].', open_unit
  )
  backbone: str = config_key(
    'unet3d',
    "The denoiser: 'unet3d' (the reference's U-Net, section unet) or 'dit' (a space-time "
    'transformer, section dit; it reads unet.channels and the condition keys too).',
    among(BACKBONES),
  )
  objective: str = config_key(
    'eps',
    "What the network predicts: 'eps' (the noise, as the "
    "reference), 'x0' (the clean video), 'v' (Salimans & Ho) or 'flow' (flow matching: "
    'the velocity noise - x0 of x_t = (1 - t) x0 + t noise, t in [0, 1]).',
    among(OBJECTIVES),
  )
  time_sampling: str = config_key(
    'uniform',
    "flow: how training times are drawn: 'uniform' or 'logit_normal' (sigmoid of a normal).",
    among(TIME_SAMPLINGS),
  )
  logit_normal_mean: float = config_key(0.0, 'flow, logit_normal: mean of the normal.')
  logit_normal_scale: float = config_key(
    1.0, 'flow, logit_normal: its standard deviation.', positive
  )
  time_shift: float = config_key(
    1.0,
    'flow: timestep shift s, noise level t = s u / (1 + (s - 1) u) of time u, in training and '
    'sampling; > 1 spends more steps at high noise; 1 = none.',
    positive,
  )
  loss_weighting: str = config_key(
    'none',
    "Per-timestep loss weights: 'none' or 'min_snr' (min-SNR-gamma, Hang et al. 2023).",
    among(LOSS_WEIGHTINGS),
  )
  min_snr_gamma: float = config_key(5.0, 'Gamma of min_snr loss weighting.', positive)
  text_use_bert_cls: bool = config_key(
    False, 'Text condition from the BERT CLS token instead of the mean over tokens.'
  )
  frame_conditioning: bool = config_key(
    False,
    'Train one model for generation, prediction and '
    'interpolation: random frames are given clean with a mask '
    'channel, and the loss is on the other frames.',
  )
  vae: str | None = config_key(
    None,
    'A video autoencoder whose latents the model diffuses: a diffusers AutoencoderKLWan folder '
    'or a train-vae checkpoint folder; image_size, num_frames and channels stay the pixel '
    "sizes, the backbone's follow from it; null = pixel space.",
  )
  vae_posterior: str = config_key(
    'sample',
    "With vae: the train step diffuses a posterior 'sample' of each clip's latents, or its 'mean'.",
    one_of('sample', 'mean'),
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

  patch_size: int = config_key(2, 'Height and width of a patch in pixels.', positive)
  temporal_patch_size: int = config_key(1, 'Frames per patch.', positive)
  width: int = config_key(256, 'Token width.', positive)
  depth: int = config_key(
    8, 'Transformer blocks (factorised: alternately spatial and temporal).', positive
  )
  heads: int = config_key(4, 'Attention heads; width / heads is the width of a head.', positive)
  mlp_ratio: float = config_key(4.0, 'Hidden width of the MLPs as a multiple of width.', positive)
  attention: str = config_key(
    'factorised',
    "'factorised': blocks alternate attention within a frame and across frames (Latte); "
    "'full': every block attends over all space-time tokens.",
    one_of('factorised', 'full'),
  )
  positions: str = config_key(
    'rope3d',
    "Token positions: 'rope3d' (rotary over frame, row and column) or 'sincos' "
    '(fixed 3-D sinusoids added to the tokens).',
    one_of('rope3d', 'sincos'),
  )


@dataclass(frozen=True)
class TrainerConfig:
  """The training loop: data, optimiser, EMA, logging and checkpoints."""

  folder: str | None = config_key(
    None,
    "The reference Trainer's folder argument; kept for the seed "
    'configs, data comes from dataset_path.',
  )
  dataset_path: str | None = config_key(
    None,
    'Training videos: a Moving MNIST .npy (frames, '
    'sequences, h, w) or a folder of .gif/.mp4/.webm/.avi files '
    '(searched recursively); null or "" = built-in synthetic moving digits.',
  )
  frame_stride: int = config_key(
    1, 'Clips of a dataset take every k-th frame of the source video; 1 = every frame.', positive
  )
  fps: float | None = config_key(
    None,
    'Clips of video files are resampled to this frame rate (instead of frame_stride); '
    'null = the source rate.',
    positive,
  )
  clips_per_video: int = config_key(
    1,
    'Clips drawn from each video (or .npy sequence) per epoch, from evenly spaced parts of it.',
    positive,
  )
  random_flip: bool = config_key(False, 'Flip half of the training clips left to right.')
  image_dataset_path: str | None = config_key(
    None,
    'Still images for image-video co-training: a folder of images (.png, .jpg, ...) or of '
    'one-frame clips made by video-diffusion prepare --num-frames 1; null = none.',
  )
  image_fraction: float = config_key(
    0.0,
    'Fraction of each batch that is stacks of num_frames independent images from '
    'image_dataset_path, trained without temporal attention and condition; 0 = videos only.',
    rule(lambda v: 0 <= v < 1, 'in [0, 1)'),
  )
  train_batch_size: int = config_key(32, 'Videos per optimiser micro-batch.', positive)
  train_lr: float = config_key(1e-4, 'Adam learning rate.', positive)
  train_num_steps: int = config_key(100000, 'Optimiser steps to train for.', positive)
  warmup_steps: int = config_key(0, 'Linear learning-rate warm-up steps from 0; 0 = none.', nonneg)
  lr_decay_start_step: int | None = config_key(
    None, 'Step at which learning-rate decay starts; null = constant rate.', nonneg
  )
  lr_decay_steps: int | None = config_key(
    None, 'Steps over which the rate decays to train_lr * lr_decay_coeff.', positive
  )
  lr_decay_coeff: float = config_key(0.1, 'Final learning rate as a fraction of train_lr.', unit)
  num_frames: int | None = config_key(
    None,
    "The reference Trainer's argument: null or diffusion.num_frames (filled from it).",
    positive,
  )
  image_size: int | None = config_key(
    None,
    "The reference Trainer's argument: null or diffusion.image_size (filled from it).",
    positive,
  )
  channels: int | None = config_key(
    None, "The reference Trainer's argument: null or diffusion.channels (filled from it).", positive
  )
  gradient_accumulate_every: int = config_key(
    2, 'Micro-batches whose gradients make one step.', positive
  )
  prob_focus_present: float = config_key(
    0.0,
    'Probability of training a video with temporal attention masked (focus on the present frame).',
    unit,
  )
  step_start_ema: int = config_key(2000, 'Before this step the EMA weights copy the model.', nonneg)
  update_ema_every: int = config_key(10, 'Steps between EMA updates.', positive)
  ema_decay: float = config_key(0.995, 'EMA decay per update, in [0, 1].', unit)
  max_grad_norm: float | None = config_key(
    None, 'Clip gradients to this global norm; null = no clipping.', positive
  )
  save_and_sample_every: int = config_key(
    1000, 'Steps between sample GIFs written to results_folder.', positive
  )
  eval_every: int | None = config_key(
    None,
    'Steps between FVD evaluations of the EMA weights during '
    'training (fvd in metrics.jsonl, eval/fvd in TensorBoard); '
    'null = none.',
    positive,
  )
  eval_num_videos: int = config_key(
    64, 'Generated and held-out real videos per training-time FVD.', rule(lambda v: v >= 2, '>= 2')
  )
  eval_sampler: str | None = config_key(
    None,
    f'Sampler of training-time FVD: {", ".join(SAMPLERS)}; null = ddim, or euler for a flow model.',
    among(SAMPLERS),
  )
  eval_steps: int | None = config_key(
    None, f'Model calls per video of eval_sampler; null = its default ({steps_help()}).', positive
  )
  val_every: int | None = config_key(
    None,
    'Steps between validation losses of the online weights on held-out clips at '
    'fixed noise (val_loss in metrics.jsonl, val/loss in TensorBoard); null = none.',
    positive,
  )
  val_times: int = config_key(
    8,
    'Evenly spaced diffusion times of the validation loss, each logged '
    '(val_loss_t<time>) and averaged (val_loss).',
    positive,
  )
  val_batch_size: int | None = config_key(
    None,
    'Held-out clips of the validation loss (the same ones, with the same noise, '
    'every time); null = train_batch_size.',
    positive,
  )
  results_folder: str = config_key(
    './results', 'Folder of samples, loss plots and (by default) checkpoints.'
  )
  num_sample_rows: int = config_key(4, 'Samples are a num_sample_rows^2 grid.', positive)
  use_path_as_cond: bool = config_key(
    False,
    'Text condition of each video of a folder dataset: its '
    'parent folder name (instead of {clip}.txt beside it).',
  )
  sample_text: str | None = config_key(
    None, 'Text condition of the periodic samples; null = the texts of the first training videos.'
  )
  cond_scale: float = config_key(1.0, 'Classifier-free guidance scale when sampling; 1 = none.')
  cond_drop_prob: float = config_key(
    0.1,
    'Probability of training a video with the null '
    'condition (classifier-free guidance); conditional models only.',
    unit,
  )
  text_encoder_path: str | None = config_key(
    None,
    'Local Hugging Face BERT folder (config.json, '
    'model.safetensors, tokenizer.json) for '
    'unet.use_bert_text_cond.',
  )
  text_max_length: int = config_key(
    64, 'Tokens per text condition (padded or truncated).', positive
  )
  cond_frames_prob_none: float = config_key(
    0.2, 'frame_conditioning: probability that no frame is given (unconditional generation).', unit
  )
  cond_frames_prob_interpolate: float = config_key(
    0.3,
    'frame_conditioning: probability that the '
    'first and last frames are given '
    '(interpolation); otherwise the first ones '
    '(prediction).',
    unit,
  )
  max_cond_frames: int | None = config_key(
    None, 'frame_conditioning: most frames given; null = half of diffusion.num_frames.', positive
  )
  checkpoint_every_steps: int = config_key(1000, 'Steps between checkpoints.', positive)
  checkpoint_dir_path: str = config_key('', 'Checkpoint folder; "" = <results_folder>/checkpoints.')
  max_to_keep: int | None = config_key(3, 'Checkpoints kept on disk; null = all.', positive)
  resume_training_step: int = config_key(
    0,
    'Checkpoint step to resume from; 0 = start afresh; -1 = the newest (afresh if none).',
    rule(lambda v: v >= -1, '>= -1'),
  )
  add_loss_plot: bool = config_key(
    False,
    'Also copy the loss curve next to each sample grid '
    '(samples/loss-<step>.png); loss_curve.png is always written.',
  )
  tensorboard_dir: str | None = config_key(
    None, 'TensorBoard log folder; null = no TensorBoard logs.'
  )
  profile_flush_step: int | None = config_key(
    None,
    'Write a JAX profiler trace (results_folder/profile) from step 2 up to this step; null = none.',
    positive,
  )
  num_model_shards: int | None = config_key(
    None, "The seed configs' name of mesh_fsdp; null or equal to it.", positive
  )
  mesh_fsdp: int | None = config_key(
    None,
    "Size of the mesh's fsdp axis (params, EMA and optimiser "
    'state sharded over it); null = num_model_shards, else 1 '
    '(replicated).',
    positive,
  )
  mesh_data: int = config_key(
    -1,
    "Size of the mesh's data axis; -1 = all devices / mesh_fsdp.",
    rule(lambda v: v == -1 or v > 0, '-1 or > 0'),
  )
  compute_dtype: str = config_key(
    'float32',
    "Dtype of the model's computation: 'float32' or "
    "'bfloat16' (params, loss and optimiser stay float32).",
    one_of('float32', 'bfloat16'),
  )
  remat: bool = config_key(
    False,
    'Recompute the U-Net or DiT blocks in the backward pass instead of '
    'storing their activations (less memory, more compute).',
  )
  data_workers: int = config_key(
    2, 'Grain worker processes preparing batches; 0 = in the main process.', nonneg
  )
  seed: int = config_key(0, 'Seed of data order, noise and timesteps.', nonneg)


@dataclass(frozen=True)
class Config:
  """A whole run: model, diffusion and trainer, and the video autoencoder of
  train-vae; `extra` holds the (name, value) of sections registered beyond these
  (a new backbone's), read as cfg.<name>."""

  unet: UnetConfig = field(default_factory=UnetConfig)
  diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
  dit: DiTConfig = field(default_factory=DiTConfig)
  trainer: TrainerConfig = field(default_factory=TrainerConfig)
  vae: VAEConfig = field(default_factory=VAEConfig)
  vae_trainer: VAETrainerConfig = field(default_factory=VAETrainerConfig)
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
  'vae': VAEConfig,
  'vae_trainer': VAETrainerConfig,
}
