"""The record every source gives: {'video', 'label', 'velocity'} (+ 'cond').

'video' is uint8 (frames, h, w, channels); 'label' int32 (MAX_DIGITS,) and
'velocity' float32 (MAX_DIGITS, 2) are real only for the synthetic digits (-1
and zeros elsewhere), so batches of every source share one structure.
"""

from __future__ import annotations

import numpy as np

MAX_DIGITS = 2


def video_record(video: np.ndarray) -> dict[str, np.ndarray]:
  """The record of a video that has no digit labels."""
  return {
    'video': video,
    'label': np.full((MAX_DIGITS,), -1, np.int32),
    'velocity': np.zeros((MAX_DIGITS, 2), np.float32),
  }
