"""Synthetic "moving digits" videos, generated on the fly (no download).

Like Moving MNIST: one or two white digits on black bounce off the frame
edges. Each digit is drawn with Pillow's built-in scalable font at a random
height (40-60% of the frame), stroke thickness, width and slant, rasterised
once per sample at high resolution, shrunk to frame scale and then shifted
with sub-pixel (bilinear) precision frame by frame; overlapping digits
combine with max. A sample depends only on (seed, index). numpy and Pillow
only (runs in grain worker processes).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ['caption', 'moving_digits']

_FONT_SIZE = 96  # rasterisation size of the glyphs before shrinking


@functools.cache
def _font() -> ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=_FONT_SIZE)


def _glyph(digit: int, height: float, rng: np.random.Generator) -> np.ndarray:
  """float32 [0, 1] (h, w) image of one digit, tight box, about `height` px tall."""
  stroke = int(rng.integers(0, 6))
  shear = rng.uniform(-0.35, 0.35)
  width_scale = rng.uniform(0.8, 1.2)
  side = 2 * _FONT_SIZE
  canvas = Image.new('L', (side, side))
  ImageDraw.Draw(canvas).text(
    (side // 2, side // 2),
    str(digit),
    fill=255,
    font=_font(),
    anchor='mm',
    stroke_width=stroke,
    stroke_fill=255,
  )
  left, top, right, bottom = canvas.getbbox()
  margin = int(np.ceil(abs(shear) * (bottom - top) / 2)) + 1
  canvas = canvas.crop((left - margin, top, right + margin, bottom))
  w, h = canvas.size
  # x_src = x + shear * (y - h / 2): a slant about the middle row.
  canvas = canvas.transform(
    (w, h), Image.Transform.AFFINE, (1, shear, -shear * h / 2, 0, 1, 0), Image.Resampling.BILINEAR
  )
  canvas = canvas.crop(canvas.getbbox())
  w, h = canvas.size
  out_h = max(2, round(height))
  out_w = max(2, round(w * out_h / h * width_scale))
  small = canvas.resize((out_w, out_h), Image.Resampling.BOX)
  return np.asarray(small, np.float32) / 255.0


def _trajectory(start: float, speed: float, limit: float, num_frames: int) -> np.ndarray:
  """Positions in [0, limit] of a point moving at `speed` that bounces off 0 and limit."""
  if limit <= 0:
    return np.zeros(num_frames)
  raw = start + speed * np.arange(num_frames)
  folded = np.mod(raw, 2 * limit)
  return np.where(folded > limit, 2 * limit - folded, folded)


def _paste(frame: np.ndarray, glyph: np.ndarray, y: float, x: float) -> None:
  """Max-composite `glyph` into `frame` with its top-left corner at sub-pixel (y, x)."""
  iy, ix = int(np.floor(y)), int(np.floor(x))
  fy, fx = y - iy, x - ix
  h, w = glyph.shape
  across = np.zeros((h, w + 1), np.float32)
  across[:, :w] = (1 - fx) * glyph
  across[:, 1:] += fx * glyph
  shifted = np.zeros((h + 1, w + 1), np.float32)
  shifted[:h] = (1 - fy) * across
  shifted[1:] += fy * across
  y1, x1 = min(iy + h + 1, frame.shape[0]), min(ix + w + 1, frame.shape[1])
  region = frame[iy:y1, ix:x1]
  np.maximum(region, shifted[: y1 - iy, : x1 - ix], out=region)


def moving_digits(
  seed: int, index: int, *, num_frames: int, image_size: int, channels: int = 1, max_digits: int = 2
) -> dict[str, np.ndarray]:
  """One sample: {'video', 'label', 'velocity'}.

  'video' is uint8 (num_frames, image_size, image_size, channels); 'label' is
  int32 (max_digits,), -1 for absent digits; 'velocity' is float32
  (max_digits, 2), the initial (dy, dx) of each digit in pixels per frame (the
  sign of a component flips at each bounce), zeros for absent digits.
  """
  rng = np.random.default_rng([seed, index])
  count = int(rng.integers(1, max_digits + 1))
  label = np.full((max_digits,), -1, np.int32)
  velocity = np.zeros((max_digits, 2), np.float32)
  frames = np.zeros((num_frames, image_size, image_size), np.float32)
  for k in range(count):
    label[k] = rng.integers(0, 10)
    glyph = _glyph(int(label[k]), rng.uniform(0.4, 0.6) * image_size, rng)
    glyph = glyph[: image_size - 1, : image_size - 1]
    speed = rng.uniform(0.03, 0.1) * image_size
    angle = rng.uniform(0, 2 * np.pi)
    velocity[k] = speed * np.sin(angle), speed * np.cos(angle)
    limits = [image_size - 1 - glyph.shape[0], image_size - 1 - glyph.shape[1]]
    ys, xs = (
      _trajectory(rng.uniform(0, lim), float(v), lim, num_frames)
      for lim, v in zip(limits, velocity[k])
    )
    for t in range(num_frames):
      _paste(frames[t], glyph, ys[t], xs[t])
  video = np.rint(frames * 255).astype(np.uint8)[..., None]
  if channels != 1:
    video = np.repeat(video, channels, axis=-1)
  return {'video': video, 'label': label, 'velocity': velocity}


def _direction(dy: float, dx: float) -> str:
  vertical = 'down' if dy > 0 else 'up'
  horizontal = 'right' if dx > 0 else 'left'
  if abs(dy) < 1e-6 and abs(dx) < 1e-6:
    return 'standing still'
  if abs(dx) >= 2 * abs(dy):
    return f'moving {horizontal}'
  if abs(dy) >= 2 * abs(dx):
    return f'moving {vertical}'
  return f'moving {vertical} and {horizontal}'


def caption(label, velocity) -> str:
  """Text of a sample, e.g. 'a 3 moving left and a 7 moving up and right'.

  A component counts when it is at least half the other; y grows downwards.
  """
  parts = [
    f'a {int(d)} {_direction(float(v[0]), float(v[1]))}'
    for d, v in zip(np.asarray(label), np.asarray(velocity))
    if d >= 0
  ]
  return ' and '.join(parts)
