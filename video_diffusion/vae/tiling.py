"""Spatial tiling of the Wan VAE, as diffusers' AutoencoderKLWan does it.

A large video (or latent) is cut into overlapping tiles in height and width;
each tile runs alone through the chunked causal path (all its frames), and the
outputs are joined: each tile is blended linearly into the one above it
(blend_v) and the one to its left (blend_h) over the overlap, then cropped to
the stride, as in diffusers' tiled_encode / tiled_decode. The blending is done
in order, tile by tile, on tiles that were already blended (diffusers blends
in place), so the outputs match diffusers'. Time is not tiled: it is already
chunked through the feature caches. Arrays are channels-last: height is axis 2,
width axis 3.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

HEIGHT_AXIS, WIDTH_AXIS = 2, 3


@dataclasses.dataclass(frozen=True)
class TileSizes:
  """diffusers' enable_tiling arguments, in pixels, with its defaults: tiles of
  tile_sample_min_height x tile_sample_min_width, one every tile_sample_stride_*
  pixels (the overlap, tile - stride, is blended). Inputs no larger than a tile
  are not tiled. All four must be multiples of the VAE's spatial compression
  (checked by `check`), so that tiles fall on whole latent pixels."""

  tile_sample_min_height: int = 256
  tile_sample_min_width: int = 256
  tile_sample_stride_height: int = 192
  tile_sample_stride_width: int = 192

  def __post_init__(self):
    for name, value in dataclasses.asdict(self).items():
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive integer; got {value!r}')
    for axis in ('height', 'width'):
      tile = getattr(self, f'tile_sample_min_{axis}')
      stride = getattr(self, f'tile_sample_stride_{axis}')
      if stride > tile:
        raise ValueError(
          f'tile_sample_stride_{axis}={stride} is larger than tile_sample_min_{axis}={tile}: '
          'the tiles would leave gaps'
        )

  def check(self, spatial_compression: int) -> None:
    """Raises unless every size is a multiple of `spatial_compression`."""
    for name, value in dataclasses.asdict(self).items():
      if value % spatial_compression:
        raise ValueError(
          f'{name}={value} is not a multiple of the spatial compression '
          f'{spatial_compression}: tiles would not fall on whole latent pixels'
        )

  @property
  def tile(self) -> tuple[int, int]:
    """(height, width) of a tile in pixels."""
    return self.tile_sample_min_height, self.tile_sample_min_width

  @property
  def stride(self) -> tuple[int, int]:
    """(height, width) between tiles in pixels."""
    return self.tile_sample_stride_height, self.tile_sample_stride_width

  def splits(self, height: int, width: int, spatial_compression: int = 1) -> bool:
    """Whether an input of height x width (latent pixels when spatial_compression > 1)
    is larger than a tile, so that tiling applies (diffusers' condition)."""
    tile_h, tile_w = (size // spatial_compression for size in self.tile)
    return height > tile_h or width > tile_w


def blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
  """diffusers' blend_v (axis 2) / blend_h (axis 3): b's first `extent` rows become
  a's last ones weighted 1 - y / extent plus b's weighted y / extent."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent == 0:
    return b
  weight = np.arange(extent) / extent  # float64 like diffusers' Python floats
  shape = [1] * b.ndim
  shape[axis] = extent
  weight_b = weight.astype(np.float32).reshape(shape)
  weight_a = (1 - weight).astype(np.float32).reshape(shape)
  head = [slice(None)] * b.ndim
  head[axis] = slice(0, extent)
  tail = [slice(None)] * a.ndim
  tail[axis] = slice(a.shape[axis] - extent, None)
  mixed = a[tuple(tail)] * weight_a + b[tuple(head)] * weight_b
  return b.at[tuple(head)].set(mixed.astype(b.dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def join_tiles(rows: list[list[jax.Array]], blend_hw: tuple, stride_hw: tuple, size_hw: tuple):
  """Blends each tile into the (already blended) tiles above and to its left, crops
  each to `stride_hw`, concatenates them and crops the whole to `size_hw`. One
  jitted program per layout of tiles."""
  rows = [list(row) for row in rows]
  joined = []
  for i, row in enumerate(rows):
    cropped = []
    for j in range(len(row)):
      tile = row[j]
      if i > 0:
        tile = blend(rows[i - 1][j], tile, blend_hw[0], HEIGHT_AXIS)
      if j > 0:
        tile = blend(row[j - 1], tile, blend_hw[1], WIDTH_AXIS)
      row[j] = tile  # diffusers blends in place: the next tiles see this one blended
      cropped.append(tile[:, :, : stride_hw[0], : stride_hw[1]])
    joined.append(jnp.concatenate(cropped, axis=WIDTH_AXIS))
  return jnp.concatenate(joined, axis=HEIGHT_AXIS)[:, :, : size_hw[0], : size_hw[1]]


def run_tiles(run: Callable, x: jax.Array, tile_hw: tuple, stride_hw: tuple) -> list[list]:
  """run(tile) of each tile of x: tile_hw tiles every stride_hw, by rows (smaller at the edges)."""
  height, width = x.shape[HEIGHT_AXIS], x.shape[WIDTH_AXIS]
  return [
    [run(x[:, :, i : i + tile_hw[0], j : j + tile_hw[1]]) for j in range(0, width, stride_hw[1])]
    for i in range(0, height, stride_hw[0])
  ]


def tiled_encode(encode: Callable, videos: jax.Array, sizes: TileSizes, compression: int):
  """diffusers' tiled_encode: encode(video tile) -> moments tile, joined in latent space
  (tiles of tile // compression, blended over (tile - stride) // compression)."""
  sizes.check(compression)
  latent_tile = tuple(size // compression for size in sizes.tile)
  latent_stride = tuple(size // compression for size in sizes.stride)
  blend_hw = tuple(t - s for t, s in zip(latent_tile, latent_stride))
  latent_size = (videos.shape[HEIGHT_AXIS] // compression, videos.shape[WIDTH_AXIS] // compression)
  rows = run_tiles(encode, videos, sizes.tile, sizes.stride)
  return join_tiles(rows, blend_hw, latent_stride, latent_size)


def tiled_decode(decode: Callable, latents: jax.Array, sizes: TileSizes, compression: int):
  """diffusers' tiled_decode: latent tiles of tile // compression every stride // compression,
  decode(latent tile) -> video tile, joined in pixels (blended over tile - stride)."""
  sizes.check(compression)
  latent_tile = tuple(size // compression for size in sizes.tile)
  latent_stride = tuple(size // compression for size in sizes.stride)
  blend_hw = tuple(t - s for t, s in zip(sizes.tile, sizes.stride))
  video_size = (latents.shape[HEIGHT_AXIS] * compression, latents.shape[WIDTH_AXIS] * compression)
  rows = run_tiles(decode, latents, latent_tile, latent_stride)
  return join_tiles(rows, blend_hw, sizes.stride, video_size)
