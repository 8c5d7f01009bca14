"""Device mesh and shardings for data- and FSDP-parallel training.

The mesh has two axes, `data` and `fsdp`. A batch of videos (batch, frames,
height, width, channels) is split along its batch dimension over both axes.
Params, EMA params and optimiser state are split over `fsdp` by one rule:
the largest dimension divisible by the axis size, replicated when none is.
The step counter and the RNG key are replicated.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = 'data', 'fsdp'


class MeshError(ValueError):
  """A mesh that does not fit the devices or the batch; the message says what does."""


def mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1) -> tuple[int, int]:
  """(data, fsdp) sizes for `num_devices`; data -1 takes the devices fsdp leaves."""
  if fsdp < 1 or num_devices % fsdp:
    raise MeshError(
      f'the fsdp axis ({fsdp}) must divide the {num_devices} devices; use one of '
      f'{_divisors(num_devices)} (trainer.mesh_fsdp or trainer.num_model_shards)'
    )
  data = num_devices // fsdp if data == -1 else data
  if data * fsdp != num_devices:
    raise MeshError(
      f'mesh data x fsdp = {data} x {fsdp} = {data * fsdp} but there are '
      f'{num_devices} devices; set trainer.mesh_data to -1 or '
      f'{num_devices // fsdp}'
    )
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: all of them)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(len(devices), data, fsdp)
  return Mesh(np.asarray(devices).reshape(shape), (DATA, FSDP))


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def check_batch(micro_batch: int, mesh: Mesh) -> None:
  """Refuses a (global) micro-batch that does not split evenly over the mesh's devices."""
  if micro_batch % mesh.size:
    raise MeshError(
      f'a micro-batch of {micro_batch} videos does not split over the '
      f'{mesh.size} devices of the mesh {dict(mesh.shape)}; set '
      f'trainer.train_batch_size (videos per micro-batch, all processes together) '
      f'to a multiple of {mesh.size}'
    )


def param_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """Shard the largest dimension divisible by fsdp_size over `fsdp`; else replicate."""
  if fsdp_size == 1:
    return P()
  for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[dim] % fsdp_size == 0:
      return P(*([None] * dim + [FSDP]))
  return P()


def tree_shardings(tree, mesh: Mesh):
  """NamedShardings of a pytree of arrays (or ShapeDtypeStructs) by the fsdp rule."""
  size = mesh.shape[FSDP]
  return jax.tree.map(lambda leaf: NamedSharding(mesh, param_spec(tuple(leaf.shape), size)), tree)


def state_shardings(state, mesh: Mesh):
  """Shardings of a train_step.TrainState: params, EMA and optimiser state by
  the fsdp rule; step and RNG replicated."""
  return state.replace(
    step=replicated(mesh),
    rng=replicated(mesh),
    params=tree_shardings(state.params, mesh),
    ema_params=tree_shardings(state.ema_params, mesh),
    opt_state=tree_shardings(state.opt_state, mesh),
  )


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs of `abstract` carrying `shardings`: a target to restore a
  checkpoint into, laid out as the shardings say."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """The same whole array on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension split over both mesh axes."""
  return NamedSharding(mesh, P((DATA, FSDP)))


def global_array(value: np.ndarray, array_sharding: NamedSharding) -> jax.Array:
  """A global array from a value every process holds whole."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, array_sharding, lambda index: value[index])


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """One global array from this process's share of a batch (its rows, in order)."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))
