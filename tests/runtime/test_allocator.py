"""The fast-malloc preload and the start-up line."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from video_diffusion.runtime import allocator, runtime_info, xla_options


def test_glibc_removes_a_preloaded_allocator():
  env = allocator.allocator_env('glibc', {'LD_PRELOAD': '/x/libjemalloc.so.2', 'A': '1'})
  assert env == {'A': '1'}


def test_missing_allocator_names_how_to_install_it(monkeypatch):
  monkeypatch.setattr(allocator, 'library_dirs', lambda: [])
  with pytest.raises(ValueError, match='apt-get install libjemalloc2'):
    allocator.allocator_env('jemalloc', {})
  with pytest.raises(ValueError, match='pip install cmeel-mimalloc'):
    allocator.allocator_env('mimalloc', {})
  assert 'LD_PRELOAD' not in allocator.allocator_env('auto', {})


def test_auto_takes_the_first_installed_in_order(monkeypatch, tmp_path):
  monkeypatch.setattr(allocator, 'library_dirs', lambda: [tmp_path])
  (tmp_path / 'libjemalloc.so.2').write_bytes(b'')
  env = allocator.allocator_env('auto', {})
  assert env['LD_PRELOAD'] == str(tmp_path / 'libjemalloc.so.2')
  assert env['MALLOC_CONF'] == allocator.JEMALLOC_CONF
  (tmp_path / 'libmimalloc.so.3').write_bytes(b'')
  env = allocator.allocator_env('auto', {})
  assert env['LD_PRELOAD'] == str(tmp_path / 'libmimalloc.so.3')
  assert 'MALLOC_CONF' not in env
  assert env['MIMALLOC_PURGE_DELAY'] == '-1'  # never purge: no page faults between steps
  user_set = allocator.allocator_env('mimalloc', {'MIMALLOC_PURGE_DELAY': '10'})
  assert user_set['MIMALLOC_PURGE_DELAY'] == '10'


def test_the_set_up_installs_mimalloc_so_auto_preloads_it():
  # pyproject pins cmeel-mimalloc: a machine set up from the README has it, no apt step.
  path = allocator.find_allocator('mimalloc')
  assert path is not None and 'cmeel.prefix' in path
  assert allocator.resolve('auto') == 'mimalloc'
  assert allocator.allocator_env('auto', {})['LD_PRELOAD'] == path


REUSE_A_FREED_BLOCK = textwrap.dedent("""
  import ctypes, resource
  libc = ctypes.CDLL(None)  # malloc and free of the preloaded allocator
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  size, touched = 3 << 30, 64 << 20  # a block like XLA's step scratch, above 2 GiB
  block = libc.malloc(size)
  ctypes.memset(block, 1, touched)
  libc.free(block)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, touched)
  print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def test_mimalloc_keeps_a_freed_block_above_2_gib_for_the_next_step():
  # Without MIMALLOC_ARENA_MAX_OBJECT_SIZE, mimalloc unmaps such a block on free
  # and touching its next copy page-faults every page in again (32 huge pages here).
  base = {k: v for k, v in os.environ.items() if not k.startswith('MIMALLOC_')}
  env = allocator.allocator_env('mimalloc', base)
  out = subprocess.run(
    [sys.executable, '-c', REUSE_A_FREED_BLOCK], env=env, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr
  assert int(out.stdout) < 8, f'{out.stdout.strip()} page faults reusing a freed 3 GiB block'


@pytest.mark.parametrize('name', ['auto', 'glibc'])
def test_reexec_preloads_the_allocator_once(name):
  script = textwrap.dedent(f"""
    import os
    from video_diffusion.runtime import allocator
    env = os.environ
    print('run', env.get('LD_PRELOAD', ''), env.get(allocator.REEXEC_MARK, ''), flush=True)
    allocator.reexec_with_allocator({name!r})
    print('after', flush=True)
  """)
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', allocator.REEXEC_MARK)}
  out = subprocess.run(
    [sys.executable, '-c', script], env=env, capture_output=True, text=True, check=True
  ).stdout.split('\n')
  if name == 'glibc':
    assert out[:2] == ['run  ', 'after']
  else:  # the first process is replaced; the second runs on, mimalloc preloaded
    path = allocator.allocator_env('auto', {})['LD_PRELOAD']
    assert out[:3] == ['run  ', f'run {path} 1', 'after']


def test_unknown_allocator_is_an_error():
  with pytest.raises(ValueError, match="allocator 'hoard'"):
    allocator.allocator_env('hoard', {})


def test_startup_line_names_backend_devices_and_malloc(monkeypatch, tmp_path):
  monkeypatch.setenv('LD_PRELOAD', '/somewhere/libmimalloc.so.3')
  monkeypatch.setattr(runtime_info, 'NVIDIA_DEVICE', str(tmp_path / 'nvidia0'))
  lines = runtime_info.startup_lines()
  assert len(lines) == 1 and lines[0].startswith('backend: cpu, ')
  assert 'device(s)' in lines[0] and lines[0].endswith('malloc: mimalloc')
  (tmp_path / 'nvidia0').write_bytes(b'')
  warning = runtime_info.startup_lines()[1]
  assert 'NVIDIA GPU' in warning and "pip install -e '.[cuda12]'" in warning


def test_xla_options_are_added_once_and_never_override_the_user():
  from video_diffusion.runtime import xla_options

  option = xla_options.CPU_OPTIONS[0]
  assert xla_options.with_options('') == option
  assert xla_options.with_options('--a=1') == f'--a=1 {option}'
  assert xla_options.with_options(option) == option
  name = option.split('=')[0]
  assert xla_options.with_options(f'{name}=') == f'{name}='


CONFIGURE_TWICE = (
  'import os, jax, video_diffusion; video_diffusion.configure_cpu(); '
  'video_diffusion.configure_cpu(); '
  'print(os.environ["XLA_FLAGS"]); print(jax.config.values["jax_cpu_enable_async_dispatch"])'
)


@pytest.mark.parametrize('env_value, expected', [(None, 'False'), ('1', 'True')])
def test_configure_cpu_sets_the_options_once_and_async_dispatch_unless_the_user_chose(
  env_value, expected
):
  env = {k: v for k, v in os.environ.items() if k != xla_options.ASYNC_DISPATCH_ENV}
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'  # the user's options are kept
  if env_value is not None:
    env[xla_options.ASYNC_DISPATCH_ENV] = env_value
  result = subprocess.run(
    [sys.executable, '-c', CONFIGURE_TWICE], env=env, capture_output=True, text=True, check=True
  )
  flags, dispatch = result.stdout.strip().splitlines()
  assert flags == ' '.join(['--xla_force_host_platform_device_count=1', *xla_options.CPU_OPTIONS])
  assert dispatch == expected


def test_configure_cpu_after_the_backend_started_warns_and_changes_nothing(monkeypatch):
  import jax

  jax.numpy.zeros(1).block_until_ready()  # the backend has started
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    xla_options.configure_cpu()  # configured already (conftest): nothing to say
  monkeypatch.setenv('XLA_FLAGS', '')
  with pytest.warns(RuntimeWarning, match='after JAX started its backend'):
    xla_options.configure_cpu()
  assert os.environ['XLA_FLAGS'] == ''
