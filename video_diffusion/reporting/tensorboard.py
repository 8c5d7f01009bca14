"""TensorBoard event files through tensorboardX: scalars and image strips.

No TensorFlow and no JAX: tensorboardX writes the event protobufs itself.
"""

import itertools
import os

import numpy as np


class EventWriter:
  """Writes scalars and images to a new `events.out.tfevents.*` file in `logdir`.

  `purge_step` (a resumed run's first step) hides from TensorBoard the events at
  that step or later that earlier files hold (those of a crashed run after its
  last checkpoint).
  """

  _unique = itertools.count()

  def __init__(self, logdir, *, purge_step: int | None = None):
    logdir = os.fspath(logdir)
    os.makedirs(logdir, exist_ok=True)
    names = set(os.listdir(logdir))
    while True:  # tensorboardX names files by the second and host: keep each one apart
      suffix = f'.{os.getpid()}.{next(self._unique)}'
      if not any(name.endswith(suffix) for name in names):
        break
    from tensorboardX import SummaryWriter  # here: its import sets os.environ

    self._writer = SummaryWriter(logdir, purge_step=purge_step, filename_suffix=suffix)
    (name,) = [n for n in os.listdir(logdir) if n.endswith(suffix)]
    self.path = os.path.join(logdir, name)

  def scalars(self, values: dict, step: int):
    """Writes scalars (tag -> number) at `step` (as float32: beyond its range, +-inf)."""
    for tag, value in values.items():
      self._writer.add_scalar(str(tag), float(value), int(step))

  def images(self, tag: str, frames: np.ndarray, step: int):
    """Writes uint8 frames (n, height, width, channels) as one image, 8 frames a row."""
    self._writer.add_images(tag, np.asarray(frames), int(step), dataformats='NHWC')

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
