"""Writes the Wan 2.1 VAE parity fixtures of tests/vae from diffusers' AutoencoderKLWan.

Optional tool, never needed by the package or its tests. It runs in a separate
virtual environment with torch (the CPU wheel) and diffusers:

  python3.11 -m venv .venv-fixtures
  .venv-fixtures/bin/pip install torch==2.13.0
  .venv-fixtures/bin/pip install diffusers==0.42.1 safetensors==0.8.0 numpy
  .venv-fixtures/bin/python tools/make_vae_fixtures.py

For each small config of CONFIGS it builds AutoencoderKLWan, adds noise to every
parameter (so that each one changes the outputs), encodes a random video and
decodes random latents, and writes tests/fixtures/vae/<name>/: config.json and
diffusion_pytorch_model.safetensors (save_pretrained) and expected.npz (inputs
and outputs, channels-last). For the configs of TILED it also encodes a larger
video and decodes one latent frame (each shape compiled costs the tests seconds)
with diffusers' spatial tiling (enable_tiling with small tiles), and writes those
inputs, outputs and tile sizes to <name>/tiled.npz. It also writes the (name,
shape) list of the full Wan 2.1 VAE's state dict (diffusers' defaults are that
config) and the config.
"""

from __future__ import annotations

import json
import pathlib

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders import autoencoder_kl_wan

OUT = pathlib.Path(__file__).resolve().parent.parent / 'tests' / 'fixtures' / 'vae'

# name -> (AutoencoderKLWan kwargs, video shape (b, c, f, h, w)).
CONFIGS = {
  # Wan 2.1's layout scaled down: 8x spatial, 4x temporal ([False, True, True]).
  'wan_like': (
    dict(
      base_dim=5,
      z_dim=4,
      dim_mult=[1, 2, 4, 4],
      num_res_blocks=2,
      attn_scales=[],
      temperal_downsample=[False, True, True],
      latents_mean=[0.1, -0.2, 0.3, -0.4],
      latents_std=[1.5, 0.5, 2.0, 1.0],
    ),
    (1, 3, 9, 32, 32),
  ),
  # One temporal downsampling (first level), attention in the encoder's second
  # level, a decoder narrower than the encoder, batch 2.
  'attn_one_temporal': (
    dict(
      base_dim=12,
      decoder_base_dim=8,
      z_dim=4,
      dim_mult=[1, 2, 2],
      num_res_blocks=1,
      attn_scales=[0.5],
      temperal_downsample=[True, False],
    ),
    (2, 3, 9, 16, 16),
  ),
}

# name -> (enable_tiling kwargs, video shape (b, c, f, h, w)): several tiles and seams
# each way, heights and widths tiled differently, blends of 2 and 1 latent pixels.
TILED = {
  'wan_like': (
    dict(
      tile_sample_min_height=32,
      tile_sample_min_width=24,
      tile_sample_stride_height=16,
      tile_sample_stride_width=16,
    ),
    (1, 3, 5, 64, 40),
  )
}


def allow_encoder_attention():
  """diffusers 0.42.1's encoder calls every down block with feat_cache/feat_idx, which
  WanAttentionBlock.forward does not take (TypeError whenever attn_scales selects a
  level). The attention uses no cache: accept the arguments and ignore them."""
  forward = autoencoder_kl_wan.WanAttentionBlock.forward

  def forward_ignoring_cache(self, x, feat_cache=None, feat_idx=None):
    return forward(self, x)

  autoencoder_kl_wan.WanAttentionBlock.forward = forward_ignoring_cache


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
  """Noise on every parameter: weights by half their spread, norm gains and biases
  absolutely, so no parameter keeps the value that would hide a mapping mistake."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name.endswith('gamma'):
        param.add_(0.2 * noise)
      elif name.endswith('bias'):
        param.add_(0.1 * noise)
      else:
        param.add_(0.5 * param.std() * noise)


def channels_last(x: torch.Tensor) -> np.ndarray:
  """(b, c, f, h, w) -> (b, f, h, w, c) float32."""
  return x.permute(0, 2, 3, 4, 1).contiguous().numpy().astype(np.float32)


def write_config(name: str, kwargs: dict, shape: tuple, seed: int) -> None:
  generator = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  model = AutoencoderKLWan(**kwargs).eval()
  perturb(model, generator)
  videos = torch.rand(shape, generator=generator) * 2 - 1
  with torch.no_grad():
    posterior = model.encode(videos).latent_dist
    latents = torch.randn(posterior.mean.shape, generator=generator)
    decoded = model.decode(latents).sample
  folder = OUT / name
  model.save_pretrained(folder, safe_serialization=True)
  np.savez_compressed(
    folder / 'expected.npz',
    videos=channels_last(videos),
    mean=channels_last(posterior.mean),
    logvar=channels_last(posterior.logvar),
    latents=channels_last(latents),
    decoded=channels_last(decoded),
  )
  saturated = float((decoded.abs() >= 1).float().mean())
  print(
    f'{name}: latents {tuple(posterior.mean.shape)}, decoded {tuple(decoded.shape)}, '
    f'|mean| max {posterior.mean.abs().max():.3f}, logvar range '
    f'[{posterior.logvar.min():.3f}, {posterior.logvar.max():.3f}], decoded at +-1: {saturated:.1%}'
  )
  if name in TILED:
    write_tiled(model, folder, *TILED[name], seed)


def write_tiled(model, folder: pathlib.Path, tiles: dict, shape: tuple, seed: int) -> None:
  """diffusers' tiled encode of a random video and decode of one random latent frame ->
  folder/tiled.npz, with the tile sizes; prints how far each is from the untiled output."""
  generator = torch.Generator().manual_seed(1000 + seed)
  videos = torch.rand(shape, generator=generator) * 2 - 1
  with torch.no_grad():
    model.disable_tiling()
    whole = model.encode(videos).latent_dist
    latents = torch.randn(whole.mean[:, :, :1].shape, generator=generator)
    whole_decoded = model.decode(latents).sample
    model.enable_tiling(**tiles)
    posterior = model.encode(videos).latent_dist
    decoded = model.decode(latents).sample
    model.disable_tiling()
  np.savez_compressed(
    folder / 'tiled.npz',
    videos=channels_last(videos),
    mean=channels_last(posterior.mean),
    logvar=channels_last(posterior.logvar),
    latents=channels_last(latents),
    decoded=channels_last(decoded),
    **{key: np.int64(value) for key, value in tiles.items()},
  )
  print(
    f'{folder.name} tiled {tiles}: video {shape}, tiled - untiled max |diff|: mean '
    f'{(posterior.mean - whole.mean).abs().max():.4f}, logvar '
    f'{(posterior.logvar - whole.logvar).abs().max():.4f}, decoded '
    f'{(decoded - whole_decoded).abs().max():.4f}'
  )


def write_wan21_keys() -> None:
  """The full Wan 2.1 VAE (diffusers' defaults), built on the meta device: names, shapes, config."""
  with torch.device('meta'):
    model = AutoencoderKLWan()
  keys = sorted([name, list(t.shape)] for name, t in model.state_dict().items())
  lines = ',\n'.join(json.dumps(key) for key in keys)  # one tensor a line
  (OUT / 'wan21_state_dict_keys.json').write_text(f'[\n{lines}\n]\n')
  config = json.loads(model.to_json_string())
  config.pop('_use_default_values', None)
  (OUT / 'wan21_config.json').write_text(json.dumps(config, indent=2) + '\n')
  print(f'wan21: {len(keys)} tensors, {sum(int(np.prod(s)) for _, s in keys):,} parameters')


def main() -> None:
  assert diffusers.__version__ == '0.42.1', diffusers.__version__
  torch.set_num_threads(2)
  allow_encoder_attention()
  OUT.mkdir(parents=True, exist_ok=True)
  for seed, (name, (kwargs, shape)) in enumerate(CONFIGS.items()):
    write_config(name, kwargs, shape, seed)
  write_wan21_keys()
  for path in sorted(OUT.rglob('*')):
    if path.is_file():
      print(f'{path.relative_to(OUT)}: {path.stat().st_size / 1e3:.1f} kB')


if __name__ == '__main__':
  main()
