"""Faster malloc for XLA on CPU: preload jemalloc or tcmalloc when installed.

XLA's CPU runtime allocates and frees large buffers every step; with glibc
malloc much of a train step goes to page faults. tcmalloc (Debian package
libgoogle-perftools4) or jemalloc (libjemalloc2) keep that memory mapped.
"""

from __future__ import annotations

import os
import pathlib

LIBRARY_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64',
                '/usr/lib', '/usr/local/lib')
# In order of preference for 'auto': jemalloc with decay disabled ran out of
# memory on the 10M-parameter seed model where tcmalloc did not.
ALLOCATORS = {
    'tcmalloc': ('libtcmalloc.so.4', 'libtcmalloc_minimal.so.4'),
    'jemalloc': ('libjemalloc.so.2',),
}
# Never give memory back to the OS between steps (the reference's fastest setting).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_allocator(name: str) -> str | None:
  """Path of the shared library of allocator `name`, or None if not installed."""
  for directory in LIBRARY_DIRS:
    for filename in ALLOCATORS[name]:
      path = pathlib.Path(directory) / filename
      if path.exists():
        return str(path)
  return None


def allocator_env(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
  """A copy of `env` (default os.environ) that preloads allocator `name`.

  'glibc' removes a preloaded allocator; 'auto' picks tcmalloc, then jemalloc,
  then glibc. Raises ValueError naming the package to install if `name` is missing.
  """
  env = dict(os.environ if env is None else env)
  if name == 'auto':
    name = next((n for n in ALLOCATORS if find_allocator(n)), 'glibc')
  env.pop('LD_PRELOAD', None)
  if name == 'glibc':
    return env
  if name not in ALLOCATORS:
    raise ValueError(f'allocator {name!r}: use auto, glibc, {", ".join(ALLOCATORS)}.')
  path = find_allocator(name)
  if path is None:
    package = {'jemalloc': 'libjemalloc2', 'tcmalloc': 'libgoogle-perftools4'}[name]
    raise ValueError(f'{name} is not installed: apt-get install {package}, or use glibc.')
  env['LD_PRELOAD'] = path
  if name == 'jemalloc':
    env.setdefault('MALLOC_CONF', JEMALLOC_CONF)
  return env


def active_allocator() -> str:
  """The allocator preloaded into this process ('glibc' if none)."""
  preload = os.environ.get('LD_PRELOAD', '')
  return next((n for n in ALLOCATORS if n in preload), 'glibc')
