"""Orbax checkpoints of training runs: one folder per step under checkpoint_dir_path.

A step folder holds the items `params`, `ema_params`, `opt_state`, `meta`
(step and RNG key), `data` (the grain iterator state, JSON) and `config` (the
resolved run config, JSON). Saves are asynchronous; orbax writes each step to
a temporary folder and renames it when complete, so a crash or kill during a
save leaves the earlier steps intact and the partial one invisible.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointNotFoundError(FileNotFoundError):
  """A requested checkpoint step does not exist; the message lists those that do."""


def model_mismatch(current: dict, saved: dict) -> str | None:
  """'section.key=saved vs current' for the first model key (unet, diffusion, and
  dit for a DiT) where two config dicts differ, or None when the models agree."""
  sections = ['unet', 'diffusion']
  if 'dit' in (current['diffusion'].get('backbone'), saved.get('diffusion', {}).get('backbone')):
    sections.append('dit')
  for section in sections:
    for key, value in current[section].items():
      old = saved.get(section, {}).get(key, value)
      if old != value:
        return f'{section}.{key}={old!r} in the checkpoint, {value!r} in the config'
  return None


def _abstract(tree):
  """ShapeDtypeStructs to restore into; unsharded leaves go to the default device
  (as freshly created arrays do, so compiled steps are reused after a resume)."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def one(leaf):
    sharding = getattr(leaf, 'sharding', None) or device
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  return jax.tree.map(one, tree)


class Checkpointer:
  """CheckpointManager for a train state (train.state.TrainState: step, params,
  ema_params, opt_state, rng) plus the data-iterator state and the config."""

  def __init__(self, directory: str, *, max_to_keep: int | None = None, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=not read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Completed checkpoint steps, oldest first."""
    return sorted(self._manager.all_steps())

  def resolve_step(self, step: int | None) -> int:
    """`step`, or the newest for None/-1; raises CheckpointNotFoundError listing steps."""
    steps = self.steps()
    if not steps:
      raise CheckpointNotFoundError(f'no checkpoints in {self.directory}')
    if step is None or step == -1:
      return steps[-1]
    if step not in steps:
      raise CheckpointNotFoundError(
        f'no checkpoint for step {step} in {self.directory}; steps available: '
        f'{", ".join(map(str, steps))}'
      )
    return step

  def save(self, state, *, data_state: dict | None, config: dict) -> int:
    """Starts an asynchronous save of `state` at its step; returns the step."""
    step = int(state.step)
    items = {name: ocp.args.StandardSave(tree) for name, tree in _state_items(state).items()}
    items['data'] = ocp.args.JsonSave(data_state or {})
    items['config'] = ocp.args.JsonSave(config)
    self._manager.save(step, args=ocp.args.Composite(**items))
    return step

  def restore(self, step: int | None, target) -> tuple[Any, dict, dict]:
    """(state, data_state, config) of `step` (None/-1 = newest), shaped like `target`."""
    step = self.resolve_step(step)
    items = {
      name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in _state_items(target).items()
    }
    items['data'] = ocp.args.JsonRestore()
    items['config'] = ocp.args.JsonRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = target.replace(
      step=out['meta']['step'],
      params=out['params'],
      ema_params=out['ema_params'],
      opt_state=out['opt_state'],
      rng=out['meta']['rng'],
    )
    return state, dict(out['data'] or {}), dict(out['config'] or {})

  def restore_params(self, step: int | None, target_params: Any, *, ema: bool) -> Any:
    """Only the params (or EMA params) of `step`, shaped like `target_params`."""
    step = self.resolve_step(step)
    name = 'ema_params' if ema else 'params'
    out = self._manager.restore(
      step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(_abstract(target_params))})
    )
    return out[name]

  def restore_config(self, step: int | None) -> dict:
    step = self.resolve_step(step)
    out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(out['config'])

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _state_items(state) -> dict[str, Any]:
  return {
    'params': state.params,
    'ema_params': state.ema_params,
    'opt_state': state.opt_state,
    'meta': {'step': state.step, 'rng': state.rng},
  }
