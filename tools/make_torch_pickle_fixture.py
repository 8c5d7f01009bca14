"""Writes the fixtures of tests/test_torch_pickle.py with real torch.

Optional tool, never needed by the package or its tests. Set-up (CPU torch):

  pip install torch==2.13.0 numpy
  python tools/make_torch_pickle_fixture.py

Writes tests/fixtures/torch_pickle_sample.pt (a small Trainer-like checkpoint)
and tests/fixtures/torch_pickle_sample_expected.npz (its arrays as torch gives
them, bfloat16 as float32, keyed by '/'-joined paths).
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / 'tests' / 'fixtures'


class Tiny(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.linear = torch.nn.Linear(4, 3)
    self.conv = torch.nn.Conv3d(2, 3, (1, 3, 3))
    self.register_buffer('table', torch.arange(6, dtype=torch.float32).reshape(2, 3))


def sample():
  torch.manual_seed(0)
  model, ema = Tiny(), Tiny()
  base = torch.randn(4, 6, dtype=torch.float32)
  return {
    'step': 7,
    'model': model.state_dict(),
    'ema': ema.state_dict(),
    'scaler': {},
    'extra': {
      'f64': torch.randn(3, 2, dtype=torch.float64),
      'f16': torch.randn(5, dtype=torch.float16),
      'bf16': torch.randn(2, 3).to(torch.bfloat16),
      'i64': torch.arange(-3, 3, dtype=torch.int64).reshape(2, 3),
      'i32': torch.tensor([-(2**31), 2**31 - 1, 5], dtype=torch.int32),
      'i16': torch.tensor([-300, 300], dtype=torch.int16),
      'i8': torch.tensor([-128, 127, 0], dtype=torch.int8),
      'u8': torch.tensor([0, 128, 255], dtype=torch.uint8),
      'bool': torch.tensor([[True, False], [False, True]]),
      'base': base,
      'view': base[1:, 2:5].t(),  # shares base's storage: offset 8, strides (1, 6)
      'scalar': torch.tensor(3.5),
      'empty': torch.zeros(0, 3),
    },
    'lst': [1, 2.5, 'x', None, True],
  }


def flatten(tree, prefix=''):
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, torch.Tensor):
      value = value.detach()
      yield path, (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    elif isinstance(value, dict):
      yield from flatten(value, path + '/')


def main():
  FIXTURES.mkdir(parents=True, exist_ok=True)
  data = sample()
  assert data['extra']['view'].storage_offset() == 8 and not data['extra']['view'].is_contiguous()
  pt, npz = FIXTURES / 'torch_pickle_sample.pt', FIXTURES / 'torch_pickle_sample_expected.npz'
  torch.save(data, pt)
  np.savez(npz, **dict(flatten(data)))
  for path in (pt, npz):
    print(f'wrote {path} ({path.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
