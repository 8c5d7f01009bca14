"""Sampling from a training checkpoint: its params on a mesh of this machine's devices."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.diffusion.samplers import Sampler
from video_diffusion.inference.sampling import SamplingError, compile_sample_fn, generate
from video_diffusion.parallel import sharding
from video_diffusion.vae import latent

# generate's arguments that a latent model takes in latent frames (LatentSpace.sampling_request).
LATENT_REQUEST_KEYS = ('first', 'last', 'num_frames', 'num_cond_frames')


class LoadedModel(NamedTuple):
  """A checkpoint's model: (graphdef, params, constants) as split_diffusion's, its
  step, and in latent space its autoencoder (else None)."""

  graphdef: Any
  params: Any
  constants: Any
  step: int
  latents: latent.LatentSpace | None


def load_params(cfg, checkpoint_dir: str, *, step: int | None = None, ema: bool = False):
  """The LoadedModel of a training checkpoint's params or EMA params. A latent
  model's autoencoder is cfg's diffusion.vae, which must hold the weights it was
  trained on (SamplingError otherwise)."""
  with Checkpointer(checkpoint_dir, read_only=True) as ckpt:
    step = ckpt.resolve_step(step)
    try:
      space = latent.for_checkpoint(cfg, ckpt.restore_config(step))
    except (OSError, ValueError) as e:
      raise SamplingError(f'diffusion.vae: {e}') from None
    model_cfg = cfg if space is None else space.model_config(cfg)
    graphdef, target, constants = split_diffusion(model_cfg, abstract=True)
    params = ckpt.restore_params(step, target, ema=ema)
  return LoadedModel(graphdef, params, constants, step, space)


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
  model = load_params(cfg, checkpoint_dir, step=step, ema=ema)
  scale = cfg.trainer.cond_scale if cond_scale is None else cond_scale
  sample_fn = compile_sample_fn(
    model.graphdef,
    model.constants,
    batch_size,
    sampler=sampler,
    cond_scale=scale,
    recon_guidance=recon_guidance,
    mesh=sampling_mesh(cfg),
  )
  model_shape = cfg.diffusion.video_shape
  if model.latents is not None:  # given frames encoded, frame counts in latent frames
    pixel_request = {k: generate_kwargs.pop(k, None) for k in LATENT_REQUEST_KEYS}
    try:
      generate_kwargs.update(model.latents.sampling_request(**pixel_request))
    except ValueError as e:
      raise SamplingError(str(e)) from None
    model_shape = model.latents.model_config(cfg).diffusion.video_shape
  videos = generate(
    sample_fn,
    model.params,
    jax.random.key(seed),
    model_shape,
    batch_size,
    cond=cond,
    **generate_kwargs,
  )
  return latent.decoder(model.latents)(videos), model.step
