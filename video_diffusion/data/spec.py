"""DataSpec: what the data pipeline takes from a run config, typed and in one place."""

from __future__ import annotations

import dataclasses

from video_diffusion.conditions.kinds import ConditionSpec


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The dataset and batches of a run.

  video_shape: (frames, height, width, channels) of the model's videos.
  batch_size: videos per optimiser step, all processes together
  (micro-batch x gradient accumulation). dataset_path None = the built-in
  synthetic digits (drawn from `seed`). Clips take every frame_stride-th
  frame, or are resampled to `fps` (video files only); each video gives
  clips_per_video clips per epoch; random_flip mirrors half of them.
  image_fraction of each batch are stacks of independent images from
  image_dataset_path (image-video co-training).
  """

  dataset_path: str | None
  video_shape: tuple[int, int, int, int]
  batch_size: int = 1
  condition: ConditionSpec = ConditionSpec()
  path_as_cond: bool = False
  seed: int = 0
  workers: int = 0
  frame_stride: int = 1
  fps: float | None = None
  clips_per_video: int = 1
  random_flip: bool = False
  image_dataset_path: str | None = None
  image_fraction: float = 0.0

  @classmethod
  def from_config(cls, cfg) -> DataSpec:
    """The data settings of a config.Config."""
    t, d = cfg.trainer, cfg.diffusion
    return cls(
      dataset_path=t.dataset_path or None,  # "" = none, as checkpoint_dir_path
      video_shape=d.video_shape,
      batch_size=t.train_batch_size * t.gradient_accumulate_every,
      condition=ConditionSpec.from_unet(cfg.unet),
      path_as_cond=t.use_path_as_cond,
      seed=t.seed,
      workers=t.data_workers,
      frame_stride=t.frame_stride,
      fps=t.fps,
      clips_per_video=t.clips_per_video,
      random_flip=t.random_flip,
      image_dataset_path=t.image_dataset_path or None,
      image_fraction=t.image_fraction,
    )

  def videos_only(self) -> DataSpec:
    """The same clips without conditions or co-training image stacks (what a
    video autoencoder trains on)."""
    return dataclasses.replace(
      self,
      condition=ConditionSpec(),
      path_as_cond=False,
      image_dataset_path=None,
      image_fraction=0.0,
    )
