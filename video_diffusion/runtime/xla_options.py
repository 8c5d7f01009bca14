"""XLA options the package sets before JAX starts its backends.

XLA 0.10's CPU backend hands 2-D convolutions to YNNPACK, which runs each one
on a single thread; XLA's own (Eigen) convolutions use every core and, on 2
cores, take half the time forward and for both gradients
(docs/performance.md). The options apply only when `video_diffusion` is
imported before JAX initialises a backend; an option already named in
XLA_FLAGS is left as the user set it.

Importing `video_diffusion.models` also runs CPU computations inline (JAX's
`jax_cpu_enable_async_dispatch` off, unless VIDEO_DIFFUSION_CPU_ASYNC_DISPATCH=1):
dispatched asynchronously, a train step could start, and allocate its
XLA scratch (4.4 GB on seed_v2_2), before the previous step's scratch was
freed, so peak memory held two of them (seed_v2_2: 6.5 -> 11.1 GB), in some
runs only. Step time is unchanged (docs/performance.md).
"""

from __future__ import annotations

import os

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
