"""Import of video-diffusion-pytorch 0.7.0 weights and Trainer checkpoints, without torch.

The reference's state-dict keys map one to one onto this package's Unet3D
parameters; `reference_key_map` lists the pairs and how each array is laid out.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from video_diffusion.models.unet import Unet3D

# How a reference (channels-first, torch layout) array becomes ours.
LAYOUTS = {
  'linear': lambda w: w.T,  # (out, in) -> (in, out)
  'conv': lambda w: w.reshape(w.shape[:2] + w.shape[-2:]).transpose(2, 3, 1, 0),
  'conv1x1': lambda w: w.reshape(w.shape[:2]).T,  # (out, in, 1..) -> (in, out)
  'conv_transpose': lambda w: w[:, :, 0].transpose(2, 3, 0, 1),  # (in, out, 1, k, k)
  'vector': lambda w: w.reshape(-1),  # gammas, biases
  'same': lambda w: w,
}

IGNORED_SUFFIXES = ('rotary_emb.freqs',)  # constants, recomputed from attn_dim_head


class CheckpointMismatchError(ValueError):
  """A reference state dict that does not fit the configured model."""


def _linear(tk, path, bias=True, layout='linear'):
  yield f'{tk}.weight', path + ('kernel',), layout
  if bias:
    yield f'{tk}.bias', path + ('bias',), 'vector'


def _conv(tk, path):
  yield f'{tk}.weight', path + ('conv', 'kernel'), 'conv'
  yield f'{tk}.bias', path + ('conv', 'bias'), 'vector'


def _resnet(tk, path, block):
  if block.mlp is not None:
    yield from _linear(f'{tk}.mlp.1', path + ('mlp',))
  for name in ('block1', 'block2'):
    yield from _conv(f'{tk}.{name}.proj', path + (name, 'proj'))
    yield f'{tk}.{name}.norm.gamma', path + (name, 'norm', 'gamma'), 'vector'
  if block.res_conv is not None:
    yield from _linear(f'{tk}.res_conv', path + ('res_conv',), layout='conv1x1')


def _attention(tk, path):
  """Residual(PreNorm(EinopsToAndFrom(Attention))) -> PreNormResidual(*Attention)."""
  yield f'{tk}.fn.norm.gamma', path + ('norm', 'gamma'), 'vector'
  yield from _linear(f'{tk}.fn.fn.fn.to_qkv', path + ('fn', 'attn', 'to_qkv'), bias=False)
  yield from _linear(f'{tk}.fn.fn.fn.to_out', path + ('fn', 'attn', 'to_out'), bias=False)


def _linear_attention(tk, path):
  yield f'{tk}.fn.norm.gamma', path + ('norm', 'gamma'), 'vector'
  yield from _linear(f'{tk}.fn.fn.to_qkv', path + ('fn', 'to_qkv'), bias=False, layout='conv1x1')
  yield from _linear(f'{tk}.fn.fn.to_out', path + ('fn', 'to_out'), layout='conv1x1')


def reference_key_map(model: Unet3D) -> Iterator[tuple[str, tuple, str]]:
  """Yields (reference key, our parameter path, layout) for every parameter."""
  yield (
    'time_rel_pos_bias.relative_attention_bias.weight',
    ('time_rel_pos_bias', 'embedding'),
    'same',
  )
  yield from _conv('init_conv', ('init_conv',))
  yield from _attention('init_temporal_attn', ('init_temporal_attn',))
  yield from _linear('time_mlp.1', ('time_mlp1',))
  yield from _linear('time_mlp.3', ('time_mlp2',))
  if model.has_cond:
    yield 'null_cond_emb', ('null_cond_emb',), 'vector'
  for direction in ('downs', 'ups'):
    for i, level in enumerate(getattr(model, direction)):
      tk, path = f'{direction}.{i}', (direction, i)
      yield from _resnet(f'{tk}.0', path + ('block1',), level.block1)
      yield from _resnet(f'{tk}.1', path + ('block2',), level.block2)
      if level.spatial_attn is not None:
        yield from _linear_attention(f'{tk}.2', path + ('spatial_attn',))
      yield from _attention(f'{tk}.3', path + ('temporal_attn',))
      if level.resample is None:
        continue
      if direction == 'downs':
        yield from _conv(f'{tk}.4', path + ('resample',))
      else:
        yield f'{tk}.4.weight', path + ('resample', 'kernel'), 'conv_transpose'
        yield f'{tk}.4.bias', path + ('resample', 'bias'), 'vector'
  yield from _resnet('mid_block1', ('mid_block1',), model.mid_block1)
  yield from _attention('mid_spatial_attn', ('mid_spatial_attn',))
  yield from _attention('mid_temporal_attn', ('mid_temporal_attn',))
  yield from _resnet('mid_block2', ('mid_block2',), model.mid_block2)
  yield from _resnet('final_conv.0', ('final_block',), model.final_block)
  yield from _linear('final_conv.1', ('final_conv',), layout='conv1x1')


def _to_our_layout(array: np.ndarray, layout: str) -> np.ndarray | None:
  """The array in our layout, or None if its rank does not fit the layout."""
  expected_ndim = {'linear': 2, 'conv': 5, 'conv_transpose': 5, 'same': 2}.get(layout)
  if expected_ndim is not None and array.ndim != expected_ndim:
    return None
  if layout in ('conv', 'conv_transpose') and array.shape[2] != 1:
    return None  # only (1, k, k) kernels exist in the reference
  if layout == 'conv1x1' and (array.ndim < 2 or any(d != 1 for d in array.shape[2:])):
    return None
  return LAYOUTS[layout](array)


def _strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Keeps the denoiser's entries of a GaussianDiffusion state dict, unprefixed."""
  prefix = 'denoise_fn.'
  if any(k.startswith(prefix) for k in state_dict):
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
  return dict(state_dict)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model: Unet3D) -> nnx.State:
  """Turns a reference Unet3D (or GaussianDiffusion) state dict into our Param state.

  Raises CheckpointMismatchError naming the first missing, unexpected or
  mis-shaped parameter.
  """
  source = _strip_prefix(state_dict)
  params = nnx.state(model, nnx.Param)
  flat = dict(nnx.to_flat_state(params))
  used = set()
  for key, path, layout in reference_key_map(model):
    if key not in source:
      raise CheckpointMismatchError(
        f'reference state dict has no {key!r} (needed for {"/".join(map(str, path))}); '
        'is the config the one the checkpoint was trained with?'
      )
    array = _to_our_layout(np.asarray(source[key], np.float32), layout)
    target = flat[path]
    if array is None or array.shape != target.get_value().shape:
      ours = tuple(target.get_value().shape)
      raise CheckpointMismatchError(
        f'parameter {key!r} has shape {tuple(np.shape(source[key]))} in the checkpoint, '
        f'which does not fit {"/".join(map(str, path))} of shape {ours} in the configured '
        f'model ({layout} layout); check unet dim, dim_mults, channels, cond_dim, '
        'attn_heads and attn_dim_head.'
      )
    flat[path] = target.replace(value=np.asarray(array))
    used.add(key)
  unexpected = sorted(k for k in source if k not in used and not k.endswith(IGNORED_SUFFIXES))
  if unexpected:
    raise CheckpointMismatchError(
      f'checkpoint has parameters the configured model lacks, first {unexpected[0]!r} '
      f'({len(unexpected)} in all); check the unet config.'
    )
  return nnx.from_flat_state(flat)


@dataclasses.dataclass
class ConvertedCheckpoint:
  """Our Param states for the model and EMA weights of a reference Trainer checkpoint."""

  step: int
  params: nnx.State
  ema_params: nnx.State


def convert_reference_checkpoint(path: str | pathlib.Path, model: Unet3D) -> ConvertedCheckpoint:
  """Reads a reference `model-N.pt` (no torch needed) and converts model and EMA weights."""
  from video_diffusion.interop.torch_pickle import load_torch_file

  data = load_torch_file(path)
  if not isinstance(data, dict) or not {'model', 'ema'} <= set(data):
    found = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise CheckpointMismatchError(
      f'{path} is not a video-diffusion-pytorch Trainer checkpoint '
      f'(found {found}); expected keys step, model, ema, scaler.'
    )
  return ConvertedCheckpoint(
    step=int(data.get('step', 0)),
    params=convert_state_dict(data['model'], model),
    ema_params=convert_state_dict(data['ema'], model),
  )


def unet_from_state_dict(state_dict: Mapping[str, np.ndarray], **unet_kwargs) -> Unet3D:
  """A Unet3D built with `unet_kwargs` holding the reference weights of `state_dict`.

  The model is created abstractly (no random initialisation), then filled.
  """
  model = nnx.eval_shape(lambda: Unet3D(**unet_kwargs, rngs=nnx.Rngs(0)))
  nnx.update(model, convert_state_dict(state_dict, model))
  return model


def save_converted(converted: ConvertedCheckpoint, directory: str | pathlib.Path) -> pathlib.Path:
  """Writes step, params and EMA params as an orbax checkpoint in `directory`."""
  import orbax.checkpoint as ocp

  directory = pathlib.Path(directory).absolute()
  tree = {
    'step': converted.step,
    'params': nnx.to_pure_dict(converted.params),
    'ema_params': nnx.to_pure_dict(converted.ema_params),
  }
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, tree)
  return directory


def load_converted(directory: str | pathlib.Path, model: Unet3D) -> ConvertedCheckpoint:
  """Reads a checkpoint written by `save_converted` into Param states shaped like `model`."""
  import orbax.checkpoint as ocp

  params = nnx.state(model, nnx.Param)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(params))
  target = {'step': 0, 'params': abstract, 'ema_params': abstract}
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(pathlib.Path(directory).absolute(), target)
  states = []
  for name in ('params', 'ema_params'):
    state = jax.tree.map(lambda leaf: leaf, params)
    nnx.replace_by_pure_dict(state, tree[name])
    states.append(state)
  return ConvertedCheckpoint(int(tree['step']), *states)
