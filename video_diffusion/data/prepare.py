"""`video-diffusion prepare`: cut a dataset's clips once and pack them into ArrayRecord shards.

With one frame per clip, a folder of images is packed (image-video co-training).

Clip k of the N clips (clips_per_video from each video or .npy sequence, as
training cuts them, with the random window of seed [seed, k]) is
preprocessed to the model's frames, size and channels and goes to shard
k * shards // N. A shard is written to a `.partial` file and renamed when
complete, so an interrupted run continues with the shards it had not finished;
manifest.json is written last. With an `encode` function (`prepare --vae`, given
by the caller: this module has no JAX) the shards hold what it makes of the
clips, `encode_batch` at a time, and the manifest its `latents` description.
numpy, PyAV and grain only (no JAX).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from video_diffusion.data.clips import ReadClip
from video_diffusion.data.conditions import FolderConditions
from video_diffusion.data.cotrain import make_image_source
from video_diffusion.data.errors import DataError
from video_diffusion.data.preprocess import record_ops
from video_diffusion.data.shards import FORMAT, MANIFEST, encode_clip, is_packed, shard_name
from video_diffusion.data.sources import MovingMnistSource, VideoFolderSource, make_source
from video_diffusion.data.spec import DataSpec

__all__ = ['prepare']

SETTINGS = 'prepare.json'  # the settings of an unfinished run, to continue it
_WRITER_OPTIONS = 'group_size:1'  # one record per chunk: fast random access


def _conditions(source) -> dict[str, FolderConditions]:
  """The conditions every video of a folder has: class (two or more class
  folders), text ({clip}.txt beside each) and vector ({clip}.npy)."""
  if not isinstance(source, VideoFolderSource):
    return {}
  found = {}
  for kind in ('class', 'text', 'vector'):
    try:
      found[kind] = FolderConditions(source.folder, source.paths, kind)
    except DataError:
      continue  # not every video has one
  if 'class' in found and len(found['class'].class_names) < 2:
    del found['class']
  return found


def _describe(conditions: dict, source) -> dict:
  described = {}
  for kind, read in conditions.items():
    if kind == 'class':
      described[kind] = read.class_names
    elif kind == 'vector':
      described[kind] = int(read(0, source.paths[0]).shape[0])
    else:
      described[kind] = True
  return described


def _start(out: str, settings: dict) -> None:
  """Makes `out`, or checks that its unfinished run had the same settings."""
  if is_packed(out):
    raise DataError(f'{out} already holds packed clips ({MANIFEST}); choose another folder')
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, SETTINGS)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      before = json.load(f)
    if before != settings:
      changed = ', '.join(k for k in settings if before.get(k) != settings[k])
      raise DataError(
        f'{out} holds an unfinished prepare with other settings ({changed}); '
        'continue it with the same ones, or choose another folder'
      )
  elif os.listdir(out):
    raise DataError(f'{out} is not empty; choose a new folder for the shards')
  else:
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(settings, f, indent=2)


def _clip(source, index: int, seed: int, preprocess, conditions) -> tuple[np.ndarray, dict]:
  """Clip `index` of `source` (its window drawn from [seed, index]), preprocessed,
  and its conditions."""
  rng = np.random.default_rng([seed, index])
  if isinstance(source, VideoFolderSource):
    file, record = source.read_clip_of_file(index, rng)
  else:
    file, record = index, source.read_clip(index, rng)
  for op in preprocess:
    record = op.random_map(record, rng)
  values = {kind: read(file, source.paths[file]) for kind, read in conditions.items()}
  return record['video'], values


def prepare(
  source_path: str,
  out: str,
  spec: DataSpec,
  shards: int,
  *,
  progress=None,
  encode=None,
  latents: dict | None = None,
  encode_batch: int = 8,
) -> dict:
  """Packs the clips of `source_path` (a folder of videos or a Moving MNIST .npy)
  cut as `spec` says (video_shape, frame_stride, fps, clips_per_video, seed)
  into `shards` ArrayRecord files in `out`; returns the manifest. `progress(total,
  done)` makes a progress bar (update(n), close()) if given. `encode(clips, start)`
  maps uint8 clips (n, f, h, w, c), the first of index `start`, to the float
  arrays packed instead (n, ...), described by `latents` in the manifest (and
  the settings)."""
  if shards < 1:
    raise DataError(f'--shards must be >= 1, got {shards}')
  spec = dataclasses.replace(spec, dataset_path=source_path, random_flip=False)
  if spec.video_shape[0] == 1 and os.path.isdir(source_path) and not is_packed(source_path):
    source = make_image_source(dataclasses.replace(spec, image_dataset_path=source_path))
  else:
    source = make_source(dataclasses.replace(spec, condition=type(spec.condition)()))
  if not isinstance(source, (VideoFolderSource, MovingMnistSource)):
    raise DataError(f'{source_path}: prepare packs a folder of videos or a Moving MNIST .npy')
  settings = {
    'source': os.path.abspath(source_path),
    'video_shape': list(spec.video_shape),
    'frame_stride': spec.frame_stride,
    'fps': spec.fps,
    'clips_per_video': spec.clips_per_video,
    'seed': spec.seed,
    'shards': shards,
  }
  if latents is not None:
    settings['latents'] = latents
  _start(out, settings)
  conditions = _conditions(source)
  preprocess = [op for op in record_ops(spec, source) if not isinstance(op, ReadClip)]
  total = len(source)
  shards = min(shards, total)
  bounds = [k * total // shards for k in range(shards + 1)]
  names = [shard_name(k, shards) for k in range(shards)]
  done = sum(
    bounds[k + 1] - bounds[k] for k in range(shards) if os.path.exists(os.path.join(out, names[k]))
  )
  bar = progress(total, done) if progress else None
  for k, name in enumerate(names):
    final = os.path.join(out, name)
    if os.path.exists(final):
      continue
    writer, pending = ArrayRecordWriter(final + '.partial', _WRITER_OPTIONS), []
    for index in range(bounds[k], bounds[k + 1]):
      pending.append(_clip(source, index, spec.seed, preprocess, conditions))
      if len(pending) == encode_batch or index + 1 == bounds[k + 1]:
        videos = [video for video, _ in pending]
        if encode is not None:
          videos = encode(np.stack(videos), index + 1 - len(pending))
        for video, (_, values) in zip(videos, pending, strict=True):
          writer.write(encode_clip(video, values))
        pending = []
      if bar is not None:
        bar.update(index + 1)
    writer.close()
    os.replace(final + '.partial', final)
  if bar is not None:
    bar.close()
  manifest = {
    'format': FORMAT,
    'clips': total,
    'shards': names,
    'video_shape': list(spec.video_shape),
    'conditions': _describe(conditions, source),
    'settings': settings,
  }
  if latents is not None:
    manifest['latents'] = latents
  with open(os.path.join(out, MANIFEST + '.partial'), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=2)
  os.replace(os.path.join(out, MANIFEST + '.partial'), os.path.join(out, MANIFEST))
  os.remove(os.path.join(out, SETTINGS))
  return manifest
