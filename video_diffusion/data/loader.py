"""The grain loader: shuffled, process-sharded, batched, with a resumable position.

This module does not import JAX (batches are prepared in grain worker
processes); process index and count are arguments.
"""

from __future__ import annotations

import dataclasses
import json

import grain
from absl import flags

from video_diffusion.data.cotrain import DrawImageSeed, ImageStacks, image_items, make_image_source
from video_diffusion.data.errors import DataError
from video_diffusion.data.preprocess import record_ops
from video_diffusion.data.sources import make_source
from video_diffusion.data.spec import DataSpec
from video_diffusion.data.workers import ExitWithParent

__all__ = ['EpochReport', 'close_iterator', 'iterator_state', 'make_loader', 'restore_iterator']


def make_loader(
  spec: DataSpec,
  *,
  seed: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
  worker_count: int | None = None,
  num_epochs: int | None = None,
  source: grain.sources.RandomAccessDataSource | None = None,
) -> grain.DataLoader:
  """A shuffled, repeating (num_epochs=None) loader of this process's batches.

  Each batch holds spec.batch_size // process_count records preprocessed to
  spec.video_shape (remainders dropped); process `process_index` of
  `process_count` reads a disjoint shard. seed defaults to spec.seed,
  worker_count (grain worker processes, 0 = in this process) to spec.workers,
  `source` to make_source(spec); the workers exit by themselves when this
  process dies, even by SIGKILL (see data.workers). Batches hold 'cond' when
  the spec's condition has a kind (see data.conditions), and 'image' (bool
  (b,), the image stacks) with image-video co-training (see data.cotrain).
  """
  total = spec.batch_size
  seed = spec.seed if seed is None else seed
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(
      f'process_index must be in [0, process_count), got {process_index} of {process_count}'
    )
  if total % process_count:
    raise DataError(
      f'{total} videos per step (trainer.train_batch_size * '
      'trainer.gradient_accumulate_every) is not divisible by the '
      f'{process_count} processes'
    )
  if not 0 <= seed < 2**32:
    raise DataError(f'the data seed must be in [0, 2**32), got {seed}')
  source = make_source(spec) if source is None else source
  kind = spec.condition.kind
  if getattr(source, 'cond_kind', kind) != kind:
    raise DataError(
      f'{source!r} gives {source.cond_kind or "no"} conditions but the config asks '
      f'for {kind or "none"} (unet.num_classes / cond_dim / use_bert_text_cond); '
      'make the source with make_source(spec)'
    )
  if len(source) < process_count:
    raise DataError(
      f'{source!r} has {len(source)} records, fewer than the {process_count} '
      'processes that share it'
    )
  shard = grain.sharding.ShardOptions(
    shard_index=process_index, shard_count=process_count, drop_remainder=True
  )
  sampler = grain.samplers.IndexSampler(
    len(source), shard_options=shard, shuffle=True, num_epochs=num_epochs, seed=seed
  )
  batch = total // process_count
  operations, batch_fn = record_ops(spec, source), None
  if spec.image_fraction:  # image-video co-training
    operations.append(DrawImageSeed())
    batch_fn = ImageStacks(make_image_source(spec), image_items(spec, batch), spec)
  operations.append(
    grain.transforms.Batch(batch_size=batch, drop_remainder=True, batch_fn=batch_fn)
  )
  workers = spec.workers if worker_count is None else worker_count
  if workers:
    operations.insert(0, ExitWithParent())  # a worker exits when this process dies, even by SIGKILL
  if workers and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker start reads an absl flag; use its default
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=operations,
    worker_count=workers,
    shard_options=shard,
    read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch),
  )


@dataclasses.dataclass(frozen=True)
class EpochReport:
  """Steps per epoch of a source at a batch size (all processes together) and how
  many of an epoch's clips come from videos shorter than a clip (padded)."""

  steps: int
  clips: int
  short_clips: int = 0

  @classmethod
  def of(cls, source, batch_size: int) -> EpochReport:
    clips = getattr(source, 'clips', None)
    short = len(source.short_videos()) * clips.clips_per_video if clips else 0
    return cls(len(source) // batch_size, len(source), short)

  def warning(self, step: int) -> str | None:
    """The end-of-epoch line when `step` ends an epoch with short clips, else None."""
    if not self.short_clips or not self.steps or step % self.steps:
      return None
    return (
      f'warning: epoch {step // self.steps} (to step {step}): {self.short_clips} of its '
      f'{self.clips} clips came from videos shorter than a clip and repeat their last frame'
    )


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
    raise DataError(
      f'cannot continue the saved data iterator with this loader (keep '
      f'trainer.dataset_path, seed and data_workers as they were): {e}'
    ) from e
  return iterator


def close_iterator(iterator) -> None:
  """Stop a loader iterator's worker processes and threads now (not at garbage collection)."""
  inner = getattr(iterator, '_iterator', None)  # grain.DataLoaderIterator has no close()
  if inner is not None:
    inner.close()
