"""The grain input pipeline: video sources, preprocessing, sharded batches.

Every source returns records {'video': uint8 (f, h, w, c), 'label': int32
(MAX_DIGITS,), 'velocity': float32 (MAX_DIGITS, 2)}; only the synthetic
digits have real labels (-1 and zeros elsewhere), so batches of every source
share one structure. A conditional config (`condition_kind`) adds 'cond': an
int32 () class, a float32 (cond_dim,) vector or a 0-d numpy unicode text,
batched as (b,) int32, (b, cond_dim) float32 or (b,) unicode (see
data_cond). `Preprocess` casts a record to the configured frames, size and
channels, and `make_loader` shuffles, shards by process and batches.
This module does not import JAX (it runs in grain worker processes); process
index and count are arguments.
"""

from __future__ import annotations

import json
import os
import warnings

from absl import flags
import grain
import numpy as np
from PIL import Image

from video_diffusion.data_cond import (KIND_KEYS, FolderConditions, add_synthetic_condition,
                                       check_synthetic, condition_kind)
from video_diffusion.synthetic import moving_digits
from video_diffusion.video_io import VIDEO_EXTENSIONS, VideoReadError, read_video

__all__ = ['DataError', 'MAX_DIGITS', 'MovingMnistSource', 'Preprocess', 'SyntheticDigitsSource',
           'UnreadableVideoWarning', 'VideoFolderSource', 'close_iterator', 'condition_kind',
           'iterator_state', 'make_loader', 'make_source', 'restore_iterator']

MAX_DIGITS = 2


class DataError(ValueError):
  """A dataset or loader setting that cannot be used; the message names the path or numbers."""


class UnreadableVideoWarning(UserWarning):
  """A video file of a folder dataset was skipped because it cannot be decoded."""


def _record(video: np.ndarray) -> dict[str, np.ndarray]:
  return {'video': video, 'label': np.full((MAX_DIGITS,), -1, np.int32),
          'velocity': np.zeros((MAX_DIGITS, 2), np.float32)}


class MovingMnistSource:
  """Moving MNIST .npy: uint8 (frames, sequences, h, w) as published (20, 10000, 64, 64).

  A 5-D uint8 array is read as (sequences, frames, h, w, channels). The file
  is memory-mapped (and re-opened after pickling); one record per sequence.
  """

  def __init__(self, path: str | os.PathLike):
    self._path = os.fspath(path)
    self._array = self._open()
    self._length = self._array.shape[1] if self._array.ndim == 4 else self._array.shape[0]

  def _open(self) -> np.ndarray:
    try:
      array = np.load(self._path, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as e:
      raise DataError(f'{self._path}: cannot read as a .npy array: {e}') from None
    expected = ('expected uint8 (frames, sequences, height, width) as in Moving MNIST '
                '(20, 10000, 64, 64), or uint8 (sequences, frames, height, width, channels)')
    if not isinstance(array, np.ndarray) or array.ndim not in (4, 5) or array.dtype != np.uint8:
      found = (f'{array.dtype} array of shape {array.shape}' if isinstance(array, np.ndarray)
               else type(array).__name__)
      raise DataError(f'{self._path}: {expected}; found {found}')
    if 0 in array.shape:
      raise DataError(f'{self._path}: {expected}; found an empty array of shape {array.shape}')
    return array

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if self._array is None:
      self._array = self._open()
    if self._array.ndim == 4:
      return _record(np.array(self._array[:, index, :, :, None]))
    return _record(np.array(self._array[index]))

  @property
  def cond_kind(self) -> None:
    return None  # no labels or texts

  def __getstate__(self):
    return {**self.__dict__, '_array': None}

  def __repr__(self) -> str:
    return f'MovingMnistSource(path={self._path!r})'


class VideoFolderSource:
  """Every video file under a folder (recursive, sorted by relative path).

  A file that cannot be decoded is skipped with one UnreadableVideoWarning
  (per file and process) and the next readable file (index + 1, wrapping) is
  returned in its place, with its condition, so batches stay full.

  `cond` adds each video's condition as record key 'cond' (see
  data_cond.FolderConditions): 'class', the index of its parent folder among
  `class_names`; 'vector', {clip}.npy beside it; 'text', {clip}.txt beside
  it or (path_as_cond) its parent folder's name.
  """

  def __init__(self, folder: str | os.PathLike, *, cond: str | None = None,
               num_classes: int | None = None, cond_dim: int | None = None,
               path_as_cond: bool = False):
    self._folder = os.fspath(folder)
    found = []
    for root, dirs, files in os.walk(self._folder):
      dirs.sort()
      found += [os.path.join(root, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
    if not found:
      raise DataError(f'{self._folder}: no video files found (searched recursively for '
                      f"{', '.join(VIDEO_EXTENSIONS)})")
    self._paths = sorted(found, key=lambda p: os.path.relpath(p, self._folder))
    self._unreadable: set[str] = set()
    self._conditions = FolderConditions(self._folder, self._paths, cond, num_classes=num_classes,
                                        cond_dim=cond_dim, path_as_cond=path_as_cond)

  @property
  def paths(self) -> list[str]:
    return list(self._paths)

  @property
  def class_names(self) -> list[str]:
    """The sorted distinct parent folders (relative, '/'-separated); class k is class_names[k]."""
    return list(self._conditions.class_names)

  @property
  def cond_kind(self) -> str | None:
    return self._conditions.kind

  def condition(self, index: int) -> np.ndarray | None:
    """The 'cond' of paths[index] (None when unconditional), without decoding the video."""
    return self._conditions(index, self._paths[index])

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    for step in range(len(self._paths)):
      i = (index + step) % len(self._paths)
      path = self._paths[i]
      if path in self._unreadable:
        continue
      try:
        record = _record(read_video(path))
      except VideoReadError as e:
        self._unreadable.add(path)
        warnings.warn(f'skipping unreadable video {path}: {e.reason}', UnreadableVideoWarning,
                      stacklevel=2)
        continue
      if self.cond_kind is not None:
        record['cond'] = self.condition(i)
      return record
    raise DataError(f'{self._folder}: none of the {len(self._paths)} video files can be read')

  def __getstate__(self):
    return {**self.__dict__, '_unreadable': set()}

  def __repr__(self) -> str:
    cond = '' if self.cond_kind is None else f', cond={self.cond_kind!r}'
    return f'VideoFolderSource(folder={self._folder!r}, files={len(self._paths)}{cond})'


class SyntheticDigitsSource:
  """Moving digits made on the fly by synthetic.moving_digits(seed, index, ...).

  `cond` adds 'cond' (see data_cond.add_synthetic_condition): 'class', the
  class of the clip's one digit; 'vector', the multi-hot of the digits shown;
  'text', their synthetic.caption.
  """

  def __init__(self, seed: int, num_frames: int, image_size: int, channels: int,
               length: int = 2 ** 20, *, cond: str | None = None, num_classes: int | None = None,
               cond_dim: int | None = None):
    check_synthetic(cond, num_classes, cond_dim)
    self._args = dict(seed=seed, num_frames=num_frames, image_size=image_size,
                      channels=channels, length=length)
    if cond is not None:  # unconditional: the repr (part of iterator states) stays as it was
      self._args['cond'] = cond

  @property
  def cond_kind(self) -> str | None:
    return self._args.get('cond')

  def __len__(self) -> int:
    return self._args['length']

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    a, cond = self._args, self.cond_kind
    record = moving_digits(a['seed'], int(index), num_frames=a['num_frames'],
                           image_size=a['image_size'], channels=a['channels'],
                           max_digits=1 if cond == 'class' else MAX_DIGITS)
    return add_synthetic_condition(cond, record, MAX_DIGITS)

  def __repr__(self) -> str:
    return 'SyntheticDigitsSource(' + ', '.join(f'{k}={v}' for k, v in self._args.items()) + ')'


class Preprocess(grain.transforms.RandomMap):
  """Cast a record's video to (num_frames, image_size, image_size, channels) uint8.

  Frames: a random window of num_frames when longer; when shorter, the last
  frame is repeated. Space: the centred square of side min(h, w) is resized to
  image_size with Pillow's bilinear filter (antialiased when shrinking), i.e.
  resize the shorter side then centre-crop. Channels: RGB -> 1 by ITU-R 601
  luma (as Pillow's 'L'), grey -> 3 by repetition.
  """

  def __init__(self, num_frames: int, image_size: int, channels: int):
    if channels not in (1, 3):
      raise DataError(f'channels must be 1 (grey) or 3 (RGB) for video data, got {channels}')
    self.num_frames, self.image_size, self.channels = num_frames, image_size, channels

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    video = np.asarray(element['video'])
    f, h, w, c = video.shape
    if f > self.num_frames:
      start = int(rng.integers(0, f - self.num_frames + 1))
      video = video[start:start + self.num_frames]
    elif f < self.num_frames:
      video = np.concatenate([video, np.repeat(video[-1:], self.num_frames - f, axis=0)])
    if c == 3 and self.channels == 1:
      luma = video.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      video = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    elif c not in (1, 3):
      raise DataError(f'videos must have 1 or 3 channels, got shape {video.shape}')
    s = self.image_size
    if (h, w) != (s, s):
      side = min(h, w)
      box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
      video = np.stack([self._resize(frame, box) for frame in video])
    if video.shape[-1] == 1 and self.channels == 3:
      video = np.repeat(video, 3, axis=-1)
    return {**element, 'video': np.ascontiguousarray(video)}

  def _resize(self, frame: np.ndarray, box) -> np.ndarray:
    grey = frame.shape[-1] == 1
    image = Image.fromarray(frame[..., 0] if grey else frame, 'L' if grey else 'RGB')
    out = np.asarray(image.resize((self.image_size,) * 2, Image.Resampling.BILINEAR, box=box))
    return out[..., None] if grey else out


def make_source(cfg) -> grain.sources.RandomAccessDataSource:
  """The source named by cfg.trainer.dataset_path, with the conditions the model needs.

  null -> SyntheticDigitsSource (seed cfg.trainer.seed); a path ending in
  .npy -> MovingMnistSource (unconditional only); a folder -> VideoFolderSource.
  """
  t, u, kind = cfg.trainer, cfg.unet, condition_kind(cfg)
  if t.dataset_path is None:
    return SyntheticDigitsSource(t.seed, t.num_frames, t.image_size, t.channels, cond=kind,
                                 num_classes=u.num_classes, cond_dim=u.cond_dim)
  path = os.path.expanduser(t.dataset_path)
  accepted = ('trainer.dataset_path must be a .npy array in Moving MNIST layout, a folder of '
              f"videos ({', '.join(VIDEO_EXTENSIONS)}), or null for synthetic moving digits")
  if os.path.isdir(path):
    return VideoFolderSource(path, cond=kind, num_classes=u.num_classes, cond_dim=u.cond_dim,
                             path_as_cond=t.use_path_as_cond)
  if not os.path.exists(path):
    raise DataError(f'{path}: dataset not found; {accepted}')
  if path.lower().endswith('.npy') and kind is not None:
    raise DataError(f'{path}: a Moving MNIST .npy has no labels or texts, so it cannot train a '
                    f'{kind}-conditional model ({KIND_KEYS[kind]} is set); use a folder dataset '
                    'or the synthetic digits (trainer.dataset_path: null), or an unconditional '
                    'model')
  if path.lower().endswith('.npy'):
    return MovingMnistSource(path)
  raise DataError(f'{path}: not a .npy file or a folder; {accepted}')


def make_loader(cfg, *, seed: int, process_index: int = 0, process_count: int = 1,
                worker_count: int | None = None, num_epochs: int | None = None,
                source: grain.sources.RandomAccessDataSource | None = None) -> grain.DataLoader:
  """A shuffled, repeating (num_epochs=None) loader of this process's batches.

  Each batch holds train_batch_size * gradient_accumulate_every // process_count
  preprocessed records (remainders dropped); process `process_index` of
  `process_count` reads a disjoint shard. worker_count (grain worker
  processes, 0 = in this process) defaults to cfg.trainer.data_workers.
  `source` defaults to make_source(cfg). Batches hold 'cond' when
  condition_kind(cfg) is not None (see the module docstring).
  """
  t = cfg.trainer
  total = t.train_batch_size * t.gradient_accumulate_every
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f'process_index must be in [0, process_count), got {process_index} of '
                    f'{process_count}')
  if total % process_count:
    raise DataError(f'train_batch_size * gradient_accumulate_every = {t.train_batch_size} * '
                    f'{t.gradient_accumulate_every} = {total} is not divisible by the '
                    f'{process_count} processes')
  if not 0 <= seed < 2 ** 32:
    raise DataError(f'the data seed must be in [0, 2**32), got {seed}')
  source = make_source(cfg) if source is None else source
  kind = condition_kind(cfg)
  if getattr(source, 'cond_kind', kind) != kind:
    raise DataError(f'{source!r} gives {source.cond_kind or "no"} conditions but the config asks '
                    f'for {kind or "none"} (unet.num_classes / cond_dim / use_bert_text_cond); '
                    'make the source with make_source(cfg)')
  if len(source) < process_count:
    raise DataError(f'{source!r} has {len(source)} records, fewer than the {process_count} '
                    'processes that share it')
  shard = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count,
                                      drop_remainder=True)
  sampler = grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=True,
                                        num_epochs=num_epochs, seed=seed)
  batch = total // process_count
  operations = [Preprocess(t.num_frames, t.image_size, t.channels),
                grain.transforms.Batch(batch_size=batch, drop_remainder=True)]
  workers = t.data_workers if worker_count is None else worker_count
  if workers and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker start reads an absl flag; use its default
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations, worker_count=workers,
      shard_options=shard,
      read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch))


def iterator_state(iterator) -> dict:
  """The position of a loader iterator as a JSON-able dict."""
  return json.loads(iterator.get_state().decode())


def restore_iterator(loader: grain.DataLoader, state: dict):
  """A new iterator of `loader` that continues from iterator_state(...) of an earlier one.

  The loader must match the saved one (same source, sampler, seed, shard and
  worker count); otherwise DataError says what differs.
  """
  iterator = iter(loader)
  try:
    iterator.set_state(json.dumps(state).encode())
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f'cannot continue the saved data iterator with this loader (keep '
                    f'trainer.dataset_path, seed and data_workers as they were): {e}') from e
  return iterator


def close_iterator(iterator) -> None:
  """Stop a loader iterator's worker processes and threads now (not at garbage collection)."""
  inner = getattr(iterator, '_iterator', None)  # grain.DataLoaderIterator has no close()
  if inner is not None:
    inner.close()
