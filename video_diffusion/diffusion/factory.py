"""Builds the model of a run config: its denoiser (Unet3D or DiT) wrapped in GaussianDiffusion."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from video_diffusion.config import SECTIONS, Config, registry
from video_diffusion.diffusion.gaussian import GaussianDiffusion
from video_diffusion.models.dit import DiT
from video_diffusion.models.unet import Unet3D


def _unet3d(cfg: Config, in_channels: int, dtype: jnp.dtype) -> Unet3D:
  u = cfg.unet
  return Unet3D(
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
    dtype=dtype,
    remat=cfg.trainer.remat,
    rngs=nnx.Rngs(u.rngs_seed),
  )


def _dit(cfg: Config, in_channels: int, dtype: jnp.dtype) -> DiT:
  u, m = cfg.unet, cfg.dit
  return DiT(
    channels=in_channels,
    out_dim=u.out_dim or u.channels,
    patch_size=m.patch_size,
    temporal_patch_size=m.temporal_patch_size,
    width=m.width,
    depth=m.depth,
    heads=m.heads,
    mlp_ratio=m.mlp_ratio,
    attention=m.attention,
    positions=m.positions,
    num_classes=u.num_classes,
    cond_dim=u.cond_dim,
    use_bert_text_cond=u.use_bert_text_cond,
    dtype=dtype,
    remat=cfg.trainer.remat,
    rngs=nnx.Rngs(u.rngs_seed),
  )


# diffusion.backbone -> (config, input channels, compute dtype) -> the denoiser;
# config.registry.BACKBONES has each one's own config section and checks (for the config).
BACKBONES = {'unet3d': _unet3d, 'dit': _dit}


def register_backbone(
  name: str,
  build: Callable[[Config, int, jnp.dtype], nnx.Module],
  *,
  section: str | None = None,
  section_cls: type | None = None,
  check: Callable[[Config], str | None] | None = None,
) -> None:
  """Makes backbone `name` known to build_diffusion and the config (diffusion.backbone).

  build(cfg, in_channels, dtype) returns the denoiser (a GuidedDenoiser with
  the call of Unet3D). `section` names its own config section, the frozen
  dataclass `section_cls` (read as cfg.<section>, compared with a
  checkpoint's); check(cfg) says what a config gets wrong for it, or None.
  """
  if section is not None:
    if section_cls is None:
      raise ValueError(f'backbone {name!r}: section {section!r} needs its section_cls')
    SECTIONS[section] = section_cls
  registry.BACKBONES[name] = registry.BackboneInfo(section=section, check=check)
  BACKBONES[name] = build


def build_diffusion(cfg: Config, *, abstract: bool = False) -> GaussianDiffusion:
  """The config's denoiser (diffusion.backbone: Unet3D or DiT) wrapped in
  GaussianDiffusion, with its initial weights.

  The denoiser computes in trainer.compute_dtype (params stay float32) and with
  trainer.remat recomputes its blocks' activations in the backward pass.

  The weights are those of `Unet3D(..., rngs=nnx.Rngs(unet.rngs_seed))` (see
  models.init), or DiT's with the same Rngs. With abstract=True they are
  ShapeDtypeStructs (nothing is initialised; for restoring a checkpoint into);
  the schedule is always real.
  """
  d = cfg.diffusion
  # With frame_conditioning the network also reads a mask channel.
  in_channels = cfg.unet.channels + int(d.frame_conditioning)
  make = lambda: BACKBONES[d.backbone](cfg, in_channels, jnp.dtype(cfg.trainer.compute_dtype))
  denoiser = nnx.eval_shape(make) if abstract else make()
  return GaussianDiffusion(
    denoiser,
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
    time_sampling=d.time_sampling,
    logit_normal_mean=d.logit_normal_mean,
    logit_normal_scale=d.logit_normal_scale,
    time_shift=d.time_shift,
    clip_denoised=d.vae is None,  # latents are not bounded to [-1, 1]
  )


def split_diffusion(cfg: Config, *, abstract: bool = False):
  """(graphdef, params, constants) of the config's model; params as a pure dict.

  With abstract=True the params are ShapeDtypeStructs (for restoring a
  checkpoint into); the constants (noise schedule) are real either way.
  """
  model = build_diffusion(cfg, abstract=abstract)
  graphdef, params, constants = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), constants
