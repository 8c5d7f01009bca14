"""XLA options the package sets before JAX starts its backends.

XLA 0.10's CPU backend hands 2-D convolutions to YNNPACK, which runs each one
on a single thread; XLA's own (Eigen) convolutions use every core and, on 2
cores, take half the time forward and for both gradients
(docs/performance.md). The options apply only when `video_diffusion` is
imported before JAX initialises a backend; an option already named in
XLA_FLAGS is left as the user set it.
"""

from __future__ import annotations

import os

CPU_OPTIONS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def with_options(flags: str) -> str:
  """`flags` (an XLA_FLAGS value) with each of CPU_OPTIONS the user did not set."""
  for option in CPU_OPTIONS:
    if option.split('=', 1)[0] not in flags:
      flags = f'{flags} {option}'.strip()
  return flags


def apply() -> None:
  """Adds CPU_OPTIONS to os.environ['XLA_FLAGS']."""
  os.environ['XLA_FLAGS'] = with_options(os.environ.get('XLA_FLAGS', ''))
