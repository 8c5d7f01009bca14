"""Run by tests/parallel/test_sharding.py in a subprocess with 8 fake CPU devices.

Trains one step of a tiny model on one device and on (data, fsdp) meshes (the
Unet3D on (4, 2) and (2, 4), the DiT on (8, 1) and (4, 2)); for the Unet3D,
saves a checkpoint on one mesh and restores it on another; samples on one
device and on meshes. Prints one JSON line of the differences and shardings it saw.
Each mesh compiles the step and the sampler anew, so each model gets only the
meshes its tests need.
"""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
)

import json
import tempfile

import jax
import numpy as np
import optax

import video_diffusion
from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.parallel import sharding
from video_diffusion.train import step as ts
from video_diffusion.train.state import init_train_state

TINY = {
  'unet': dict(dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8),
  'diffusion': dict(image_size=8, num_frames=3, channels=1, timesteps=20, loss_type='l2'),
  'trainer': dict(
    train_batch_size=8,
    gradient_accumulate_every=1,
    ema_decay=0.5,
    step_start_ema=0,
    update_ema_every=1,
  ),
}
# `multidevice_worker.py dit`: the same checks for the DiT backbone with flow matching.
DIT = {
  'unet': dict(channels=1),
  'diffusion': dict(
    backbone='dit', objective='flow', image_size=8, num_frames=3, channels=1, loss_type='l2'
  ),
  'dit': dict(width=32, depth=2, heads=2, patch_size=2),
  'trainer': TINY['trainer'],
}
SGD = optax.sgd(1.0)  # params move by minus the gradient: differences are gradient differences


def leaves_max_diff(a, b) -> float:
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def randomised(params):
  """Every parameter moved by noise, so that the DiT's zero-initialised layers
  do not zero the gradients of the others."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  return jax.tree.unflatten(
    tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )


def main(model: str) -> None:
  cfg = config_from_dict(DIT if model == 'dit' else TINY)
  graphdef, params, constants = split_diffusion(cfg)
  if model == 'dit':
    params = randomised(params)
  state0 = init_train_state(params, SGD, seed=0)
  step_fn = ts.make_train_step(graphdef, constants, SGD, ts.StepOptions.from_config(cfg))
  videos = np.random.default_rng(0).integers(0, 256, (8, 3, 8, 8, 1), dtype=np.uint8)

  def train_on(data, fsdp):
    mesh = sharding.make_mesh(data, fsdp, jax.devices()[: data * fsdp])
    shardings = sharding.state_shardings(state0, mesh)
    step = jax.jit(
      step_fn,
      in_shardings=(shardings, sharding.batch_sharding(mesh), None),
      out_shardings=(shardings, sharding.replicated(mesh)),
    )
    state, metrics = step(
      jax.device_put(state0, shardings), sharding.global_batch(videos, mesh), None
    )
    return mesh, state, metrics

  _, ref_state, ref_metrics = train_on(1, 1)
  grad_scale = leaves_max_diff(ref_state.params, state0.params)
  report = {'grad_scale': grad_scale, 'loss': float(ref_metrics['loss']), 'meshes': {}}
  states = {}
  for data, fsdp in [(8, 1), (4, 2)] if model == 'dit' else [(4, 2)]:
    mesh, state, metrics = train_on(data, fsdp)
    states[(data, fsdp)] = state
    leaves = jax.tree.leaves(state.params)
    split = [leaf for leaf in leaves if sharding.FSDP in str(leaf.sharding.spec)]
    report['meshes'][f'{data}x{fsdp}'] = {
      'loss_diff': abs(float(metrics['loss']) - report['loss']),
      'params_diff': leaves_max_diff(state.params, ref_state.params),
      'ema_diff': leaves_max_diff(state.ema_params, ref_state.ema_params),
      'leaves': len(leaves),
      'fsdp_leaves': len(split),
      'shard_fraction': [
        min(s.data.size for s in leaf.addressable_shards) / leaf.size for leaf in split
      ][:3],
      'devices_of_a_param': len(leaves[0].sharding.device_set),
    }

  if model == 'dit':
    report['sampling'] = sample_on_meshes(cfg, graphdef, constants, ref_state.params)
    print(json.dumps(report))
    return
  # A checkpoint written on (4, 2) restores on one device, and one from one device on (4, 2).
  report['checkpoint'] = {}
  one = sharding.make_mesh(1, 1, jax.devices()[:1])
  wide = sharding.make_mesh(4, 2)
  abstract = jax.eval_shape(lambda s: s, state0)
  for name, state, target_mesh in [
    ('4x2->1', states[(4, 2)], one),
    ('1->4x2', jax.device_put(ref_state, sharding.state_shardings(ref_state, one)), wide),
  ]:
    with tempfile.TemporaryDirectory() as folder:
      with Checkpointer(folder) as ckpt:
        ckpt.save(state, data_state={}, config={})
        ckpt.wait()
        target = sharding.with_shardings(abstract, sharding.state_shardings(abstract, target_mesh))
        restored, _, _ = ckpt.restore(int(state.step), target)
    report['checkpoint'][name] = {
      'diff': leaves_max_diff(restored, state),
      'devices': len(jax.tree.leaves(restored.params)[0].sharding.device_set),
      'fsdp_leaves': sum(
        sharding.FSDP in str(leaf.sharding.spec) for leaf in jax.tree.leaves(restored.params)
      ),
    }
  report['sampling'] = sample_on_meshes(cfg, graphdef, constants, ref_state.params)
  print(json.dumps(report))


def sample_on_meshes(cfg, graphdef, constants, params) -> dict:
  """DDIM (Euler for a flow model) samples of 8 videos on 1 device and on meshes
  (the Unet3D: 4x2; the DiT: 8x1 and 4x2, and 3 videos on 8 devices, padded to
  8); the compiled sampler's per-device scratch memory."""
  from video_diffusion.diffusion.samplers import DDIM, Euler
  from video_diffusion.inference.sampling import compile_sample_fn

  key = jax.random.key(1)
  sampler = Euler(3) if cfg.diffusion.is_flow else DDIM(3, 0.0)

  def run(data, fsdp, batch):
    mesh = sharding.make_mesh(data, fsdp, jax.devices()[: data * fsdp])
    sample = compile_sample_fn(graphdef, constants, batch, sampler=sampler, mesh=mesh)
    placed = jax.device_put(params, sharding.tree_shardings(params, mesh))
    key_data = jax.device_put(jax.random.key_data(key), sharding.replicated(mesh))
    # Compiled once, ahead of time: its memory analysis, then the sample_fn runs it.
    executable = sample.compiled.lower(placed, key_data, None, None, None).compile()
    temp = executable.memory_analysis().temp_size_in_bytes
    videos = sample(params, key)
    return videos, sample.padded_batch, temp

  ref, _, ref_temp = run(1, 1, 8)
  report = {'shape': list(ref.shape), 'ref_temp': ref_temp, 'std': float(ref.std())}
  dit = cfg.diffusion.backbone == 'dit'
  for data, fsdp in [(8, 1), (4, 2)] if dit else [(4, 2)]:
    videos, padded, temp = run(data, fsdp, 8)
    report[f'{data}x{fsdp}'] = {'diff': float(np.max(np.abs(videos - ref))), 'temp': temp}
  if not dit:
    return report
  videos, padded, _ = run(8, 1, 3)
  report['3_on_8'] = {
    'shape': list(videos.shape),
    'padded': padded,
    'diff': float(np.max(np.abs(videos - ref[:3]))),
  }
  return report


if __name__ == '__main__':
  import sys

  video_diffusion.configure_cpu()  # the CLI's XLA options, as the tests' own process
  main(sys.argv[1] if len(sys.argv) > 1 else 'unet3d')
