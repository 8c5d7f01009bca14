"""Unet3D of video-diffusion-pytorch 0.7.0 in Flax NNX, channels-last.

Videos are (batch, frames, height, width, channels) arrays; the reference uses
(batch, channels, frames, height, width).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from video_diffusion.models.attention import (
  PreNormResidual,
  RelativePositionBias,
  SpatialAttention,
  SpatialLinearAttention,
  TemporalAttention,
)
from video_diffusion.models.conditioning import GuidedDenoiser, condition_width, prob_mask
from video_diffusion.models.init import deferred, deferred_param, torch_default_init, weight_seed
from video_diffusion.models.layers import (
  Downsample,
  ResnetBlock,
  SpatialConv,
  Upsample,
  linear,
  sinusoidal_embedding,
)


class UnetLevel(nnx.Module):
  """Two ResnetBlocks, spatial linear attention, temporal attention, resampling."""

  def __init__(
    self,
    dim_in,
    dim_out,
    *,
    cond_dim,
    heads,
    dim_head,
    use_linear_attn,
    resample,
    dtype=jnp.float32,
    remat=False,
    rngs,
  ):
    self.block1 = ResnetBlock(dim_in, dim_out, time_emb_dim=cond_dim, dtype=dtype, rngs=rngs)
    self.block2 = ResnetBlock(dim_out, dim_out, time_emb_dim=cond_dim, dtype=dtype, rngs=rngs)
    self.spatial_attn = (
      PreNormResidual(dim_out, SpatialLinearAttention(dim_out, heads=heads, dtype=dtype, rngs=rngs))
      if use_linear_attn
      else None
    )
    self.temporal_attn = PreNormResidual(
      dim_out, TemporalAttention(dim_out, heads, dim_head, dtype=dtype, rngs=rngs)
    )
    self.resample = resample
    self.remat = remat

  def _features(self, x, t, pos_bias, focus_present_mask):
    x = self.block2(self.block1(x, t), t)
    if self.spatial_attn is not None:
      x = self.spatial_attn(x)
    return self.temporal_attn(x, pos_bias=pos_bias, focus_present_mask=focus_present_mask)

  def features(self, x, t, pos_bias, focus_present_mask):
    """The level's blocks and attentions (before resampling); with remat, their
    activations are recomputed in the backward pass instead of stored."""
    fn = nnx.remat(UnetLevel._features) if self.remat else UnetLevel._features
    return fn(self, x, t, pos_bias, focus_present_mask)


def _mid_blocks(block1, spatial_attn, temporal_attn, block2, x, t, pos_bias, focus_present_mask):
  """The Unet3D's middle: ResnetBlock, spatial and temporal attention, ResnetBlock."""
  x = block1(x, t)
  x = spatial_attn(x)
  x = temporal_attn(x, pos_bias=pos_bias, focus_present_mask=focus_present_mask)
  return block2(x, t)


class Unet3D(GuidedDenoiser):
  """The reference's 3-D U-Net denoiser, with the same constructor options.

  Call with x (batch, frames, height, width, channels) and integer times
  (batch,); returns (..., out_dim): the prediction of the diffusion's
  objective (eps, x0 or v).
  `cond` is (batch, cond_dim) (the text embedding with use_bert_text_cond,
  768 wide unless cond_dim says otherwise), or int labels (batch,) with
  num_classes, embedded to cond_dim (default 4 * dim). Random masks
  (null_cond_prob, prob_focus_present strictly between 0 and 1) are drawn
  from `key`.

  `init_dim` different from `dim` fails in the reference's forward pass; here
  the final block takes 2 * init_dim channels, so it works.

  `dtype` (float32 or bfloat16) is the compute dtype of the convolutions,
  linears and attention matmuls; parameters, norms, softmaxes and the time
  embedding stay float32, and the output is float32. `remat=True` recomputes
  each level's blocks and the middle blocks in the backward pass (less memory,
  same values).
  """

  def __init__(
    self,
    dim: int,
    cond_dim: int | None = None,
    out_dim: int | None = None,
    dim_mults: Sequence[int] = (1, 2, 4, 8),
    channels: int = 3,
    attn_heads: int = 8,
    attn_dim_head: int = 32,
    use_bert_text_cond: bool = False,
    init_dim: int | None = None,
    init_kernel_size: int = 7,
    use_sparse_linear_attn: bool = True,
    block_type: str = 'resnet',
    num_classes: int | None = None,
    *,
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    rngs: nnx.Rngs,
  ):
    if block_type != 'resnet':
      raise ValueError(f"block_type={block_type!r}: only 'resnet' exists (as in the reference).")
    if init_kernel_size % 2 != 1:
      raise ValueError(f'init_kernel_size={init_kernel_size} must be odd.')
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
      raise ValueError(f'dtype={dtype}: use float32 or bfloat16.')
    self.dtype = dtype = jnp.dtype(dtype)
    self.remat = bool(remat)
    self.channels = channels
    self.time_rel_pos_bias = RelativePositionBias(heads=attn_heads, max_distance=32, rngs=rngs)

    init_dim = dim if init_dim is None else init_dim
    self.init_conv = SpatialConv(channels, init_dim, init_kernel_size, dtype=dtype, rngs=rngs)
    self.init_temporal_attn = PreNormResidual(
      init_dim, TemporalAttention(init_dim, attn_heads, attn_dim_head, dtype=dtype, rngs=rngs)
    )

    dims = [init_dim, *(dim * m for m in dim_mults)]
    in_out = list(zip(dims[:-1], dims[1:]))

    self.time_dim = time_dim = dim * 4
    self.dim = dim
    self.time_mlp1 = linear(dim, time_dim, rngs=rngs)
    self.time_mlp2 = linear(time_dim, time_dim, rngs=rngs)

    cond_dim = condition_width(dim, cond_dim, use_bert_text_cond, num_classes)
    self.has_cond = cond_dim is not None
    self.cond_dim = cond_dim
    self.num_classes = num_classes
    self.class_embed = (
      nnx.Embed(num_classes, cond_dim, embedding_init=deferred, rngs=rngs)
      if num_classes is not None
      else None
    )
    self.null_cond_emb = deferred_param((cond_dim,)) if self.has_cond else None
    emb_dim = time_dim + int(cond_dim or 0)

    level = lambda d_in, d_out, resample: UnetLevel(
      d_in,
      d_out,
      cond_dim=emb_dim,
      heads=attn_heads,
      dim_head=attn_dim_head,
      use_linear_attn=use_sparse_linear_attn,
      resample=resample,
      dtype=dtype,
      remat=remat,
      rngs=rngs,
    )
    num_levels = len(in_out)
    self.downs = nnx.List(
      [
        level(
          d_in, d_out, Downsample(d_out, dtype=dtype, rngs=rngs) if i < num_levels - 1 else None
        )
        for i, (d_in, d_out) in enumerate(in_out)
      ]
    )

    mid_dim = dims[-1]
    self.mid_block1 = ResnetBlock(mid_dim, mid_dim, time_emb_dim=emb_dim, dtype=dtype, rngs=rngs)
    self.mid_spatial_attn = PreNormResidual(
      mid_dim, SpatialAttention(mid_dim, heads=attn_heads, dtype=dtype, rngs=rngs)
    )
    self.mid_temporal_attn = PreNormResidual(
      mid_dim, TemporalAttention(mid_dim, attn_heads, attn_dim_head, dtype=dtype, rngs=rngs)
    )
    self.mid_block2 = ResnetBlock(mid_dim, mid_dim, time_emb_dim=emb_dim, dtype=dtype, rngs=rngs)

    self.ups = nnx.List(
      [
        level(
          d_out * 2, d_in, Upsample(d_in, dtype=dtype, rngs=rngs) if i < num_levels - 1 else None
        )
        for i, (d_in, d_out) in enumerate(reversed(in_out))
      ]
    )

    self.out_dim = channels if out_dim is None else out_dim
    self.final_block = ResnetBlock(init_dim * 2, dim, dtype=dtype, rngs=rngs)
    self.final_conv = linear(dim, self.out_dim, dtype=dtype, rngs=rngs)
    seed = weight_seed(rngs)
    if seed is not None:  # under nnx.eval_shape there is nothing to set
      torch_default_init(self, seed)

  def __call__(
    self,
    x: jax.Array,
    time: jax.Array,
    cond: jax.Array | None = None,
    null_cond_prob: float = 0.0,
    focus_present_mask: jax.Array | None = None,
    prob_focus_present: float = 0.0,
    *,
    key: jax.Array | None = None,
    null_mask: jax.Array | None = None,
    image_mask: jax.Array | None = None,
  ) -> jax.Array:
    """The network's output (b, f, h, w, out_dim), float32, for x (b, f, h, w, c)
    at integer times (b,): the noise, x0 or v, as the diffusion's objective says. `null_mask`
    (b,) bool replaces the condition by the null one where True (default: drawn
    with null_cond_prob). `image_mask` (b,) bool marks stacks of independent
    images (co-training): every temporal attention, the first one too (which
    focus_present_mask leaves alone, as the reference), keeps their frames apart."""
    if self.has_cond and cond is None:
      raise ValueError('This Unet3D was built with cond_dim/use_bert_text_cond: pass cond.')
    batch = x.shape[0]
    focus_key, null_key = (None, None) if key is None else jax.random.split(key)
    if focus_present_mask is None:
      focus_present_mask = prob_mask(focus_key, batch, prob_focus_present, 'prob_focus_present')
    pos_bias = self.time_rel_pos_bias(x.shape[1])

    if image_mask is not None:
      focus_present_mask = focus_present_mask | image_mask

    x = self.init_conv(x)
    x = self.init_temporal_attn(x, pos_bias=pos_bias, focus_present_mask=image_mask)
    r = x

    t = sinusoidal_embedding(time, self.dim)
    t = self.time_mlp2(jax.nn.gelu(self.time_mlp1(t), approximate=False))
    if self.has_cond:
      if self.class_embed is not None:
        cond = self.class_embed(cond)
      if null_mask is None:
        null_mask = prob_mask(null_key, batch, null_cond_prob, 'null_cond_prob')
      cond = jnp.where(null_mask[:, None], self.null_cond_emb[...][None, :], cond)
      t = jnp.concatenate([t, cond.astype(t.dtype)], axis=-1)

    skips = []
    for level in self.downs:
      x = level.features(x, t, pos_bias, focus_present_mask)
      skips.append(x)
      if level.resample is not None:
        x = level.resample(x)

    mid = nnx.remat(_mid_blocks) if self.remat else _mid_blocks
    x = mid(
      self.mid_block1,
      self.mid_spatial_attn,
      self.mid_temporal_attn,
      self.mid_block2,
      x,
      t,
      pos_bias,
      focus_present_mask,
    )

    for level in self.ups:
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = level.features(x, t, pos_bias, focus_present_mask)
      if level.resample is not None:
        x = level.resample(x)

    x = jnp.concatenate([x, r], axis=-1)
    return self.final_conv(self.final_block(x)).astype(jnp.float32)
