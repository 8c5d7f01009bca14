"""Multi-process runs on JAX's own distributed runtime (jax.distributed).

Every process runs the same command with its own process id; on CPU the
collectives go through gloo. Nothing here is a communication layer of its
own: JSON-able per-process values are exchanged with
jax.experimental.multihost_utils.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> tuple[int, int]:
  """Joins a multi-process run when an address is given (or the JAX_* variables
  are set); returns (process_index, process_count). A single process needs nothing."""
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if coordinator_address is None:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ValueError(
        '--num-processes/--process-id need --coordinator-address HOST:PORT '
        '(the address of process 0)'
      )
    return jax.process_index(), jax.process_count()
  num_processes = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', 0)) or None
  if process_id is None and 'JAX_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if num_processes is None or process_id is None:
    raise ValueError(
      'a multi-process run needs --num-processes N and --process-id I '
      '(or JAX_NUM_PROCESSES and JAX_PROCESS_ID) besides --coordinator-address'
    )
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process-id must be in [0, {num_processes}), got {process_id}')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address, num_processes=num_processes, process_id=process_id
  )
  return jax.process_index(), jax.process_count()


def gather_json(value) -> list:
  """[value of process 0, value of process 1, ...] of a JSON-able value, on every process."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: data.size] = data
  rows = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(rows, sizes.reshape(-1))]


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(multihost_utils.process_allgather(np.array([flag], np.int32)).any())


def barrier(name: str) -> None:
  """Waits until every process gets here."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def fetch(array) -> np.ndarray:
  """A (possibly multi-process) global array as one numpy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(array)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(array, tiled=True))
