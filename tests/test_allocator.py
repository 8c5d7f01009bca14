"""The optional fast-malloc preload helper."""

import pytest

from video_diffusion import allocator


def test_glibc_removes_a_preloaded_allocator():
  env = allocator.allocator_env('glibc', {'LD_PRELOAD': '/x/libjemalloc.so.2', 'A': '1'})
  assert env == {'A': '1'}


def test_missing_allocator_names_the_package(monkeypatch):
  monkeypatch.setattr(allocator, 'LIBRARY_DIRS', ())
  with pytest.raises(ValueError, match='apt-get install libjemalloc2'):
    allocator.allocator_env('jemalloc', {})
  assert 'LD_PRELOAD' not in allocator.allocator_env('auto', {})


def test_found_allocator_is_preloaded(monkeypatch, tmp_path):
  (tmp_path / 'libjemalloc.so.2').write_bytes(b'')
  monkeypatch.setattr(allocator, 'LIBRARY_DIRS', (str(tmp_path),))
  env = allocator.allocator_env('auto', {})
  assert env['LD_PRELOAD'] == str(tmp_path / 'libjemalloc.so.2')
  assert env['MALLOC_CONF'] == allocator.JEMALLOC_CONF


def test_unknown_allocator_is_an_error():
  with pytest.raises(ValueError, match="allocator 'mimalloc'"):
    allocator.allocator_env('mimalloc', {})
