"""Reads `torch.save` zip checkpoints (torch >= 1.6) into numpy, without torch.

Only a whitelist of pickle globals is honoured (tensors, storages, OrderedDict);
anything else raises `UnsafeCheckpointError`, so nothing in the file is executed.
"""

from __future__ import annotations

import collections
import operator
import os
import pickle
import zipfile

import numpy as np

# torch storage class -> (numpy dtype of the stored bytes, bfloat16?)
_STORAGES = {
  'FloatStorage': ('f4', False),
  'DoubleStorage': ('f8', False),
  'HalfStorage': ('f2', False),
  'BFloat16Storage': ('u2', True),
  'LongStorage': ('i8', False),
  'IntStorage': ('i4', False),
  'ShortStorage': ('i2', False),
  'CharStorage': ('i1', False),
  'ByteStorage': ('u1', False),
  'BoolStorage': ('?', False),
  'UntypedStorage': ('u1', False),
}
_DTYPES = (
  'float32',
  'float64',
  'float16',
  'bfloat16',
  'int64',
  'int32',
  'int16',
  'int8',
  'uint8',
  'bool',
  'float',
  'double',
  'half',
  'long',
  'int',
  'short',
)


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint's pickle names a global outside the whitelist."""


class _StorageType:
  """Stands for a `torch.*Storage` class during unpickling."""

  __slots__ = ('name',)

  def __init__(self, name):
    self.name = name


class _Storage:
  __slots__ = ('data', 'bf16')

  def __init__(self, data, bf16):
    self.data, self.bf16 = data, bf16


class _Tensor:
  """A tensor to be materialised once unpickling is done; refuses BUILD."""

  __slots__ = ('array',)
  __hash__ = None

  def __init__(self, array):
    self.array = array


class _StateDict(collections.OrderedDict):
  """OrderedDict whose pickled state (a state dict's `_metadata`) is dropped."""

  def __setstate__(self, state):
    pass


def _rebuild_tensor_v2(
  storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None
):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError('tensor rebuilt from something that is not a storage')
  offset = operator.index(offset)
  size, stride = [operator.index(s) for s in size], [operator.index(s) for s in stride]
  data = storage.data
  if len(size) != len(stride) or min(size + stride + [offset], default=0) < 0:
    raise pickle.UnpicklingError(f'bad tensor geometry: size {size}, stride {stride}')
  if 0 in size:
    array = np.zeros(size, data.dtype)
  else:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
      raise pickle.UnpicklingError(
        f'tensor of size {size}, stride {stride}, offset {offset} overruns its storage '
        f'of {data.size} elements'
      )
    item = data.itemsize
    array = np.lib.stride_tricks.as_strided(
      data[offset:], size, [s * item for s in stride], writeable=False
    ).copy()
  if storage.bf16:
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return _Tensor(array)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive, prefix, byteorder, path):
    super().__init__(file)
    self._archive, self._prefix, self._byteorder, self._path = archive, prefix, byteorder, path
    self._names, self._storages = set(archive.namelist()), {}

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return _StateDict
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _rebuild_tensor_v2
    if module == 'torch._utils' and name in ('_rebuild_parameter', '_rebuild_parameter_with_state'):
      return _rebuild_parameter
    if module in ('torch', 'torch.storage') and name in _STORAGES:
      return _StorageType(name)
    if module == 'torch' and name in _DTYPES:
      return f'torch.{name}'
    if module == 'torch' and name.endswith('Storage'):
      raise pickle.UnpicklingError(f'{self._path}: unsupported tensor type torch.{name}')
    raise UnsafeCheckpointError(
      f'refusing to load global {module}.{name} from {self._path}: only tensors, storages and '
      'OrderedDict are allowed in a checkpoint'
    )

  def persistent_load(self, pid):
    if not (
      isinstance(pid, tuple)
      and len(pid) == 5
      and pid[0] == 'storage'
      and isinstance(pid[1], _StorageType)
      and isinstance(pid[2], str)
    ):
      raise pickle.UnpicklingError(f'{self._path}: unexpected persistent id {pid!r}')
    key = pid[2]
    if key not in self._storages:
      name = f'{self._prefix}data/{key}'
      if name not in self._names:
        raise pickle.UnpicklingError(f'{self._path}: storage {name} missing from the archive')
      code, bf16 = _STORAGES[pid[1].name]
      dtype = np.dtype(code if code == '?' else self._byteorder + code)
      raw = self._archive.read(name)
      if len(raw) % dtype.itemsize:
        raise pickle.UnpicklingError(f'{self._path}: storage {name} has a partial element')
      data = np.frombuffer(raw, np.uint8) != 0 if code == '?' else np.frombuffer(raw, dtype)
      self._storages[key] = _Storage(data.astype(dtype.newbyteorder('=')), bf16)
    return self._storages[key]


def _materialise(obj, memo):
  """Turns the unpickled tree's tensors into arrays and state dicts into OrderedDicts."""
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _Tensor):
    out = memo[id(obj)] = obj.array
  elif isinstance(obj, dict):
    out = memo[id(obj)] = collections.OrderedDict() if isinstance(obj, _StateDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v, memo)
  elif isinstance(obj, list):
    out = memo[id(obj)] = []
    out.extend(_materialise(v, memo) for v in obj)
  elif isinstance(obj, tuple):
    out = memo[id(obj)] = tuple(_materialise(v, memo) for v in obj)
  elif isinstance(obj, (_Storage, _StorageType)):
    raise pickle.UnpicklingError('bare torch storages are not supported; save tensors instead')
  else:
    out = obj
  return out


def load_torch_file(path: str | os.PathLike) -> object:
  """Loads a `torch.save` zip file; tensors come back as contiguous numpy arrays.

  bfloat16 tensors are widened to float32. Raises FileNotFoundError for a missing
  file, ValueError for a file that is not a torch zip checkpoint (e.g. the legacy
  pre-1.6 format) and UnsafeCheckpointError for a pickle naming other globals.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(4)
    if not head.startswith(b'PK'):
      hint = (
        '; this looks like the legacy (torch < 1.6) format: re-save it with torch >= 1.6 '
        'and the default zipfile serialization (torch.save(obj, path))'
        if head.startswith(b'\x80')
        else ''
      )
      raise ValueError(f'{path} is not a torch zip checkpoint{hint}')
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
      pkls = [n for n in archive.namelist() if n.count('/') == 1 and n.endswith('/data.pkl')]
      if len(pkls) != 1:
        raise ValueError(f'{path}: expected one <folder>/data.pkl in the archive, found {pkls}')
      prefix = pkls[0][: -len('data.pkl')]
      has_order = prefix + 'byteorder' in archive.namelist()
      order = archive.read(prefix + 'byteorder').decode() if has_order else 'little'
      if order not in ('little', 'big'):
        raise ValueError(f'{path}: unknown byteorder {order!r}')
      with archive.open(pkls[0]) as pkl:
        unpickler = _Unpickler(pkl, archive, prefix, '<' if order == 'little' else '>', path)
        obj = unpickler.load()
  return _materialise(obj, {})
