"""Tests of the torch-free `torch.save` reader against fixtures written by real torch."""

import collections
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from video_diffusion.interop.torch_pickle import UnsafeCheckpointError, load_torch_file

pytestmark = pytest.mark.optimized  # compiled as users' runs are (tests/conftest.py)

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'
SAMPLE = FIXTURES / 'torch_pickle_sample.pt'


def _flatten(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, np.ndarray):
      yield f'{prefix}{key}', value
    elif isinstance(value, dict):
      yield from _flatten(value, f'{prefix}{key}/')


def test_arrays_match_torch():
  data = load_torch_file(SAMPLE)
  got = dict(_flatten(data))
  expected = np.load(FIXTURES / 'torch_pickle_sample_expected.npz')
  assert sorted(got) == sorted(expected.files)
  for key in expected.files:
    want = expected[key]
    assert got[key].dtype == want.dtype, key
    assert got[key].shape == want.shape, key
    assert got[key].flags.c_contiguous, key
    np.testing.assert_array_equal(got[key], want, err_msg=key, strict=True)
  # The view shares the base tensor's storage: offset 8, strides (1, 6) in elements.
  np.testing.assert_array_equal(got['extra/view'], got['extra/base'][1:, 2:5].T)


def test_non_tensor_values():
  data = load_torch_file(str(SAMPLE))
  assert isinstance(data, dict)
  assert data['step'] == 7 and type(data['step']) is int
  assert data['scaler'] == {}
  assert data['lst'] == [1, 2.5, 'x', None, True]
  assert type(data['lst'][4]) is bool
  assert isinstance(data['model'], collections.OrderedDict)
  assert list(data['model']) == [
    'table',
    'linear.weight',
    'linear.bias',
    'conv.weight',
    'conv.bias',
  ]
  assert not hasattr(data['model'], '_metadata')
  assert data['extra']['scalar'].shape == () and data['extra']['scalar'] == 3.5


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def _write_zip(path, pkl, folder='archive'):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr(f'{folder}/data.pkl', pkl)
    z.writestr(f'{folder}/byteorder', 'little')
    z.writestr(f'{folder}/version', '3\n')


def test_refuses_os_system(tmp_path, capfd):
  path = tmp_path / 'evil.pt'
  _write_zip(path, pickle.dumps({'model': _Evil()}, protocol=2))
  with pytest.raises(UnsafeCheckpointError, match=r'system.*evil\.pt') as info:
    load_torch_file(path)
  assert isinstance(info.value, pickle.UnpicklingError)
  assert 'pwned' not in capfd.readouterr().out


@pytest.mark.parametrize(
  'module, name',
  [
    ('builtins', 'eval'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('torch._utils', '_rebuild_from_type_v2'),
  ],
)
def test_refuses_other_globals(tmp_path, module, name):
  path = tmp_path / 'other.pt'
  _write_zip(path, b'\x80\x02c' + f'{module}\n{name}\n'.encode() + b')R.')
  with pytest.raises(UnsafeCheckpointError, match=f'{module}.{name}'):
    load_torch_file(path)


def test_reads_other_folder_names(tmp_path):
  path = tmp_path / 'renamed.pt'
  with zipfile.ZipFile(SAMPLE) as src, zipfile.ZipFile(path, 'w') as dst:
    for info in src.infolist():
      if not info.filename.endswith('/byteorder'):  # missing byteorder means little
        dst.writestr('archive/' + info.filename.split('/', 1)[1], src.read(info))
  np.testing.assert_array_equal(
    load_torch_file(path)['extra']['view'], load_torch_file(SAMPLE)['extra']['view']
  )


def test_refuses_legacy_format(tmp_path):
  path = tmp_path / 'legacy.pt'
  path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b'rest')
  with pytest.raises(ValueError, match='legacy.*torch >= 1.6'):
    load_torch_file(path)
  path.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='not a torch zip checkpoint'):
    load_torch_file(path)


def test_missing_file(tmp_path):
  path = tmp_path / 'nope.pt'
  with pytest.raises(FileNotFoundError, match='nope.pt'):
    load_torch_file(path)


def test_out_of_bounds_view_is_refused(tmp_path):
  # A tensor claiming more elements than its 2-element storage holds.
  pkl = (
    b'\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage'
    b'ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x05\x85K\x01'
    b'\x85\x89ccollections\nOrderedDict\n)RtR.'
  )
  path = tmp_path / 'oob.pt'
  _write_zip(path, pkl)
  with zipfile.ZipFile(path, 'a') as z:
    z.writestr('archive/data/0', np.zeros(2, '<f4').tobytes())
  with pytest.raises(pickle.UnpicklingError, match='overruns'):
    load_torch_file(path)
