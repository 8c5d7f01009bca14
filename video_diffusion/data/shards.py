"""Packed shards: preprocessed uint8 clips in ArrayRecord files, read through grain.

A folder made by `video-diffusion prepare` holds `clips-KKKKK-of-MMMMM.array_record`
shards and `manifest.json` (written last): the clips' shape, count and
conditions, the source and the settings they were cut with. Each record is
a 4-byte little-endian header length, a JSON header (the video's shape and
the clip's conditions: 'class' index, 'text', 'vector') and the video's
bytes, channels-last (frames, height, width, channels). Shards of latents
(`prepare --vae`) hold float32 arrays instead, the header naming the dtype, and
the manifest's 'latents' says which autoencoder made them and what they hold
(the posterior's 'moments', mean and log-variance stacked on the channels, or a
'sample'). numpy and grain only (runs in grain worker processes).
"""

from __future__ import annotations

import json
import os
import struct

import grain
import numpy as np

from video_diffusion.conditions.kinds import KIND_KEYS
from video_diffusion.data.errors import DataError
from video_diffusion.data.records import video_record

__all__ = ['MANIFEST', 'PackedSource', 'decode_clip', 'encode_clip', 'is_packed', 'shard_name']

MANIFEST = 'manifest.json'
FORMAT = 'video-diffusion clips'


def shard_name(index: int, count: int) -> str:
  return f'clips-{index:05d}-of-{count:05d}.array_record'


def is_packed(path: str) -> bool:
  """Whether `path` is a folder of packed shards (it has a manifest)."""
  return os.path.isfile(os.path.join(path, MANIFEST))


def encode_clip(video: np.ndarray, conditions: dict) -> bytes:
  """One record: uint8 video (f, h, w, c), or float32 latents, and its conditions
  {kind: value}."""
  video = np.asarray(video)
  dtype = np.dtype(np.float32 if video.dtype.kind == 'f' else np.uint8)
  header = {'shape': list(video.shape)}
  if dtype != np.uint8:
    header['dtype'] = dtype.name
  for kind, value in conditions.items():
    header[kind] = np.asarray(value).tolist()
  text = json.dumps(header).encode()
  return struct.pack('<I', len(text)) + text + np.ascontiguousarray(video, dtype).tobytes()


def decode_clip(data: bytes) -> tuple[np.ndarray, dict]:
  """(video, conditions) of encode_clip's bytes."""
  (length,) = struct.unpack_from('<I', data)
  header = json.loads(data[4 : 4 + length])
  shape = tuple(header.pop('shape'))
  dtype = np.dtype(header.pop('dtype', 'uint8'))
  video = np.frombuffer(data, dtype, offset=4 + length).reshape(shape)
  return video, header


def read_manifest(folder: str) -> dict:
  try:
    with open(os.path.join(folder, MANIFEST), encoding='utf-8') as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{folder}: cannot read {MANIFEST}: {e}') from None
  if manifest.get('format') != FORMAT:
    raise DataError(f'{folder}: {MANIFEST} is not a manifest of `video-diffusion prepare`')
  return manifest


class PackedSource:
  """The clips of a `video-diffusion prepare` folder, by random access across its shards.

  `video_shape` (frames, size, size, channels) must be the clips' shape;
  `cond` picks the condition that records carry as 'cond' (it must have been
  packed: class folders, {clip}.txt or {clip}.npy beside the source videos).
  """

  def __init__(
    self,
    folder: str,
    video_shape: tuple[int, int, int, int],
    *,
    cond: str | None = None,
    num_classes: int | None = None,
    cond_dim: int | None = None,
  ):
    self._folder = folder
    manifest = read_manifest(folder)
    packed = tuple(manifest['video_shape'])
    if packed != tuple(video_shape):
      f, s, _, c = packed
      raise DataError(
        f'{folder} holds clips of {f} frames of {s}x{s} with {c} channels but the config '
        f'asks for {video_shape[0]} frames of {video_shape[1]}x{video_shape[2]} with '
        f'{video_shape[3]}: set diffusion.num_frames: {f}, image_size: {s} and channels: {c}, '
        'or run video-diffusion prepare again with the sizes of the config'
      )
    packed_conditions = manifest['conditions']
    if cond is not None and cond not in packed_conditions:
      raise DataError(
        f'{folder} holds no {cond} conditions (it has: '
        f'{", ".join(packed_conditions) or "none"}) but {KIND_KEYS[cond]} asks for them; '
        'prepare it from videos that have them, or change the model'
      )
    names = packed_conditions.get('class', [])
    if cond == 'class' and num_classes is not None and len(names) > num_classes:
      raise DataError(
        f'{folder}: {len(names)} classes but unet.num_classes is {num_classes}; '
        f'set unet.num_classes to at least {len(names)}'
      )
    width = packed_conditions.get('vector')
    if cond == 'vector' and cond_dim is not None and width != cond_dim:
      raise DataError(
        f'{folder}: condition vectors of {width} values but unet.cond_dim is {cond_dim}'
      )
    self._cond = cond
    self._count = int(manifest['clips'])
    self.manifest = manifest
    self._data = grain.sources.ArrayRecordDataSource(
      [os.path.join(folder, name) for name in manifest['shards']]
    )
    if len(self._data) != self._count:
      raise DataError(
        f'{folder}: the shards hold {len(self._data)} clips, the manifest says {self._count}; '
        'run video-diffusion prepare again'
      )

  @property
  def cond_kind(self) -> str | None:
    return self._cond

  @property
  def clips(self) -> None:
    return None  # cut when packed

  @property
  def latents(self) -> dict | None:
    """The manifest's 'latents' of shards made with `prepare --vae`, else None."""
    return self.manifest.get('latents')

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    video, conditions = decode_clip(self._data[index])
    record = video_record(video)
    if self._cond == 'class':
      record['cond'] = np.array(conditions['class'], np.int32)
    elif self._cond == 'vector':
      record['cond'] = np.array(conditions['vector'], np.float32)
    elif self._cond == 'text':
      record['cond'] = np.array(conditions['text'])
    return record

  def __repr__(self) -> str:
    cond = '' if self._cond is None else f', cond={self._cond!r}'
    return f'PackedSource(folder={self._folder!r}, clips={self._count}{cond})'
