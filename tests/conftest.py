"""Shared fixtures: golden outputs of video-diffusion-pytorch 0.7.0."""

import atexit
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

from video_diffusion.runtime.xla_options import configure_cpu  # JAX-free import

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
ROOT = FIXTURES.parent.parent

# One XLA compilation cache for the whole session, in-process, in the CLI
# subprocesses and in every test worker: the same model compiled twice is then
# loaded, not rebuilt.
# Set before JAX is imported (it reads these at import).
# pytest-xdist's workers inherit the variable from the controller, so they share it.
if 'VIDEO_DIFFUSION_TEST_CACHE' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='xla-cache-')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['VIDEO_DIFFUSION_TEST_CACHE'] = _CACHE
os.environ['JAX_COMPILATION_CACHE_DIR'] = os.environ['VIDEO_DIFFUSION_TEST_CACHE']
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
# End-to-end tests compile many small programs whose results do not hang on XLA's
# optimisation passes: without them they compile in about 40% less time (also in
# the subprocesses, which inherit the variable). Files marked `optimized` (parity
# with the reference, bf16 precision, optimised HLO, and the I3D network, whose
# unoptimised forward pass costs more than its compile saves) compile as users' runs do.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
# XLA's older CPU fusion emitters: a tiny DiT's train step compiles in a third of
# the time, the tiny Unet3D's in about 85%; tests compare within tolerances that
# the choice of emitter does not reach. Then the CLI's XLA options; both here
# and (through XLA_FLAGS) in the subprocesses.
if '--xla_cpu_use_fusion_emitters' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --xla_cpu_use_fusion_emitters=false'
configure_cpu()


@pytest.fixture(scope='module', autouse=True)
def optimised_compiles(request):
  """XLA's optimisation passes on for the module of a test marked `optimized`
  (autouse, so it is set up before the module's other fixtures compile)."""
  import jax

  if request.node.get_closest_marker('optimized') is None:
    yield
    return
  before = jax.config.values['jax_disable_most_optimizations']
  variable = os.environ.get('JAX_DISABLE_MOST_OPTIMIZATIONS')
  jax.config.update('jax_disable_most_optimizations', False)
  os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '0'  # and in the module's subprocesses
  yield
  jax.config.update('jax_disable_most_optimizations', before)
  if variable is None:
    del os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS']
  else:
    os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = variable


@pytest.fixture(scope='session')
def golden():
  """The reference's weights, inputs and outputs written by tools/make_parity_fixtures.py."""
  with np.load(FIXTURES / 'parity.npz') as data:
    return {k: data[k] for k in data.files}


# Model sections of a tiny flow-matching DiT for tests of processes and the loop
# around the model (multi-process runs, worker exit): it compiles in about half
# the time of the tests' tiny Unet3D. Add 'diffusion' sizes and a 'trainer'.
TINY_DIT = {
  'unet': dict(channels=1),
  'dit': dict(width=32, depth=2, heads=2, patch_size=2),
  'diffusion': dict(backbone='dit', objective='flow', channels=1, loss_type='l2'),
}


def latent_config(results, vae, unet=None, **diffusion_keys):
  """A tiny flow DiT (patch 1; or, with diffusion_keys backbone='unet3d', the Unet3D
  of `unet`'s keys) on the latents of the autoencoder `vae`: 5 frames of 16x16 RGB,
  4 steps of 2 clips, checkpoints at 2 and 4."""
  from video_diffusion.config import config_from_dict

  return config_from_dict(
    {
      'unet': dict(channels=3) | (unet or {}),
      'dit': dict(TINY_DIT['dit'], patch_size=1),
      'diffusion': TINY_DIT['diffusion']
      | dict(channels=3, image_size=16, num_frames=5, vae=str(vae))
      | diffusion_keys,
      'trainer': dict(
        results_folder=str(results),
        train_batch_size=2,
        train_num_steps=4,
        checkpoint_every_steps=2,
        save_and_sample_every=4,
        num_sample_rows=1,
        data_workers=0,
        step_start_ema=1,
        update_ema_every=1,
        max_to_keep=None,
      ),
    }
  )


def to_channels_last(video):
  """(b, c, f, h, w) of the reference -> our (b, f, h, w, c)."""
  return np.transpose(video, (0, 2, 3, 4, 1))


# The test files that take longest (pytest --durations, 2026-12-07), run first: with
# pytest-xdist's --dist loadfile a long file started last leaves the other worker idle.
LONGEST_FIRST = (
  'train/test_training.py',
  'parallel/test_sharding.py',
  'train/test_backbones.py',
  'eval/test_eval.py',
  'models/test_precision.py',
  'conditions/test_conditional.py',
  'vae/test_train_vae.py',
  'cli/test_cli.py',
  'parallel/test_multiprocess.py',
  'data/test_worker_exit.py',
  'train/test_preemption.py',
  'test_readme.py',
  'eval/test_fvd.py',
  'models/test_parity.py',
  'train/test_cotrain.py',
  'models/test_dit.py',
  'vae/test_tiling.py',
  'train/test_train_step.py',
)


def pytest_collection_modifyitems(items):
  def rank(item):
    path = item.path.relative_to(pathlib.Path(__file__).parent).as_posix()
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: the order within a file is kept
