"""Builds the model of a run config: Unet3D wrapped in GaussianDiffusion."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from video_diffusion.config import Config
from video_diffusion.diffusion.gaussian import GaussianDiffusion
from video_diffusion.models.unet import Unet3D


def build_diffusion(cfg: Config, *, abstract: bool = False) -> GaussianDiffusion:
  """GaussianDiffusion(Unet3D) with the config's architecture and initial weights.

  The Unet3D computes in trainer.compute_dtype (params stay float32) and with
  trainer.remat recomputes its blocks' activations in the backward pass.

  The weights are those of `Unet3D(..., rngs=nnx.Rngs(unet.rngs_seed))` (see
  models.init). With abstract=True they are ShapeDtypeStructs (nothing is
  initialised; for restoring a checkpoint into); the schedule is always real.
  """
  u, d = cfg.unet, cfg.diffusion
  # With frame_conditioning the network also reads a mask channel.
  in_channels = u.channels + int(d.frame_conditioning)
  make_unet = lambda: Unet3D(
    dim=u.dim,
    cond_dim=u.cond_dim,
    out_dim=u.out_dim or u.channels,
    dim_mults=u.dim_mults,
    channels=in_channels,
    attn_heads=u.attn_heads,
    attn_dim_head=u.attn_dim_head,
    use_bert_text_cond=u.use_bert_text_cond,
    init_dim=u.init_dim,
    init_kernel_size=u.init_kernel_size,
    use_sparse_linear_attn=u.use_sparse_linear_attn,
    num_classes=u.num_classes,
    dtype=jnp.dtype(cfg.trainer.compute_dtype),
    remat=cfg.trainer.remat,
    rngs=nnx.Rngs(u.rngs_seed),
  )
  unet = nnx.eval_shape(make_unet) if abstract else make_unet()
  return GaussianDiffusion(
    unet,
    image_size=d.image_size,
    num_frames=d.num_frames,
    channels=d.channels,
    timesteps=d.timesteps,
    loss_type=d.loss_type,
    beta_schedule=d.beta_schedule,
    use_dynamic_thres=d.use_dynamic_thres,
    dynamic_thres_percentile=d.dynamic_thres_percentile,
    text_use_bert_cls=d.text_use_bert_cls,
    objective=d.objective,
    loss_weighting=d.loss_weighting,
    min_snr_gamma=d.min_snr_gamma,
    frame_conditioning=d.frame_conditioning,
  )


def split_diffusion(cfg: Config, *, abstract: bool = False):
  """(graphdef, params, constants) of the config's model; params as a pure dict.

  With abstract=True the params are ShapeDtypeStructs (for restoring a
  checkpoint into); the constants (noise schedule) are real either way.
  """
  model = build_diffusion(cfg, abstract=abstract)
  graphdef, params, constants = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), constants
