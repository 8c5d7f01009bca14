"""Data + FSDP sharding: the rule, mesh errors, and 8 fake devices in a subprocess."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from video_diffusion.parallel import sharding


def test_the_largest_divisible_dimension_is_split_over_fsdp():
  assert sharding.param_spec((3, 3, 8, 16), 4) == P(None, None, None, 'fsdp')
  assert sharding.param_spec((64, 6), 2) == P('fsdp')
  assert sharding.param_spec((6, 9), 4) == P()  # nothing divisible: replicated
  assert sharding.param_spec((), 2) == P()  # scalars (Adam's count)
  assert sharding.param_spec((64, 32), 1) == P()  # no fsdp axis


def test_mesh_sizes_must_fit_the_devices():
  assert sharding.mesh_shape(8, -1, 2) == (4, 2)
  assert sharding.mesh_shape(8, 2, 4) == (2, 4)
  with pytest.raises(
    sharding.MeshError,
    match=r'fsdp axis \(3\) must divide the 8 devices; '
    r'use one of \[1, 2, 4, 8\]',
  ):
    sharding.mesh_shape(8, -1, 3)
  with pytest.raises(sharding.MeshError, match='data x fsdp = 3 x 2 = 6 but there are 8'):
    sharding.mesh_shape(8, 3, 2)


def test_a_batch_that_does_not_split_is_refused():
  mesh = AbstractMesh((2, 2), (sharding.DATA, sharding.FSDP))  # 4 devices, none needed
  sharding.check_batch(12, mesh)
  with pytest.raises(
    sharding.MeshError, match='6 videos does not split over the 4 devices.*multiple of 4'
  ):
    sharding.check_batch(6, mesh)


def run_worker(model):
  proc = subprocess.run(
    [sys.executable, str(ROOT / 'tests' / 'parallel' / 'multidevice_worker.py'), model],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def eight_devices():
  return run_worker('unet3d')


@pytest.fixture(scope='module')
def eight_devices_dit():
  return run_worker('dit')


@pytest.mark.slow
@pytest.mark.parametrize('model, mesh', [('unet3d', '4x2'), ('dit', '8x1'), ('dit', '4x2')])
def test_one_step_on_a_mesh_equals_one_device(request, model, mesh):
  """Same loss and updated params as one device, up to float32 reduction order:
  loss within 1e-6 relative, params and EMA within 1e-5 of the update's size.
  The DiT (flow matching) follows the same fsdp rule as the Unet3D."""
  eight_devices = request.getfixturevalue(
    'eight_devices_dit' if model == 'dit' else 'eight_devices'
  )
  r = eight_devices['meshes'][mesh]
  scale = eight_devices['grad_scale']
  assert r['loss_diff'] <= 1e-6 * eight_devices['loss']
  assert r['params_diff'] <= 1e-5 * scale and r['ema_diff'] <= 1e-5 * scale
  assert r['devices_of_a_param'] == 8
  fsdp = int(mesh.split('x')[1])
  if fsdp == 1:
    assert r['fsdp_leaves'] == 0
  else:  # every param with a dimension divisible by fsdp is split: one shard is 1/fsdp of it
    assert r['fsdp_leaves'] >= 0.9 * r['leaves']
    assert r['shard_fraction'] == [1 / fsdp] * 3


@pytest.mark.slow
@pytest.mark.parametrize(
  'direction, devices, fsdp_leaves', [('4x2->1', 1, False), ('1->4x2', 8, True)]
)
def test_checkpoints_restore_on_another_mesh(eight_devices, direction, devices, fsdp_leaves):
  r = eight_devices['checkpoint'][direction]
  assert r['diff'] == 0.0
  assert r['devices'] == devices
  assert (r['fsdp_leaves'] > 0) == fsdp_leaves


@pytest.mark.slow
@pytest.mark.parametrize('model, mesh', [('unet3d', '4x2'), ('dit', '8x1'), ('dit', '4x2')])
def test_sampling_is_split_over_the_devices(request, model, mesh):
  """Same videos as one device (float32 reduction order: within 1e-4), and each
  device holds about an eighth of the sampler's scratch memory."""
  eight_devices = request.getfixturevalue(
    'eight_devices_dit' if model == 'dit' else 'eight_devices'
  )
  r = eight_devices['sampling']
  assert r['shape'] == [8, 3, 8, 8, 1] and r['std'] > 0.05
  assert r[mesh]['diff'] < 1e-4
  assert r[mesh]['temp'] < 0.4 * r['ref_temp']


@pytest.mark.slow
def test_a_sampling_batch_that_does_not_split_is_padded(eight_devices_dit):
  r = eight_devices_dit['sampling']['3_on_8']
  assert r['shape'] == [3, 3, 8, 8, 1] and r['padded'] == 8
  assert r['diff'] < 1e-4
