"""Faster malloc for XLA on CPU, preloaded before JAX starts.

XLA's CPU runtime allocates and frees large buffers every step; glibc malloc
hands them back to the OS and page-faults them in again, so much of a train
step goes to page faults. mimalloc ships with the package (the pinned PyPI
wheel `cmeel-mimalloc`), so every machine set up from the README has it;
tcmalloc (Debian package libgoogle-perftools4) and jemalloc (libjemalloc2) are
used when asked for and installed. docs/performance.md has the measurements
behind the order of AUTO_ORDER.
"""

from __future__ import annotations

import os
import pathlib
import sys
import sysconfig

SYSTEM_LIBRARY_DIRS = (
  '/usr/lib/x86_64-linux-gnu',
  '/usr/lib/aarch64-linux-gnu',
  '/usr/lib64',
  '/usr/lib',
  '/usr/local/lib',
)
# Shared-library file names of each allocator; mimalloc's comes from its wheel.
LIBRARIES = {
  'mimalloc': ('libmimalloc.so.3',),
  'tcmalloc': ('libtcmalloc.so.4', 'libtcmalloc_minimal.so.4'),
  'jemalloc': ('libjemalloc.so.2',),
}
ALLOCATORS = tuple(LIBRARIES)
AUTO_ORDER = ('mimalloc', 'tcmalloc', 'jemalloc')  # fastest first, as measured
INSTALL = {
  'mimalloc': 'pip install cmeel-mimalloc (a dependency of this package)',
  'tcmalloc': 'apt-get install libgoogle-perftools4',
  'jemalloc': 'apt-get install libjemalloc2',
}
# Never give freed memory back to the OS, so the next step reuses it without
# page faults: jemalloc without decay (the reference's fastest setting) and
# mimalloc without purging (docs/performance.md, "Allocators").
JEMALLOC_CONF = 'dirty_decay_ms:-1,muzzy_decay_ms:-1'
MIMALLOC_PURGE_DELAY = '-1'
# mimalloc maps a block above 2 GiB straight from the OS and unmaps it when
# freed, purge delay or not; XLA's scratch for a step is one such block
# (5.7 GB on seed_v2_2), so every step faulted it in again. Blocks up to
# 16 GiB (mimalloc's largest arena object) come from its arenas instead.
MIMALLOC_ARENA_MAX_OBJECT_SIZE = '16GiB'
# Settings each allocator gets unless the user set them already.
SETTINGS = {
  'jemalloc': {'MALLOC_CONF': JEMALLOC_CONF},
  'mimalloc': {
    'MIMALLOC_PURGE_DELAY': MIMALLOC_PURGE_DELAY,
    'MIMALLOC_ARENA_MAX_OBJECT_SIZE': MIMALLOC_ARENA_MAX_OBJECT_SIZE,
  },
}


def library_dirs() -> list[pathlib.Path]:
  """Where allocator libraries are looked for: the wheels' prefix first, then the system."""
  prefixes = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
  prefixes |= {p for p in sys.path if p.endswith('site-packages')}
  wheel_dirs = [pathlib.Path(p) / 'cmeel.prefix' / 'lib' for p in sorted(prefixes)]
  return wheel_dirs + [pathlib.Path(d) for d in SYSTEM_LIBRARY_DIRS]


def find_allocator(name: str) -> str | None:
  """Path of the shared library of allocator `name`, or None if not installed."""
  for directory in library_dirs():
    for filename in LIBRARIES[name]:
      path = directory / filename
      if path.exists():
        return str(path)
  return None


def resolve(name: str) -> str:
  """The allocator that `name` stands for: 'auto' is the first installed of
  AUTO_ORDER (else 'glibc'); other names are checked and returned."""
  if name == 'auto':
    return next((n for n in AUTO_ORDER if find_allocator(n)), 'glibc')
  if name != 'glibc' and name not in LIBRARIES:
    raise ValueError(f'allocator {name!r}: use auto, glibc, {", ".join(ALLOCATORS)}.')
  return name


def allocator_env(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
  """A copy of `env` (default os.environ) that preloads allocator `name`.

  'glibc' removes a preloaded allocator; 'auto' picks the first installed of
  AUTO_ORDER. Raises ValueError naming how to install `name` if it is missing.
  """
  env = dict(os.environ if env is None else env)
  name = resolve(name)
  env.pop('LD_PRELOAD', None)
  if name == 'glibc':
    return env
  path = find_allocator(name)
  if path is None:
    raise ValueError(f'{name} is not installed: {INSTALL[name]}, or use glibc.')
  env['LD_PRELOAD'] = path
  for key, value in SETTINGS.get(name, {}).items():
    env.setdefault(key, value)
  return env


def active_allocator() -> str:
  """The allocator preloaded into this process ('glibc' if none)."""
  preload = os.environ.get('LD_PRELOAD', '')
  return next((n for n in ALLOCATORS if n in preload), 'glibc')


# Set in a process that reexec_with_allocator started, so it re-executes once.
REEXEC_MARK = 'VIDEO_DIFFUSION_MALLOC_SET'


def reexec_with_allocator(name: str) -> None:
  """Re-executes this Python command (sys.orig_argv) with allocator `name`
  preloaded, once; returns for 'glibc', in the re-executed process, and when
  `name` preloads nothing. Raises ValueError naming how to install `name`."""
  if name == 'glibc' or os.environ.get(REEXEC_MARK):
    return
  env = allocator_env(name)
  if 'LD_PRELOAD' not in env:
    return
  env[REEXEC_MARK] = '1'
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
