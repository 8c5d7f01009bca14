"""Sampling from a training checkpoint: its params on a mesh of this machine's devices."""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.diffusion.samplers import Sampler
from video_diffusion.inference.sampling import compile_sample_fn, generate
from video_diffusion.parallel import sharding


def load_params(cfg, checkpoint_dir: str, *, step: int | None = None, ema: bool = False):
  """(graphdef, params, constants, step) of a training checkpoint's params or EMA params."""
  graphdef, target, constants = split_diffusion(cfg, abstract=True)
  with Checkpointer(checkpoint_dir, read_only=True) as ckpt:
    step = ckpt.resolve_step(step)
    params = ckpt.restore_params(step, target, ema=ema)
  return graphdef, params, constants, step


def sampling_mesh(cfg) -> Mesh:
  """All devices, videos split over them; params over the training's fsdp size
  where it divides the devices here, else replicated."""
  fsdp = cfg.trainer.mesh_fsdp
  return sharding.make_mesh(-1, fsdp if jax.device_count() % fsdp == 0 else 1)


def sample_checkpoint(
  cfg,
  checkpoint_dir: str,
  *,
  step: int | None = None,
  ema: bool = False,
  seed: int = 0,
  batch_size: int = 16,
  sampler: Sampler | None = None,
  cond=None,
  cond_scale: float | None = None,
  recon_guidance: float = 0.0,
  **generate_kwargs,
):
  """(videos in [0, 1], step) sampled from a training checkpoint; cond as the
  model takes it (conditioning.model_condition), generate_kwargs as generate."""
  graphdef, params, constants, step = load_params(cfg, checkpoint_dir, step=step, ema=ema)
  scale = cfg.trainer.cond_scale if cond_scale is None else cond_scale
  sample_fn = compile_sample_fn(
    graphdef,
    constants,
    batch_size,
    sampler=sampler,
    cond_scale=scale,
    recon_guidance=recon_guidance,
    mesh=sampling_mesh(cfg),
  )
  videos = generate(
    sample_fn,
    params,
    jax.random.key(seed),
    cfg.diffusion.video_shape,
    batch_size,
    cond=cond,
    **generate_kwargs,
  )
  return videos, step
