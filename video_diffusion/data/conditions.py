"""The condition of each training video: record key 'cond' of conditional configs.

The condition kind (conditions.kinds.ConditionSpec) says what 'cond' holds:
'class', an int32 () label; 'vector', float32 (cond_dim,); 'text', a 0-d
numpy unicode string (np.str_ array); None, no 'cond' key. Batched by grain:
(b,) int32, (b, cond_dim) float32, (b,) unicode.
`FolderConditions` finds and reads the conditions of a folder dataset,
`add_synthetic_condition` makes those of the synthetic digits. numpy only
(runs in grain worker processes).
"""

from __future__ import annotations

import os

import numpy as np

from video_diffusion.conditions.kinds import KIND_KEYS
from video_diffusion.data.errors import DataError
from video_diffusion.data.synthetic import caption

__all__ = ['FolderConditions', 'add_synthetic_condition', 'check_synthetic']

SYNTHETIC_CLASSES = 10


def _beside(path: str, extension: str) -> str:
  """The file next to a video with its name and another extension: {clip}.npy, {clip}.txt."""
  return os.path.splitext(path)[0] + extension


def _load_vector(path: str, cond_dim: int | None) -> np.ndarray:
  try:
    vector = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot read the condition vector as a .npy array: {e}') from None
  if (
    not isinstance(vector, np.ndarray)
    or vector.dtype.kind not in 'biuf'
    or vector.ndim != 1
    or cond_dim is not None
    and vector.shape != (cond_dim,)
  ):
    found = (
      f'{vector.dtype} array of shape {vector.shape}'
      if isinstance(vector, np.ndarray)
      else type(vector).__name__
    )
    raise DataError(
      f'{path}: the condition vector must be a float array of shape ({cond_dim},) '
      f'(unet.cond_dim); found {found}'
    )
  return vector.astype(np.float32)


def _read_text(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read().strip()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{path}: cannot read the text condition (UTF-8): {e}') from None


class FolderConditions:
  """The conditions of the videos `paths` (sorted) of the folder dataset `folder`.

  'class': the index of a video's parent folder (relative to `folder`, '' for
  the root) among the sorted `class_names`; 'vector': {clip}.npy beside the
  video, float32 (cond_dim,); 'text': the stripped text of {clip}.txt beside
  it, or with `path_as_cond` its parent folder's name with '_' and '-' as
  spaces. Missing files, too many classes or bad vectors raise DataError
  here, before training starts. Cheap to pickle: one int32 per video at most.
  """

  def __init__(
    self,
    folder: str,
    paths: list[str],
    kind: str | None,
    *,
    num_classes: int | None = None,
    cond_dim: int | None = None,
    path_as_cond: bool = False,
  ):
    self.kind, self._cond_dim, self._path_as_cond = kind, cond_dim, path_as_cond
    parents = [os.path.dirname(os.path.relpath(p, folder)).replace(os.sep, '/') for p in paths]
    self.class_names = sorted(set(parents))
    self._labels = None
    if kind == 'class':
      n = len(self.class_names)
      if num_classes is not None and n > num_classes:
        shown = ', '.join(map(repr, self.class_names[:5])) + (', ...' if n > 5 else '')
        raise DataError(
          f'{folder}: {n} class folders ({shown}) but unet.num_classes is '
          f'{num_classes}; set unet.num_classes to at least {n}, or keep only '
          f'{num_classes} folders of videos'
        )
      index = {name: i for i, name in enumerate(self.class_names)}
      self._labels = np.array([index[p] for p in parents], np.int32)
    elif kind == 'vector' or kind == 'text' and not path_as_cond:
      extension = '.npy' if kind == 'vector' else '.txt'
      missing = [f for f in (_beside(p, extension) for p in paths) if not os.path.isfile(f)]
      if missing:
        need = (
          f'a float ({cond_dim},) vector in {{clip}}.npy'
          if kind == 'vector'
          else 'its text in {clip}.txt (or set trainer.use_path_as_cond: true to use the '
          'parent folder names)'
        )
        raise DataError(
          f'{missing[0]}: condition file not found ({len(missing)} of {len(paths)} '
          f'videos lack one); with {KIND_KEYS[kind]} each video needs {need} '
          'beside it, with the same name'
        )
      if kind == 'vector':
        for path in paths:
          _load_vector(_beside(path, '.npy'), cond_dim)

  def __call__(self, index: int, path: str) -> np.ndarray | None:
    """The condition of video `index`, `path` (None when unconditional)."""
    if self.kind == 'class':
      return np.array(self._labels[index], np.int32)
    if self.kind == 'vector':
      return _load_vector(_beside(path, '.npy'), self._cond_dim)
    if self.kind == 'text' and self._path_as_cond:
      name = os.path.basename(os.path.dirname(os.path.abspath(path)))
      return np.array(name.replace('_', ' ').replace('-', ' '))
    if self.kind == 'text':
      return np.array(_read_text(_beside(path, '.txt')))
    return None


def check_synthetic(kind: str | None, num_classes: int | None, cond_dim: int | None) -> None:
  """DataError unless the synthetic digits can give `kind` conditions of this size."""
  if kind == 'class' and num_classes is not None and num_classes < SYNTHETIC_CLASSES:
    raise DataError(
      f'the synthetic digits have {SYNTHETIC_CLASSES} classes (0-9) but '
      f'unet.num_classes is {num_classes}; set unet.num_classes: 10'
    )
  if kind == 'vector' and cond_dim != SYNTHETIC_CLASSES:
    raise DataError(
      f'the synthetic digits give {SYNTHETIC_CLASSES}-wide condition vectors '
      f'(multi-hot of the digits shown) but unet.cond_dim is {cond_dim}; set '
      'unet.cond_dim: 10'
    )


def add_synthetic_condition(kind: str | None, record: dict, max_digits: int) -> dict:
  """Add 'cond' to a synthetic.moving_digits record (made with max_digits=1 for 'class').

  'class': the digit's class, 'label' and 'velocity' padded to max_digits
  (-1, zeros); 'vector': the float32 (10,) multi-hot of the digits shown;
  'text': synthetic.caption(label, velocity).
  """
  label = record['label']
  if kind == 'class':
    pad = max_digits - len(label)
    record['label'] = np.pad(label, (0, pad), constant_values=-1)
    record['velocity'] = np.pad(record['velocity'], ((0, pad), (0, 0)))
    record['cond'] = np.array(label[0], np.int32)
  elif kind == 'vector':
    record['cond'] = np.zeros((SYNTHETIC_CLASSES,), np.float32)
    record['cond'][label[label >= 0]] = 1
  elif kind == 'text':
    record['cond'] = np.array(caption(label, record['velocity']))
  return record
