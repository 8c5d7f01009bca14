"""Orbax checkpoints of training runs: one folder per step under checkpoint_dir_path.

A step folder holds the items `params`, `ema_params`, `opt_state`, `meta`
(step and RNG key), `data` (the grain iterator state, JSON) and `config` (the
resolved run config, JSON). Saves are asynchronous; orbax writes each step to
a temporary folder and renames it when complete, so a crash or kill during a
save leaves the earlier steps intact and the partial one invisible.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from video_diffusion.config.registry import model_sections
from video_diffusion.config.vae import MODEL_KIND

_READ_ONLY_NOTICES = ('Given directory is read only', 'CheckpointManagerOptions.read_only=True')


def _not_read_only_notice(record: logging.LogRecord) -> bool:
  """Drops orbax's warnings that a read-only manager is read only: sampling and
  evaluation open checkpoints read-only on purpose, every time."""
  return not str(record.msg).startswith(_READ_ONLY_NOTICES)


class CheckpointNotFoundError(FileNotFoundError):
  """A requested checkpoint step does not exist; the message lists those that do."""


class CheckpointDamagedError(RuntimeError):
  """A checkpoint step exists but cannot be read (truncated or missing files); the
  message names the step and the file or item."""

  def __init__(self, step: int, message: str):
    self.step = step
    super().__init__(message)


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (a full disk, say); the earlier ones are kept."""


# What orbax and tensorstore raise on unreadable files: ValueError (tensorstore,
# JSON), KeyError (an item folder missing), OSError; orbax wraps some of them in a
# bare Exception (array reads).
_READ_ERRORS = (ValueError, KeyError, OSError)


def _read_error(error: BaseException) -> BaseException | None:
  """The read error in `error`'s chain of causes, or None when it is another failure."""
  while error is not None:
    if isinstance(error, _READ_ERRORS):
      return error
    error = error.__cause__ or error.__context__
  return None


def model_mismatch(current: dict, saved: dict) -> str | None:
  """'section.key=saved vs current' for the first model key where two config
  dicts differ, or None when the models agree. A train-vae run's dict names its
  kind (config.vae.MODEL_KIND) and its model keys are the vae section's; a
  diffusion model's are those of unet, diffusion and the own section of either
  backbone (config.registry.BACKBONES)."""
  kinds = [d.get(MODEL_KIND, 'diffusion') for d in (saved, current)]
  if kinds[0] != kinds[1]:
    return f'the checkpoint holds a {kinds[0]} model, the config describes a {kinds[1]} model'
  if kinds[0] == 'vae':
    sections = ['vae']
  else:
    backbones = (current['diffusion'].get('backbone'), saved.get('diffusion', {}).get('backbone'))
    sections = model_sections(*backbones)
  for section in sections:
    for key, value in current.get(section, {}).items():
      old = saved.get(section, {}).get(key, value)
      if (section, key) == ('diffusion', 'vae') and None not in (old, value):
        continue  # two paths: the autoencoders' weights are compared (vae.latent)
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
    if read_only:  # orbax logs through absl; adding the filter again does nothing
      logging.getLogger('absl').addFilter(_not_read_only_notice)
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
    with self._writing(step):
      self._manager.save(step, args=ocp.args.Composite(**items))
    return step

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    """Turns an OSError of a save (also one raised later by the async write) into
    CheckpointWriteError naming the folder."""
    try:
      yield
    except OSError as e:
      what = 'a checkpoint' if step is None else f'the checkpoint of step {step}'
      raise CheckpointWriteError(
        f'could not write {what} to {self.directory}: {e.strerror or e}; the earlier '
        'checkpoints there are kept: free some space (or set trainer.checkpoint_dir_path '
        'to another disk) and continue with --resume_step -1'
      ) from e

  def _read(self, step: int, items: dict) -> dict:
    """orbax's restore of `items` at `step`; CheckpointDamagedError naming the bad
    file (or item) when it cannot be read."""
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # re-raised unless a read error is its cause
      if _read_error(error) is None:
        raise
      for name, arg in items.items():  # which item: each alone
        try:
          self._manager.restore(step, args=ocp.args.Composite(**{name: arg}))
        except Exception as e:
          cause = _read_error(e)
          if cause is not None:
            raise self._damaged(step, name, cause) from e
      raise self._damaged(step, None, _read_error(error)) from error

  def _damaged(self, step: int, item: str | None, error: BaseException) -> CheckpointDamagedError:
    text = str(error).split(' [tensorstore_spec')[0]
    files = re.findall(r'local file "([^"]+)"', text)  # the last is the most specific
    where = files[-1] if files else os.path.join(self.directory, str(step), item or '')
    reason = text.splitlines()[0][:300] if text else type(error).__name__
    return CheckpointDamagedError(
      step,
      f'checkpoint step {step} in {self.directory} is damaged: {where} is missing or cannot '
      f'be read ({type(error).__name__}: {reason})',
    )

  def restore(self, step: int | None, target) -> tuple[Any, dict, dict]:
    """(state, data_state, config) of `step` (None/-1 = newest), shaped like `target`."""
    step = self.resolve_step(step)
    items = {
      name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in _state_items(target).items()
    }
    items['data'] = ocp.args.JsonRestore()
    items['config'] = ocp.args.JsonRestore()
    out = self._read(step, items)
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
    return self._read(step, {name: ocp.args.StandardRestore(_abstract(target_params))})[name]

  def restore_config(self, step: int | None) -> dict:
    step = self.resolve_step(step)
    return dict(self._read(step, {'config': ocp.args.JsonRestore()})['config'])

  def set_aside(self, step: int) -> str:
    """Renames the folder of a damaged `step` to '<step>.damaged' (out of the
    steps, kept for inspection) and returns its new path."""
    source = os.path.join(self.directory, str(step))
    target = f'{source}.damaged'
    suffix = 1
    while os.path.exists(target):
      suffix += 1
      target = f'{source}.damaged{suffix}'
    os.rename(source, target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    with self._writing(None):
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
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
