"""Loading WanVAE weights: diffusers' AutoencoderKLWan folders (without torch)
and the checkpoint folders of train-vae.

A train-vae checkpoint folder (orbax, checkpointing.Checkpointer) holds its
run's config, whose `vae` section builds the model, and its params and EMA
params. A diffusers folder holds config.json and diffusion_pytorch_model.safetensors
(or its sharded form with an .index.json); the safetensors are read as numpy.
diffusers' state-dict names are our parameter paths joined by dots, with two
differences: a Resample's conv ('resample') is diffusers' `resample.1` (the conv
of an nn.Sequential after the nn.Upsample / nn.ZeroPad2d), and torch's `weight`
is our `kernel`. Layouts change only here: kernels (out, in, *k) -> (*k, in, out),
norm gains (dim, 1, 1[, 1]) -> (dim,).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.config import Config, config_of_checkpoint
from video_diffusion.config.vae import MODEL_KIND
from video_diffusion.vae.config import VAEConfig
from video_diffusion.vae.layers import CausalConv3d, Conv2d, RMSNorm
from video_diffusion.vae.wan import WanVAE

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'diffusion_pytorch_model.safetensors'
INDEX_NAME = f'{WEIGHTS_NAME}.index.json'
_LISTED = 20  # names listed per kind of mismatch


class VAEWeightsMismatchError(ValueError):
  """A state dict whose names or shapes do not fit the configured WanVAE."""


def torch_name(path: tuple) -> str:
  """Our module path -> diffusers' module name."""
  return '.'.join('resample.1' if p == 'resample' else str(p) for p in path)


def diffusers_key_map(model: WanVAE) -> dict[str, tuple[tuple, tuple[int, ...]]]:
  """diffusers' state-dict name -> (our parameter path, the tensor's torch shape),
  for every parameter of `model` (which may be abstract, from nnx.eval_shape)."""
  keys = {}
  for path, module in nnx.iter_modules(model):
    name = torch_name(path)
    if isinstance(module, (CausalConv3d, Conv2d)):
      kernel = tuple(module.kernel.shape)  # (*k, in, out)
      keys[f'{name}.weight'] = (path + ('kernel',), (kernel[-1], kernel[-2]) + kernel[:-2])
      keys[f'{name}.bias'] = (path + ('bias',), tuple(module.bias.shape))
    elif isinstance(module, RMSNorm):
      ones = (1,) * (2 if module.images else 3)
      keys[f'{name}.gamma'] = (path + ('gamma',), tuple(module.gamma.shape) + ones)
  return keys


def to_our_layout(array: np.ndarray, path: tuple) -> np.ndarray:
  """A torch-layout tensor as our parameter at `path`, float32."""
  array = np.asarray(array, np.float32)
  if path[-1] == 'kernel':
    return array.transpose(tuple(range(2, array.ndim)) + (1, 0))
  return array.reshape(-1) if path[-1] == 'gamma' else array


def _listing(title: str, names: list[str]) -> str:
  more = f' (and {len(names) - _LISTED} more)' if len(names) > _LISTED else ''
  return f'{len(names)} {title}: {", ".join(names[:_LISTED])}{more}'


def check_state_dict(tensors: Mapping[str, np.ndarray], model: WanVAE) -> None:
  """Raises VAEWeightsMismatchError listing missing, unexpected and mis-shaped tensors."""
  keys = diffusers_key_map(model)
  missing = sorted(set(keys) - set(tensors))
  unexpected = sorted(set(tensors) - set(keys))
  misshaped = [
    f'{name} {tuple(np.shape(tensors[name]))} (expected {keys[name][1]})'
    for name in sorted(set(keys) & set(tensors))
    if tuple(np.shape(tensors[name])) != keys[name][1]
  ]
  problems = [
    _listing(title, names)
    for title, names in (
      ('missing', missing),
      ('unexpected', unexpected),
      ('with another shape', misshaped),
    )
    if names
  ]
  if problems:
    raise VAEWeightsMismatchError(
      'the weights do not fit the AutoencoderKLWan of config.json: ' + '; '.join(problems)
    )


def convert_state_dict(tensors: Mapping[str, np.ndarray], model: WanVAE) -> nnx.State:
  """diffusers' state dict (numpy, torch layout) -> our Param state for `model`."""
  check_state_dict(tensors, model)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  keys = diffusers_key_map(model)
  unmapped = sorted('/'.join(map(str, p)) for p in set(flat) - {p for p, _ in keys.values()})
  if unmapped:  # a layer the key map does not know: a bug here, not in the file
    raise RuntimeError(f'WanVAE parameters without a diffusers name: {unmapped}')
  for name, (path, _) in keys.items():
    flat[path] = flat[path].replace(value=jnp.asarray(to_our_layout(tensors[name], path)))
  return nnx.from_flat_state(flat)


def is_diffusers_folder(folder: pathlib.Path) -> bool:
  """config.json and the safetensors weights (one file or an index of shards)."""
  weights = (folder / WEIGHTS_NAME).is_file() or (folder / INDEX_NAME).is_file()
  return (folder / CONFIG_NAME).is_file() and weights


def _load_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """One safetensors file as numpy arrays; bfloat16 ones (which safetensors.numpy
  cannot read) through safetensors.flax, as ml_dtypes bfloat16 arrays."""
  from safetensors import flax, numpy

  try:
    return numpy.load_file(path)
  except TypeError:  # data type 'bfloat16' not understood
    return {name: np.asarray(array) for name, array in flax.load_file(path).items()}


def read_safetensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """The folder's tensors as numpy arrays (no torch), from one file or from shards."""
  if (folder / WEIGHTS_NAME).is_file():
    return _load_file(folder / WEIGHTS_NAME)
  shards = sorted(set(json.loads((folder / INDEX_NAME).read_text())['weight_map'].values()))
  tensors = {}
  for shard in shards:
    tensors.update(_load_file(folder / shard))
  return tensors


def load_diffusers_vae(folder: str | pathlib.Path) -> WanVAE:
  """A WanVAE holding the weights of a diffusers AutoencoderKLWan folder."""
  folder = pathlib.Path(folder)
  config = VAEConfig.from_json(folder / CONFIG_NAME)
  model = nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0)))
  nnx.update(model, convert_state_dict(read_safetensors(folder), model))
  return model


def _checkpoint_folder(folder: pathlib.Path, step: int | None) -> tuple[pathlib.Path, int | None]:
  """(checkpoint folder, step): a step folder `DIR/N` is DIR at step N, and a
  results folder with a `checkpoints/` inside is that one."""
  if folder.name.isdigit() and (folder / 'config').is_dir():
    return folder.parent, int(folder.name) if step is None else step
  if (folder / 'checkpoints').is_dir():
    return folder / 'checkpoints', step
  return folder, step


def load_training_checkpoint(
  path: str | pathlib.Path, *, step: int | None = None, ema: bool = False
) -> tuple[WanVAE, Config, int]:
  """(the WanVAE, its run's Config, the step) of a train-vae checkpoint folder
  (or one of its step folders, or the run's results folder): step None = the
  newest; ema = the EMA weights instead of the raw ones."""
  from video_diffusion.checkpointing.checkpointer import Checkpointer
  from video_diffusion.vae.training import split_vae

  folder, step = _checkpoint_folder(pathlib.Path(path), step)
  with Checkpointer(str(folder), read_only=True) as ckpt:
    if not ckpt.steps():
      found = sorted(p.name for p in folder.iterdir())[:_LISTED]
      raise ValueError(
        f'{folder} is not a diffusers AutoencoderKLWan folder ({CONFIG_NAME} and '
        f'{WEIGHTS_NAME}) nor a train-vae checkpoint folder (numbered step folders); '
        f'found {found}'
      )
    step = ckpt.resolve_step(step)
    saved = ckpt.restore_config(step)
    if saved.get(MODEL_KIND) != 'vae':
      raise ValueError(
        f'{folder} holds the checkpoints of a diffusion model (video-diffusion train), '
        'not of a video autoencoder (video-diffusion train-vae)'
      )
    cfg = config_of_checkpoint(saved, f'{folder}/{step}/config')
    graphdef, target, rest = split_vae(cfg.vae, 0, abstract=True)
    params = ckpt.restore_params(step, target, ema=ema)
  return nnx.merge(graphdef, params, rest), cfg, step


def load_vae(path: str | pathlib.Path, *, step: int | None = None, ema: bool = False) -> WanVAE:
  """The WanVAE of a diffusers AutoencoderKLWan folder, or of a diffusers pipeline
  folder's `vae/`, or of a train-vae checkpoint folder (`step`: None = the
  newest; `ema`: its EMA weights; both only for these)."""
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise FileNotFoundError(f'{folder} is not a folder (a diffusers AutoencoderKLWan folder)')
  if not is_diffusers_folder(folder) and is_diffusers_folder(folder / 'vae'):
    folder = folder / 'vae'
  if is_diffusers_folder(folder):
    return load_diffusers_vae(folder)
  return load_training_checkpoint(folder, step=step, ema=ema)[0]
