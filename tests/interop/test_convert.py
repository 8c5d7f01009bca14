"""Import of reference Trainer checkpoints (model-N.pt) without torch."""

import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, to_channels_last
from flax import nnx

from video_diffusion import Unet3D
from video_diffusion.interop.convert import (
  CheckpointMismatchError,
  convert_reference_checkpoint,
  convert_state_dict,
)
from video_diffusion.interop.torch_pickle import load_torch_file

pytestmark = pytest.mark.optimized  # compiled as users' runs are (tests/conftest.py)

CHECKPOINT = FIXTURES / 'reference_checkpoint.pt'


@pytest.fixture(scope='session')
def checkpoint_spec(golden):
  return json.loads(str(golden['checkpoint/spec']))


def abstract_unet(**kwargs):
  return nnx.eval_shape(lambda: Unet3D(**kwargs, rngs=nnx.Rngs(0)))


def test_torch_is_not_needed():
  assert 'torch' not in sys.modules


def test_model_and_ema_weights_reproduce_reference_outputs(golden, checkpoint_spec):
  model = abstract_unet(**checkpoint_spec['unet'])
  converted = convert_reference_checkpoint(CHECKPOINT, model)
  assert converted.step == checkpoint_spec['step']
  x = jnp.asarray(to_channels_last(golden['checkpoint/x']))
  t = jnp.asarray(golden['checkpoint/t'])
  forward = nnx.jit(lambda m, x, t: m(x, t))
  for params, expected in (
    (converted.params, 'checkpoint/out_model'),
    (converted.ema_params, 'checkpoint/out_ema'),
  ):
    nnx.update(model, params)
    np.testing.assert_allclose(
      np.asarray(forward(model, x, t)), to_channels_last(golden[expected]), rtol=0, atol=1e-4
    )


def test_every_parameter_is_filled_from_the_checkpoint(checkpoint_spec):
  raw = load_torch_file(CHECKPOINT)
  model = abstract_unet(**checkpoint_spec['unet'])
  converted = convert_state_dict(raw['model'], model)
  ours = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(converted))
  reference = sum(
    v.size
    for k, v in raw['model'].items()
    if k.startswith('denoise_fn.') and not k.endswith('rotary_emb.freqs')
  )
  assert ours == reference
  conv = raw['model']['denoise_fn.init_conv.weight']  # (out, in, 1, k, k)
  np.testing.assert_array_equal(
    converted['init_conv']['conv']['kernel'].get_value()[:, :, 0, 1], conv[1, 0, 0]
  )


def test_shape_mismatch_names_parameter_and_shapes(checkpoint_spec):
  wrong = dict(checkpoint_spec['unet'], dim=8)
  raw = load_torch_file(CHECKPOINT)
  with pytest.raises(CheckpointMismatchError) as error:
    convert_state_dict(raw['model'], abstract_unet(**wrong))
  message = str(error.value)
  assert "'time_rel_pos_bias.relative_attention_bias.weight'" not in message
  assert "'init_conv.weight'" in message
  assert '(4, 1, 1, 7, 7)' in message and '(7, 7, 1, 8)' in message


def test_missing_and_unexpected_parameters_are_named(checkpoint_spec):
  raw = load_torch_file(CHECKPOINT)['model']
  model = abstract_unet(**checkpoint_spec['unet'])
  incomplete = {k: v for k, v in raw.items() if k != 'denoise_fn.mid_block2.block1.norm.gamma'}
  with pytest.raises(CheckpointMismatchError, match='mid_block2.block1.norm.gamma'):
    convert_state_dict(incomplete, model)
  with pytest.raises(CheckpointMismatchError, match='null_cond_emb'):
    convert_state_dict(dict(raw, **{'denoise_fn.null_cond_emb': np.zeros((1, 4))}), model)


def test_checkpoint_of_another_model_is_a_clear_error():
  with pytest.raises(CheckpointMismatchError, match="has no 'time_rel_pos_bias"):
    convert_reference_checkpoint(FIXTURES / 'torch_pickle_sample.pt', abstract_unet(dim=4))


def test_converted_checkpoint_round_trips_through_orbax(tmp_path, checkpoint_spec):
  from video_diffusion.interop.convert import load_converted, save_converted

  model = abstract_unet(**checkpoint_spec['unet'])
  converted = convert_reference_checkpoint(CHECKPOINT, model)
  save_converted(converted, tmp_path / 'converted')
  restored = load_converted(tmp_path / 'converted', model)
  assert restored.step == converted.step
  for ours, theirs in (
    (restored.params, converted.params),
    (restored.ema_params, converted.ema_params),
  ):
    for (path, a), (_, b) in zip(nnx.to_flat_state(ours), nnx.to_flat_state(theirs)):
      np.testing.assert_array_equal(
        np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path)
      )
