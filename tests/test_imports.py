"""Importing the package has no side effects; its top-level names resolve."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import video_diffusion
from video_diffusion.runtime import xla_options

# In a fresh interpreter: the state a module could change at import, before and
# after importing every module of the package (the third-party libraries it
# uses are imported first: orbax, for one, adds a root log handler).
IMPORT_EVERYTHING = textwrap.dedent(
  """
  import importlib, json, logging, os, pkgutil, signal, warnings
  import flax, grain, jax, optax, orbax.checkpoint

  def state():
    loggers = {'': logging.getLogger(), 'absl': logging.getLogger('absl')}
    return {
      'environ': dict(os.environ),
      'jax.config': {k: repr(v) for k, v in jax.config.values.items()},
      'loggers': {n: repr((l.level, l.filters, l.handlers)) for n, l in loggers.items()},
      'warnings': repr(warnings.filters),
      'signals': {s.name: repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)},
    }

  before = state()
  import video_diffusion
  names = [m.name for m in pkgutil.walk_packages(video_diffusion.__path__, 'video_diffusion.')]
  names = [n for n in names if not n.endswith('__main__')]  # runs the CLI
  for name in names:
    importlib.import_module(name)
  after = state()
  def diff(a, b):
    if isinstance(a, dict):
      return {k: [a.get(k), b.get(k)] for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    return [] if a == b else [a, b]

  changed = {part: diff(before[part], after[part]) for part in before}
  print(json.dumps({'modules': len(names), 'changed': {p: d for p, d in changed.items() if d}}))
  """
)


@pytest.mark.slow
def test_importing_every_module_changes_neither_the_environment_nor_jax_config():
  # Without the options configure_cpu sets (the test session's own conftest set them).
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.pop(xla_options.ASYNC_DISPATCH_ENV, None)
  result = subprocess.run(
    [sys.executable, '-c', IMPORT_EVERYTHING], env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['modules'] > 50  # the walk found the package's modules
  assert report['changed'] == {}


def test_the_public_names_resolve_to_what_they_name():
  from video_diffusion.config import Config, load_config
  from video_diffusion.diffusion import GaussianDiffusion
  from video_diffusion.eval.evaluate import evaluate_checkpoint
  from video_diffusion.inference.checkpoint import sample_checkpoint
  from video_diffusion.models.dit import DiT
  from video_diffusion.models.unet import Unet3D
  from video_diffusion.train.loop import train

  expected = {
    'configure_cpu': xla_options.configure_cpu,
    'Config': Config,
    'load_config': load_config,
    'Unet3D': Unet3D,
    'DiT': DiT,
    'GaussianDiffusion': GaussianDiffusion,
    'train_model': train,
    'sample_checkpoint': sample_checkpoint,
    'evaluate_checkpoint': evaluate_checkpoint,
  }
  assert sorted(video_diffusion.__all__) == sorted(expected)
  for name, value in expected.items():
    assert getattr(video_diffusion, name) is value, name
  assert set(video_diffusion.__all__) <= set(dir(video_diffusion))
  with pytest.raises(AttributeError, match='no_such_name'):
    video_diffusion.no_such_name  # noqa: B018


def test_the_package_and_its_config_import_without_jax():
  code = 'import sys, video_diffusion, video_diffusion.config; assert "jax" not in sys.modules'
  subprocess.run([sys.executable, '-c', code], check=True)
