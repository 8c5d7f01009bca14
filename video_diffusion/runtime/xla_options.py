"""The CPU options of `configure_cpu`, which sets them before JAX starts its backend.

XLA 0.10's CPU backend hands 2-D convolutions to YNNPACK, which runs each one
on a single thread; XLA's own (Eigen) convolutions use every core and, on 2
cores, take half the time forward and for both gradients
(docs/performance.md). An option already named in XLA_FLAGS is left as the
user set it.

`configure_cpu` also runs CPU computations inline (JAX's
`jax_cpu_enable_async_dispatch` off, unless VIDEO_DIFFUSION_CPU_ASYNC_DISPATCH=1):
dispatched asynchronously, a train step could start, and allocate its
XLA scratch (4.4 GB on seed_v2_2), before the previous step's scratch was
freed, so peak memory held two of them (seed_v2_2: 6.5 -> 11.1 GB), in some
runs only. Step time is unchanged (docs/performance.md).

Importing this module changes nothing; the CLI, the benchmarks and the test
suite call `configure_cpu`, library and notebook users call it themselves.
"""

from __future__ import annotations

import os
import sys
import warnings

CPU_OPTIONS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)
ASYNC_DISPATCH_ENV = 'VIDEO_DIFFUSION_CPU_ASYNC_DISPATCH'


def with_options(flags: str) -> str:
  """`flags` (an XLA_FLAGS value) with each of CPU_OPTIONS the user did not set."""
  for option in CPU_OPTIONS:
    if option.split('=', 1)[0] not in flags:
      flags = f'{flags} {option}'.strip()
  return flags


def apply() -> None:
  """Adds CPU_OPTIONS to os.environ['XLA_FLAGS']."""
  os.environ['XLA_FLAGS'] = with_options(os.environ.get('XLA_FLAGS', ''))


def run_cpu_computations_inline() -> None:
  """Turns JAX's asynchronous dispatch on the CPU off, unless ASYNC_DISPATCH_ENV
  is 1 (effective before JAX creates its CPU client)."""
  import jax

  if os.environ.get(ASYNC_DISPATCH_ENV) != '1':
    jax.config.update('jax_cpu_enable_async_dispatch', False)


def _backend_started() -> bool:
  """Whether JAX has created its backends (without importing JAX)."""
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge

  return xla_bridge.backends_are_initialized()


def _configured() -> bool:
  """Whether this process already has the options `configure_cpu` sets."""
  flags = os.environ.get('XLA_FLAGS', '')
  if with_options(flags) != flags:
    return False
  if os.environ.get(ASYNC_DISPATCH_ENV) == '1':
    return True
  import jax

  return not jax.config.values['jax_cpu_enable_async_dispatch']


def configure_cpu() -> None:
  """Sets the package's CPU options: CPU_OPTIONS in os.environ['XLA_FLAGS'] and
  CPU computations run inline. Call it first, before the first JAX computation:
  XLA reads them when JAX starts its backend. Idempotent; once the backend has
  started without them it changes nothing and warns (restart the process)."""
  if _backend_started():
    if not _configured():
      warnings.warn(
        'video_diffusion.configure_cpu() was called after JAX started its backend, so '
        'its XLA options cannot take effect (convolutions run on one thread, peak memory '
        'may double); call it before the first JAX computation (in a notebook: restart '
        'the kernel and call it first)',
        RuntimeWarning,
        stacklevel=2,
      )
    return
  apply()
  run_cpu_computations_inline()
