"""Spatial tiling of the Wan VAE (video_diffusion/vae/tiling.py), no torch.

tests/fixtures/vae/wan_like/tiled.npz (tools/make_vae_fixtures.py) holds diffusers
0.42.1's tiled encode of a 5-frame 64x40 video (the first frame, then a chunk of
4, through the caches in each tile) and tiled decode of one 8x5 latent frame,
with the wan_like VAE:
tiles 32 high every 16 pixels and 24 wide every 16, so 4 x 3 tiles of 4 shapes,
seams both ways, blends of 2 and 1 latent pixels (16 and 8 pixels when decoding).
"""

import dataclasses
import pathlib
import sys
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.vae import VAEConfig, WanVAE, load_vae
from video_diffusion.vae import wan as wan_module
from video_diffusion.vae.tiling import TileSizes, tiled_decode, tiled_encode

FOLDER = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'vae' / 'wan_like'
SIZE_NAMES = [field.name for field in dataclasses.fields(TileSizes)]
ATOL = 1e-4  # as the untiled parity tests: float32 against diffusers' float32
TILE_SHAPES = 4  # heights {32, 16} x widths {24, 8}, and in latent space {4, 2} x {3, 1}


def compilations() -> tuple[int, int]:
  return wan_module._encode_chunk._cache_size(), wan_module._decode_chunk._cache_size()


@pytest.fixture(scope='module')
def case():
  """The wan_like VAE's untiled and tiled outputs on tiled.npz's inputs, with diffusers'
  tiled outputs and the compilations the first and the second tiled call added."""
  with np.load(FOLDER / 'tiled.npz') as data:
    expected = {k: data[k] for k in data.files}
  vae = load_vae(FOLDER)
  whole = vae.posterior(expected['videos']), vae.decode(expected['latents'])
  vae.enable_tiling(**{name: int(expected[name]) for name in SIZE_NAMES})
  before = compilations()
  tiled = vae.posterior(expected['videos']), vae.decode(expected['latents'])
  first = compilations()
  vae.posterior(expected['videos']), vae.decode(expected['latents'])
  second = compilations()
  return SimpleNamespace(
    vae=vae,
    expected=expected,
    whole=whole,
    tiled=tiled,
    first_compiles=np.subtract(first, before),
    second_compiles=np.subtract(second, first),
  )


def test_torch_is_not_needed():
  assert 'torch' not in sys.modules


def test_tiled_encode_and_decode_match_diffusers(case):
  posterior, decoded = case.tiled
  assert posterior.mean.shape == case.expected['mean'].shape == (1, 2, 8, 5, 4)
  np.testing.assert_allclose(posterior.mean, case.expected['mean'], rtol=0, atol=ATOL)
  np.testing.assert_allclose(posterior.logvar, case.expected['logvar'], rtol=0, atol=ATOL)
  assert decoded.shape == case.expected['decoded'].shape == (1, 1, 64, 40, 3)
  np.testing.assert_allclose(decoded, case.expected['decoded'], rtol=0, atol=ATOL)


def test_tiled_is_near_untiled(case):
  """Tiles see no context beyond their borders (zero padding inside the frame, and the
  mid block's attention is global), and blending only smooths the seams: on this random
  tiny VAE with 32-pixel tiles the tiled outputs differ from the untiled ones by up to
  0.24 (latent mean), 0.31 (log-variance) and 0.41 (decoded pixels), 0.04 to 0.07 on
  average, as diffusers' own do (tools/make_vae_fixtures.py prints theirs: the same to
  1e-4). The bounds are those figures with a margin: a regression guard, not exactness
  (which test_tiles_rebuild_a_local_function checks). Without the blending the latent
  mean's gap grows to 0.38."""
  (whole, whole_decoded), (tiled, tiled_decoded) = case.whole, case.tiled
  for ours, untiled, max_bound in (
    (tiled.mean, whole.mean, 0.3),
    (tiled.logvar, whole.logvar, 0.4),
    (tiled_decoded, whole_decoded, 0.5),
  ):
    difference = np.abs(np.asarray(ours) - np.asarray(untiled))
    assert difference.mean() < 0.1 and difference.max() < max_bound
    assert difference.max() > 1e-2  # the tiles were really used


def test_tiles_of_one_shape_share_a_compilation(case):
  """12 tiles of 4 shapes: at most one compilation per shape and kind of chunk (encode:
  first and later; decode of one latent frame: first), none on the second call."""
  encodes, decodes = case.first_compiles
  assert 0 <= encodes <= 2 * TILE_SHAPES and 0 <= decodes <= TILE_SHAPES, case.first_compiles
  assert list(case.second_compiles) == [0, 0]


def test_small_inputs_and_disabled_tiling_are_not_tiled(case):
  vae = case.vae
  assert vae.use_tiling and vae.tile_sizes.splits(64, 40) and not vae.tile_sizes.splits(32, 24)
  assert vae.tile_sizes.splits(5, 3, vae.spatial_compression)  # decode: latent 4 x 3 tiles
  assert not vae.tile_sizes.splits(4, 3, vae.spatial_compression)
  vae.disable_tiling()
  try:
    np.testing.assert_array_equal(vae.decode(case.expected['latents']), case.whole[1])
  finally:
    vae.enable_tiling()  # the sizes were kept
  assert vae.tile_sizes == TileSizes(**{name: int(case.expected[name]) for name in SIZE_NAMES})


def pool(tile, compression: int):
  """A stand-in encoder with no context beyond each latent pixel: mean of each block."""
  b, t, h, w, c = tile.shape
  blocks = tile.reshape(b, t, h // compression, compression, w // compression, compression, c)
  return blocks.mean(axis=(3, 5))


def upsample(tile, compression: int):
  """A stand-in decoder with no context: each latent pixel repeated over its block."""
  return jnp.repeat(jnp.repeat(tile, compression, axis=2), compression, axis=3)


@pytest.mark.parametrize(
  'sizes, shape',
  [
    (TileSizes(32, 24, 16, 16), (1, 3, 64, 40, 2)),
    (TileSizes(16, 16, 8, 8), (2, 1, 56, 24, 1)),  # blends of 1 latent pixel, batch 2
    (TileSizes(24, 64, 24, 64), (1, 2, 48, 32, 3)),  # no overlap; one column
    (TileSizes(40, 32, 16, 24), (1, 1, 72, 80, 1)),  # edge tiles of several sizes
  ],
)
def test_tiles_rebuild_a_local_function(sizes, shape):
  """With stand-ins that see no context, tiles and seams must give back the untiled
  output up to rounding: checks the tiles' positions, crops, latent sizes and that the
  blending weights sum to one."""
  compression = 8
  videos = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  latents = pool(videos, compression)
  encoded = tiled_encode(lambda tile: pool(tile, compression), videos, sizes, compression)
  np.testing.assert_allclose(encoded, latents, rtol=0, atol=1e-6)
  decoded = tiled_decode(lambda tile: upsample(tile, compression), latents, sizes, compression)
  np.testing.assert_allclose(decoded, upsample(latents, compression), rtol=0, atol=1e-6)


def test_bad_tile_sizes_raise():
  with pytest.raises(ValueError, match='tile_sample_stride_width=48 is larger than'):
    TileSizes(tile_sample_min_width=32, tile_sample_stride_width=48)
  with pytest.raises(ValueError, match='tile_sample_min_height must be a positive integer'):
    TileSizes(tile_sample_min_height=0)
  with pytest.raises(ValueError, match='must be a positive integer'):
    TileSizes(tile_sample_stride_height=16.0)
  vae = nnx.eval_shape(lambda: WanVAE(VAEConfig(), rngs=nnx.Rngs(0)))
  assert vae.spatial_compression == 8 and not vae.use_tiling
  with pytest.raises(ValueError, match='tile_sample_stride_height=20 is not a multiple of the'):
    vae.enable_tiling(tile_sample_stride_height=20)
  with pytest.raises(ValueError, match='larger than'):
    vae.enable_tiling(tile_sample_min_height=128)  # the default stride 192 is larger
  assert not vae.use_tiling and vae.tile_sizes == TileSizes()  # left as they were
  vae.enable_tiling(128, 128, 96, 96)
  assert vae.use_tiling and vae.tile_sizes == TileSizes(128, 128, 96, 96)
