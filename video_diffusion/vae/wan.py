"""Wan 2.1's causal video autoencoder: diffusers' AutoencoderKLWan in Flax NNX.

Videos are (batch, frames, height, width, channels) in [-1, 1]; latents are
(batch, latent_frames, height / 2**(levels - 1), width / ..., z_dim). As in
diffusers, encode runs the first frame alone and then chunks of 4 frames, and
decode one latent frame at a time, each chunk through the feature caches the
previous chunk left (layers.py). Each kind of chunk is one jitted function of
(params, chunk, caches) -> (output, caches), compiled once per shape: the first
chunk, and the later ones whatever their number. With tiling enabled
(`enable_tiling`, tiling.py), inputs larger than a tile run tile by tile through
the same functions, tiles of one shape sharing their compilations.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.models.init import torch_default_init, weight_seed
from video_diffusion.vae.config import ENCODER_CHUNK, VAEConfig
from video_diffusion.vae.layers import (
  AttentionBlock,
  CausalConv3d,
  MidBlock,
  Resample,
  ResidualBlock,
  RMSNorm,
  cached_conv,
)
from video_diffusion.vae.tiling import TileSizes, tiled_decode, tiled_encode


class Encoder(nnx.Module):
  """WanEncoder3d: conv_in, per level num_res_blocks residual blocks (each followed
  by attention where the level's scale is in attn_scales) and a downsampling but
  on the last level, the mid block, RMS norm, SiLU, conv_out to 2 * z_dim."""

  def __init__(self, config: VAEConfig):
    dims = [config.base_dim * m for m in (1,) + config.dim_mult]
    self.conv_in = CausalConv3d(config.in_channels, dims[0], 3, padding=1)
    blocks, scale = [], 1.0
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(config.num_res_blocks):
        blocks.append(ResidualBlock(in_dim, out_dim))
        if scale in config.attn_scales:
          blocks.append(AttentionBlock(out_dim))
        in_dim = out_dim
      if i != len(config.dim_mult) - 1:
        temporal = config.temperal_downsample[i]
        blocks.append(Resample(out_dim, 'downsample3d' if temporal else 'downsample2d'))
        scale /= 2.0
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1])
    self.norm_out = RMSNorm(dims[-1])
    self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, padding=1)

  def __call__(self, x: jax.Array, cache=None):
    cache = {} if cache is None else cache  # the first chunk: no cache anywhere
    x, conv_in = cached_conv(self.conv_in, x, cache.get('conv_in'))
    blocks = []
    for i, block in enumerate(self.down_blocks):
      x, block_cache = block(x, cache['down_blocks'][i] if cache else None)
      blocks.append(block_cache)
    x, mid = self.mid_block(x, cache.get('mid_block'))
    x, conv_out = cached_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), cache.get('conv_out'))
    return x, dict(conv_in=conv_in, down_blocks=tuple(blocks), mid_block=mid, conv_out=conv_out)


class UpBlock(nnx.Module):
  """WanUpBlock (Wan 2.1): num_res_blocks + 1 residual blocks, then an optional
  upsampling (to out_dim // 2 channels). No attention, whatever attn_scales says."""

  def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, mode: str | None):
    dims = [in_dim] + [out_dim] * num_res_blocks
    self.resnets = nnx.List([ResidualBlock(d, out_dim) for d in dims])
    self.upsamplers = nnx.List([Resample(out_dim, mode)]) if mode else None

  def __call__(self, x: jax.Array, cache=None):
    caches = [None] * (len(self.resnets) + 1) if cache is None else list(cache)
    for i, resnet in enumerate(self.resnets):
      x, caches[i] = resnet(x, caches[i])
    if self.upsamplers is not None:
      x, caches[-1] = self.upsamplers[0](x, caches[-1])
    return x, tuple(caches)


class Decoder(nnx.Module):
  """WanDecoder3d: conv_in, the mid block, one UpBlock per level (widths from
  decoder_base_dim, the flags of temperal_downsample reversed), RMS norm, SiLU, conv_out."""

  def __init__(self, config: VAEConfig):
    base = config.base_dim if config.decoder_base_dim is None else config.decoder_base_dim
    dims = [base * m for m in (config.dim_mult[-1],) + config.dim_mult[::-1]]
    upsample = config.temperal_downsample[::-1]
    self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
    self.mid_block = MidBlock(dims[0])
    blocks = []
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      in_dim = in_dim // 2 if i > 0 else in_dim  # the previous upsampling halved the width
      mode = None
      if i != len(config.dim_mult) - 1:
        mode = 'upsample3d' if upsample[i] else 'upsample2d'
      blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks, mode))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1])
    self.conv_out = CausalConv3d(dims[-1], config.out_channels, 3, padding=1)

  def __call__(self, x: jax.Array, cache=None):
    cache = {} if cache is None else cache  # the first chunk: no cache anywhere
    x, conv_in = cached_conv(self.conv_in, x, cache.get('conv_in'))
    x, mid = self.mid_block(x, cache.get('mid_block'))
    blocks = []
    for i, block in enumerate(self.up_blocks):
      x, block_cache = block(x, cache['up_blocks'][i] if cache else None)
      blocks.append(block_cache)
    x, conv_out = cached_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), cache.get('conv_out'))
    return x, dict(conv_in=conv_in, mid_block=mid, up_blocks=tuple(blocks), conv_out=conv_out)


class Posterior(NamedTuple):
  """diffusers' DiagonalGaussianDistribution: mean and log-variance (clamped to [-30, 20])."""

  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def mode(self) -> jax.Array:
    return self.mean

  def sample(self, key: jax.Array) -> jax.Array:
    """mean + std * standard normal noise drawn from `key`."""
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _encode_chunk(graphdef, state, videos, cache):
  """One chunk through (encoder, quant_conv) (1x1x1: per chunk is the same): moments."""
  encoder, quant_conv = nnx.merge(graphdef, state)
  moments, cache = encoder(videos, cache)
  return quant_conv(moments), cache


@functools.partial(jax.jit, static_argnums=0)
def _decode_chunk(graphdef, state, latents, cache):
  """One latent frame through (post_quant_conv, decoder), not clamped."""
  post_quant_conv, decoder = nnx.merge(graphdef, state)
  return decoder(post_quant_conv(latents), cache)


def _encode_frames(graphdef, state, videos: jax.Array) -> jax.Array:
  """The moments (mean and log-variance, unclamped) of the first frame, then of each
  chunk of ENCODER_CHUNK frames, each chunk after the caches the previous one left."""
  moments, cache = _encode_chunk(graphdef, state, videos[:, :1], None)
  chunks = [moments]
  for start in range(1, videos.shape[1], ENCODER_CHUNK):
    moments, cache = _encode_chunk(graphdef, state, videos[:, start : start + ENCODER_CHUNK], cache)
    chunks.append(moments)
  return jnp.concatenate(chunks, axis=1)


def _decode_frames(graphdef, state, latents: jax.Array) -> jax.Array:
  """The frames of each latent frame in turn, each after the caches the previous one
  left; not clamped (tiles are blended first, as in diffusers)."""
  videos, cache = [], None
  for t in range(latents.shape[1]):
    frames, cache = _decode_chunk(graphdef, state, latents[:, t : t + 1], cache)
    videos.append(frames)
  return jnp.concatenate(videos, axis=1)


class WanVAE(nnx.Module):
  """AutoencoderKLWan (Wan 2.1). Built with PyTorch's default initialisation drawn
  from `rngs` (none under nnx.eval_shape); `loading.load_vae` fills in weights.
  `enable_tiling` makes encode and decode of large frames run in tiles, as diffusers'."""

  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = Encoder(config)
    self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
    self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
    self.decoder = Decoder(config)
    self.use_tiling, self.tile_sizes = False, TileSizes()
    seed = weight_seed(rngs)
    if seed is not None:  # under nnx.eval_shape there is nothing to set
      torch_default_init(self, seed)

  @property
  def latents_mean(self) -> np.ndarray | None:
    """The config's per-channel latent mean (z_dim,), or None."""
    mean = self.config.latents_mean
    return None if mean is None else np.asarray(mean, np.float32)

  @property
  def latents_std(self) -> np.ndarray | None:
    """The config's per-channel latent standard deviation (z_dim,), or None."""
    std = self.config.latents_std
    return None if std is None else np.asarray(std, np.float32)

  @property
  def spatial_compression(self) -> int:
    """Pixels per latent pixel in height and width: one halving per downsampling level."""
    return self.config.spatial_compression

  def enable_tiling(
    self,
    tile_sample_min_height: int | None = None,
    tile_sample_min_width: int | None = None,
    tile_sample_stride_height: int | None = None,
    tile_sample_stride_width: int | None = None,
  ) -> None:
    """As diffusers: encode and decode inputs larger than a tile tile by tile
    (tiling.TileSizes); sizes not given keep their last values (at first diffusers'
    defaults, 256-pixel tiles every 192). Raises ValueError on bad sizes."""
    given = dict(
      tile_sample_min_height=tile_sample_min_height,
      tile_sample_min_width=tile_sample_min_width,
      tile_sample_stride_height=tile_sample_stride_height,
      tile_sample_stride_width=tile_sample_stride_width,
    )
    sizes = dataclasses.replace(
      self.tile_sizes, **{k: v for k, v in given.items() if v is not None}
    )
    sizes.check(self.spatial_compression)
    self.use_tiling, self.tile_sizes = True, sizes

  def disable_tiling(self) -> None:
    """Encode and decode whole frames again (the tile sizes are kept)."""
    self.use_tiling = False

  def posterior(self, videos) -> Posterior:
    """Encodes (b, 1 + 4k, h, w, in_channels) videos: the latents' Gaussian."""
    videos = jnp.asarray(videos, jnp.float32)
    if videos.ndim != 5 or videos.shape[-1] != self.config.in_channels:
      raise ValueError(
        f'videos must be (batch, frames, height, width, {self.config.in_channels}); '
        f'got {videos.shape}'
      )
    self.config.latent_frames(videos.shape[1])  # raises unless 1 + 4k frames
    encode = functools.partial(_encode_frames, *nnx.split((self.encoder, self.quant_conv)))
    if self.use_tiling and self.tile_sizes.splits(*videos.shape[2:4]):
      moments = tiled_encode(encode, videos, self.tile_sizes, self.spatial_compression)
    else:
      moments = encode(videos)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return Posterior(mean, jnp.clip(logvar, -30.0, 20.0))

  def encode(self, videos) -> jax.Array:
    """The posterior mean of (b, 1 + 4k, h, w, c) videos: (b, latent_frames, h', w', z_dim)."""
    return self.posterior(videos).mean

  def decode(self, latents, *, clip: bool = True) -> jax.Array:
    """(b, t, h', w', z_dim) latents -> (b, video_frames(t), h, w, out_channels) in
    [-1, 1]; clip=False leaves the values unclipped (for a training loss, whose
    gradient the clip would zero wherever the output overshoots)."""
    latents = jnp.asarray(latents, jnp.float32)
    if latents.ndim != 5 or latents.shape[-1] != self.config.z_dim or latents.shape[1] < 1:
      raise ValueError(
        f'latents must be (batch, frames >= 1, height, width, {self.config.z_dim}); '
        f'got {latents.shape}'
      )
    decode = functools.partial(_decode_frames, *nnx.split((self.post_quant_conv, self.decoder)))
    compression = self.spatial_compression
    if self.use_tiling and self.tile_sizes.splits(*latents.shape[2:4], compression):
      videos = tiled_decode(decode, latents, self.tile_sizes, compression)
    else:
      videos = decode(latents)
    return jnp.clip(videos, -1.0, 1.0) if clip else videos
