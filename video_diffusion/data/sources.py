"""Video sources: Moving MNIST .npy, folders of video files, synthetic digits.

Every source returns records {'video': uint8 (f, h, w, c), 'label': int32
(MAX_DIGITS,), 'velocity': float32 (MAX_DIGITS, 2)}; only the synthetic
digits have real labels (-1 and zeros elsewhere), so batches of every source
share one structure. A conditional model's sources add 'cond' (see
data.conditions). numpy, Pillow and PyAV only (runs in grain worker processes).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from video_diffusion.conditions.kinds import KIND_KEYS
from video_diffusion.data.clips import ClipSampling
from video_diffusion.data.conditions import (
  FolderConditions,
  add_synthetic_condition,
  check_synthetic,
)
from video_diffusion.data.errors import DataError, ShortVideoWarning, UnreadableVideoWarning
from video_diffusion.data.records import MAX_DIGITS, video_record
from video_diffusion.data.shards import PackedSource, is_packed
from video_diffusion.data.spec import DataSpec
from video_diffusion.data.synthetic import moving_digits
from video_diffusion.data.video_io import (
  IMAGE_EXTENSIONS,
  VIDEO_EXTENSIONS,
  VideoInfo,
  VideoReadError,
  probe_video,
  read_frames,
  read_video,
)

__all__ = [
  'MAX_DIGITS',
  'MovingMnistSource',
  'SyntheticDigitsSource',
  'VideoFolderSource',
  'make_source',
]


class MovingMnistSource:
  """Moving MNIST .npy: uint8 (frames, sequences, h, w) as published (20, 10000, 64, 64).

  A 5-D uint8 array is read as (sequences, frames, h, w, channels). The file
  is memory-mapped (and re-opened after pickling); one record per sequence.
  """

  def __init__(self, path: str | os.PathLike, clips: ClipSampling | None = None):
    self._path = os.fspath(path)
    self._array = self._open()
    layout = (1, 0) if self._array.ndim == 4 else (0, 1)  # axes of (sequences, frames)
    self._sequences, self._length = (self._array.shape[axis] for axis in layout)
    self._clips = clips
    if clips is not None:
      clips.step(None)  # refuses fps: an array has no frame rate

  def _open(self) -> np.ndarray:
    try:
      array = np.load(self._path, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as e:
      raise DataError(f'{self._path}: cannot read as a .npy array: {e}') from None
    expected = (
      'expected uint8 (frames, sequences, height, width) as in Moving MNIST '
      '(20, 10000, 64, 64), or uint8 (sequences, frames, height, width, channels)'
    )
    if not isinstance(array, np.ndarray) or array.ndim not in (4, 5) or array.dtype != np.uint8:
      found = (
        f'{array.dtype} array of shape {array.shape}'
        if isinstance(array, np.ndarray)
        else type(array).__name__
      )
      raise DataError(f'{self._path}: {expected}; found {found}')
    if 0 in array.shape:
      raise DataError(f'{self._path}: {expected}; found an empty array of shape {array.shape}')
    return array

  def __len__(self) -> int:
    return self._sequences * (self._clips.clips_per_video if self._clips else 1)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Sequence `index` whole, or with clip sampling a reference to clip `index` (ReadClip)."""
    if self._clips is not None:
      return {'clip': np.int64(index)}
    return video_record(self._frames(index, slice(None)))

  def _frames(self, sequence: int, frames) -> np.ndarray:
    if self._array is None:
      self._array = self._open()
    if self._array.ndim == 4:
      return np.array(self._array[frames, sequence, :, :, None])
    return np.array(self._array[sequence, frames])

  def short_videos(self) -> list[str]:
    """The sequences with fewer frames than a clip spans (all or none: one length)."""
    if self._clips is None or self._length >= self._clips.span(None):
      return []
    return [f'{self._path}[{i}]' for i in range(self._sequences)]

  def read_clip(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Clip `index`: part index % clips_per_video of sequence index // clips_per_video;
    only its frames are read from the memory-mapped file."""
    sequence, part = divmod(index, self._clips.clips_per_video)
    frames = self._clips.indices(self._length, None, rng, part)
    return video_record(self._frames(sequence, frames))

  @property
  def cond_kind(self) -> None:
    return None  # no labels or texts

  @property
  def clips(self) -> ClipSampling | None:
    return self._clips

  def __getstate__(self):
    return {**self.__dict__, '_array': None}

  def __repr__(self) -> str:
    return f'MovingMnistSource(path={self._path!r})'


class VideoFolderSource:
  """Every video file under a folder (recursive, sorted by relative path).

  Without `clips`, record i is file i decoded whole. With `clips` (a
  ClipSampling), record i is a reference to clip i % clips_per_video of file
  i // clips_per_video, which ReadClip turns into the clip through
  read_clip(i, rng), decoding only its frames; the files' frame counts and
  rates are read from their headers when the source is made.

  A file that cannot be decoded is skipped with one UnreadableVideoWarning
  (per file and process) and the next readable file (index + 1, wrapping) is
  returned in its place, with its condition, so batches stay full.

  `cond` adds each video's condition as record key 'cond' (see
  data.conditions.FolderConditions): 'class', the index of its parent folder among
  `class_names`; 'vector', {clip}.npy beside it; 'text', {clip}.txt beside
  it or (path_as_cond) its parent folder's name.
  """

  def __init__(
    self,
    folder: str | os.PathLike,
    *,
    cond: str | None = None,
    num_classes: int | None = None,
    cond_dim: int | None = None,
    path_as_cond: bool = False,
    clips: ClipSampling | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
  ):
    self._folder = os.fspath(folder)
    found = []
    for root, dirs, files in os.walk(self._folder):
      dirs.sort()
      found += [os.path.join(root, f) for f in files if f.lower().endswith(extensions)]
    if not found:
      what = 'image' if extensions == IMAGE_EXTENSIONS else 'video'
      raise DataError(
        f'{self._folder}: no {what} files found (searched recursively for {", ".join(extensions)})'
      )
    self._paths = sorted(found, key=lambda p: os.path.relpath(p, self._folder))
    self._unreadable: dict[str, str] = {}  # path -> why it cannot be read
    self._conditions = FolderConditions(
      self._folder,
      self._paths,
      cond,
      num_classes=num_classes,
      cond_dim=cond_dim,
      path_as_cond=path_as_cond,
    )
    self._clips = clips
    self._infos: list[VideoInfo | None] = []
    if clips is not None:
      for path in self._paths:
        try:
          self._infos.append(probe_video(path))
        except VideoReadError as e:
          self._infos.append(None)
          self._skip(path, e.reason)
      if all(info is None for info in self._infos):
        self._none_readable()
      short = self.short_videos()
      if short:
        warnings.warn(
          f'{len(short)} of the {len(self._paths)} videos in {self._folder} are shorter than a '
          f'clip ({clips.describe()}; the first: {os.path.relpath(short[0], self._folder)}): '
          'their clips repeat their last frame',
          ShortVideoWarning,
          stacklevel=2,
        )

  @property
  def folder(self) -> str:
    return self._folder

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

  @property
  def clips(self) -> ClipSampling | None:
    return self._clips

  def short_videos(self) -> list[str]:
    """The readable files with fewer frames than a clip spans (padded with their last frame)."""
    return [
      path
      for path, info in zip(self._paths, self._infos)
      if info is not None and info.frames < self._clips.span(info.fps)
    ]

  def condition(self, index: int) -> np.ndarray | None:
    """The 'cond' of paths[index] (None when unconditional), without decoding the video."""
    return self._conditions(index, self._paths[index])

  def __len__(self) -> int:
    return len(self._paths) * (self._clips.clips_per_video if self._clips else 1)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """File `index` whole, or with clip sampling a reference to clip `index` (ReadClip)."""
    if self._clips is not None:
      return {'clip': np.int64(index)}
    return self._first_readable(index, lambda i: read_video(self._paths[i]))[1]

  def read_clip(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Clip `index`: part index % clips_per_video of file index // clips_per_video."""
    return self.read_clip_of_file(index, rng)[1]

  def read_clip_of_file(self, index: int, rng: np.random.Generator) -> tuple[int, dict]:
    """(file, record) of read_clip: the file read, the next readable one if need be."""
    file, part = divmod(index, self._clips.clips_per_video)

    def read(i):
      info = self._infos[i]
      return read_frames(self._paths[i], self._clips.indices(info.frames, info.fps, rng, part))

    return self._first_readable(file, read)

  def _first_readable(self, file: int, read) -> tuple[int, dict]:
    """(file, its record by read(file)), or those of the next file that can be read."""
    for step in range(len(self._paths)):
      i = (file + step) % len(self._paths)
      path = self._paths[i]
      if path in self._unreadable or (self._infos and self._infos[i] is None):
        continue  # warned of when found (its header: when the source was made)
      try:
        record = video_record(read(i))
      except VideoReadError as e:
        self._skip(path, e.reason)
        continue
      if self.cond_kind is not None:
        record['cond'] = self.condition(i)
      return i, record
    self._none_readable()

  def _skip(self, path: str, reason: str) -> None:
    self._unreadable[path] = reason
    warnings.warn(
      f'skipping unreadable video {path}: {reason}', UnreadableVideoWarning, stacklevel=3
    )

  def _none_readable(self):
    path, reason = next(iter(self._unreadable.items()))
    raise DataError(
      f'{self._folder}: none of the {len(self._paths)} video files can be read '
      f'({os.path.relpath(path, self._folder)}: {reason}); convert them to .mp4 or .gif '
      '(e.g. ffmpeg -i in.mov out.mp4) or point the dataset path at a folder of readable videos'
    )

  def __getstate__(self):
    return {**self.__dict__, '_unreadable': {}}

  def __repr__(self) -> str:
    cond = '' if self.cond_kind is None else f', cond={self.cond_kind!r}'
    return f'VideoFolderSource(folder={self._folder!r}, files={len(self._paths)}{cond})'


class SyntheticDigitsSource:
  """Moving digits made on the fly by synthetic.moving_digits(seed, index, ...).

  `cond` adds 'cond' (see data.conditions.add_synthetic_condition): 'class', the
  class of the clip's one digit; 'vector', the multi-hot of the digits shown;
  'text', their synthetic.caption.
  """

  def __init__(
    self,
    seed: int,
    num_frames: int,
    image_size: int,
    channels: int,
    length: int = 2**20,
    *,
    cond: str | None = None,
    num_classes: int | None = None,
    cond_dim: int | None = None,
  ):
    check_synthetic(cond, num_classes, cond_dim)
    self._args = dict(
      seed=seed, num_frames=num_frames, image_size=image_size, channels=channels, length=length
    )
    if cond is not None:  # unconditional: the repr (part of iterator states) stays as it was
      self._args['cond'] = cond

  @property
  def cond_kind(self) -> str | None:
    return self._args.get('cond')

  def __len__(self) -> int:
    return self._args['length']

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    a, cond = self._args, self.cond_kind
    record = moving_digits(
      a['seed'],
      int(index),
      num_frames=a['num_frames'],
      image_size=a['image_size'],
      channels=a['channels'],
      max_digits=1 if cond == 'class' else MAX_DIGITS,
    )
    return add_synthetic_condition(cond, record, MAX_DIGITS)

  def __repr__(self) -> str:
    return 'SyntheticDigitsSource(' + ', '.join(f'{k}={v}' for k, v in self._args.items()) + ')'


def make_source(spec: DataSpec):
  """The source of spec.dataset_path, with the conditions spec.condition asks for.

  None -> SyntheticDigitsSource (seed spec.seed); a path ending in .npy ->
  MovingMnistSource (unconditional only); a folder of `video-diffusion prepare`
  shards -> PackedSource; another folder -> VideoFolderSource. The file
  sources give clip references that record_ops' ReadClip reads.
  """
  c, kind = spec.condition, spec.condition.kind
  frames, size, _, channels = spec.video_shape
  clips = ClipSampling(frames, spec.frame_stride, spec.fps, spec.clips_per_video)
  if spec.dataset_path is None:
    if clips != ClipSampling(frames):
      raise DataError(
        'trainer.frame_stride, fps and clips_per_video cut clips from the videos of '
        'trainer.dataset_path; the synthetic digits (no dataset_path) are made at the '
        "model's frames: leave them at 1, null and 1"
      )
    return SyntheticDigitsSource(
      spec.seed, frames, size, channels, cond=kind, num_classes=c.num_classes, cond_dim=c.cond_dim
    )
  path = os.path.expanduser(spec.dataset_path)
  accepted = (
    'trainer.dataset_path must be a .npy array in Moving MNIST layout, a folder of '
    f'videos ({", ".join(VIDEO_EXTENSIONS)}), a folder made by video-diffusion prepare, '
    'or null for synthetic moving digits'
  )
  if is_packed(path):
    return PackedSource(
      path, spec.video_shape, cond=kind, num_classes=c.num_classes, cond_dim=c.cond_dim
    )
  if os.path.isdir(path):
    return VideoFolderSource(
      path,
      cond=kind,
      num_classes=c.num_classes,
      cond_dim=c.cond_dim,
      path_as_cond=spec.path_as_cond,
      clips=clips,
    )
  if not os.path.exists(path):
    raise DataError(f'{path}: dataset not found; {accepted}')
  if path.lower().endswith('.npy') and kind is not None:
    raise DataError(
      f'{path}: a Moving MNIST .npy has no labels or texts, so it cannot train a '
      f'{kind}-conditional model ({KIND_KEYS[kind]} is set); use a folder dataset '
      'or the synthetic digits (trainer.dataset_path: null), or an unconditional '
      'model'
    )
  if path.lower().endswith('.npy'):
    return MovingMnistSource(path, clips)
  raise DataError(f'{path}: not a .npy file or a folder; {accepted}')
