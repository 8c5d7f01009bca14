"""What a command prints at start: the backend, its devices and the CPU allocator."""

from __future__ import annotations

import os

from video_diffusion.runtime.allocator import active_allocator

NVIDIA_DEVICE = '/dev/nvidia0'
CUDA_INSTALL = "pip install -e '.[cuda12]'"


def startup_lines() -> list[str]:
  """One line naming the backend, device count and (on CPU) the malloc in use,
  plus a warning when an NVIDIA GPU is present but JAX runs on the CPU."""
  import jax

  devices = jax.devices()
  backend = jax.default_backend()
  line = f'backend: {backend}, {len(devices)} device(s) ({devices[0].device_kind})'
  if backend == 'cpu':
    line += f', malloc: {active_allocator()}'
  lines = [line]
  if backend == 'cpu' and os.path.exists(NVIDIA_DEVICE):
    lines.append(
      f'warning: an NVIDIA GPU is present ({NVIDIA_DEVICE}) but JAX runs on the CPU; '
      f'install the CUDA build with: {CUDA_INSTALL}'
    )
  return lines


def print_startup() -> None:
  """Prints startup_lines() on stdout (in a multi-process run, from process 0 only)."""
  import jax

  if jax.process_index() != 0:
    return
  for line in startup_lines():
    print(line, flush=True)
