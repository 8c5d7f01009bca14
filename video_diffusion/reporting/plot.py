"""Loss curves drawn with Pillow in the style of a TensorBoard scalar chart."""

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1000, 400
_SCALE = 2  # drawn at twice the size, then downsampled: cheap anti-aliasing
_MAX_POINTS = 2000
_RAW = (197, 225, 245)
_SMOOTH = (66, 160, 222)
_GRID = (224, 224, 224)
_AXIS = (150, 150, 150)
_TEXT = (70, 70, 70)


def smooth(values, weight: float = 0.6) -> np.ndarray:
  """TensorBoard's debiased exponential moving average (finite values only)."""
  values = np.asarray(values, dtype=np.float64)
  if len(values) == 0 or np.all(values == values[0]):
    return values.copy()  # as TensorBoard does: a constant series stays exactly constant
  out = np.empty_like(values)
  last, weight = 0.0, min(max(float(weight), 0.0), 1.0)
  for i, value in enumerate(values.tolist()):
    last = last * weight + (1.0 - weight) * value
    out[i] = last if weight == 1.0 else last / (1.0 - weight ** (i + 1))
  return out


def nice_ticks(lo: float, hi: float, target: int) -> np.ndarray:
  """Multiples of 1, 2 or 5 x 10^k inside [lo, hi], about `target` of them."""
  raw = (hi - lo) / max(target, 1)
  mag = 10.0 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
  first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
  return np.arange(first, last + 1) * step


def format_step(value: float) -> str:
  """0, 500, 10k, 1.5M."""
  for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(value) >= div:
      return f'{value / div:.4g}{suffix}'
  return f'{value:.4g}'


def _format_value(value: float, step: float) -> str:
  if step < 1e-4 or step >= 1e6:
    return f'{value:.3g}'
  decimals = max(0, -math.floor(math.log10(step) + 1e-9))
  text = f'{value:.{decimals}f}'
  return '0' if float(text) == 0 else text


def _downsample(values: np.ndarray, max_points: int) -> np.ndarray:
  """Indices keeping each bucket's min and max (spikes survive) plus both ends."""
  n = len(values)
  if n <= max_points:
    return np.arange(n)
  buckets = max_points // 2
  edges = np.linspace(0, n, buckets + 1).astype(int)
  keep = [0, n - 1]
  for a, b in zip(edges[:-1], edges[1:]):
    chunk = values[a:b]
    keep += [a + int(np.argmin(chunk)), a + int(np.argmax(chunk))]
  return np.unique(keep)


def _bucket_means(x: np.ndarray, y: np.ndarray, max_points: int):
  """Averages of consecutive buckets, so a noisy smoothed curve draws as a line, not a band."""
  if len(x) <= max_points:
    return x, y
  edges = np.linspace(0, len(x), max_points + 1).astype(int)
  counts = np.diff(edges)
  return (np.add.reduceat(x, edges[:-1]) / counts, np.add.reduceat(y, edges[:-1]) / counts)


def _y_range(raw: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
  lo, top = float(raw.min()), float(raw.max())
  high = float(np.percentile(smoothed, 99))
  top = min(top, high + 0.15 * (high - lo))
  span = top - lo
  if span <= 0:
    span = abs(lo) * 0.1 or 1.0
    return lo - span, lo + span
  return lo - 0.05 * span, top + 0.05 * span


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):
    return ImageFont.load_default()


def plot_loss_curve(steps, losses, path, *, title: str = 'loss/train', smoothing: float = 0.6):
  """Writes a 1000x400 PNG of `losses` against `steps`, atomically (temp file + os.replace).

  NaN/inf points are skipped. The light curve is the raw loss, the dark one TensorBoard's
  debiased EMA with weight `smoothing`. The top of the y axis is clamped to the 99th
  percentile of the smoothed curve (plus 15% headroom), so huge early losses are cut off
  and the tail stays readable. At most ~2000 raw points are drawn (per-bucket min and max,
  so spikes survive) and ~1000 smoothed ones (bucket means).
  """
  x = np.asarray(steps, dtype=np.float64).reshape(-1)
  y = np.asarray(losses, dtype=np.float64).reshape(-1)
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  s = _SCALE
  image = Image.new('RGB', (WIDTH * s, HEIGHT * s), 'white')
  draw = ImageDraw.Draw(image)
  font, small = _font(13 * s), _font(11 * s)
  draw.text((16 * s, 8 * s), title, fill=(30, 30, 30), font=font)
  left, top, right, bottom = 70 * s, 36 * s, (WIDTH - 20) * s, (HEIGHT - 30) * s
  if len(x) == 0:
    draw.text(
      ((left + right) // 2, (top + bottom) // 2), 'no data', fill=_TEXT, font=font, anchor='mm'
    )
  else:
    _draw_chart(draw, image, x, y, (left, top, right, bottom), smoothing, small)
  image = image.resize((WIDTH, HEIGHT), Image.LANCZOS)
  path = os.fspath(path)
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    image.save(tmp, format='PNG')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _draw_chart(draw, image, x, y, box, smoothing, font):
  left, top, right, bottom = box
  order = np.argsort(x, kind='stable')
  x, y = x[order], y[order]
  smoothed = smooth(y, smoothing)
  x0, x1 = float(x[0]), float(x[-1])
  if x1 == x0:
    x0, x1 = x0 - 1, x1 + 1
  pad = 0.02 * (x1 - x0)
  x0, x1 = x0 - pad, x1 + pad
  y0, y1 = _y_range(y, smoothed)

  def px(v):
    return left + (np.asarray(v) - x0) / (x1 - x0) * (right - left)

  def py(v):
    rows = bottom - (np.asarray(v) - y0) / (y1 - y0) * (bottom - top)
    return np.clip(rows, top - 50 * (bottom - top), bottom + 50 * (bottom - top))

  s = _SCALE
  yticks = nice_ticks(y0, y1, 8)
  ystep = float(yticks[1] - yticks[0]) if len(yticks) > 1 else (y1 - y0)
  for v in yticks:
    row = float(py(v))
    draw.line([(left, row), (right, row)], fill=_AXIS if abs(v) < 1e-12 else _GRID, width=s)
    draw.text(
      (left - 8 * s, row), _format_value(float(v), ystep), fill=_TEXT, font=font, anchor='rm'
    )
  for v in nice_ticks(x0, x1, 10):
    col = float(px(v))
    draw.line([(col, top), (col, bottom)], fill=_AXIS if v == 0 else _GRID, width=s)
    draw.text((col, bottom + 8 * s), format_step(float(v)), fill=_TEXT, font=font, anchor='mt')
  draw.rectangle([left, top, right, bottom], outline=_GRID, width=s)

  plot = Image.new('RGB', (right - left, bottom - top), 'white')
  plot_draw = ImageDraw.Draw(plot)
  plot.paste(image.crop((left + s, top + s, right - s, bottom - s)), (s, s))
  idx = _downsample(y, _MAX_POINTS)
  curves = (
    (x[idx], y[idx], _RAW, s),
    (*_bucket_means(x, smoothed, _MAX_POINTS // 2), _SMOOTH, 3 * s // 2),
  )
  for cx, cy, color, width in curves:
    pts = list(zip((px(cx) - left).tolist(), (py(cy) - top).tolist()))
    if len(pts) > 1:
      plot_draw.line(pts, fill=color, width=width, joint='curve')
  cx, cy = float(px(x[-1])) - left, float(py(smoothed[-1])) - top
  plot_draw.ellipse([cx - 4 * s, cy - 4 * s, cx + 4 * s, cy + 4 * s], fill=_SMOOTH)
  image.paste(plot.crop((s, s, plot.width - s, plot.height - s)), (left + s, top + s))


_SERIES_COLORS = ((66, 160, 222), (230, 120, 40), (60, 170, 90), (200, 60, 120), (120, 90, 200))


def plot_series(series: dict, path, *, title: str, x_label: str) -> None:
  """Writes a PNG of several named (x, y) point lists as lines with markers and a legend."""
  s = _SCALE
  image = Image.new('RGB', (WIDTH * s, HEIGHT * s), 'white')
  draw = ImageDraw.Draw(image)
  font, small = _font(13 * s), _font(11 * s)
  draw.text((16 * s, 8 * s), title, fill=(30, 30, 30), font=font)
  left, top, right, bottom = 70 * s, 36 * s, (WIDTH - 170) * s, (HEIGHT - 40) * s
  points = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
  xs = np.concatenate([x for x, _ in points] + [np.zeros(1)])
  ys = np.concatenate([y for _, y in points] + [np.zeros(1)])
  x0, x1 = 0.0, float(xs.max()) * 1.05 or 1.0
  y0, y1 = 0.0, float(ys.max()) * 1.1 or 1.0
  px = lambda v: left + (np.asarray(v) - x0) / (x1 - x0) * (right - left)
  py = lambda v: bottom - (np.asarray(v) - y0) / (y1 - y0) * (bottom - top)
  for v in nice_ticks(y0, y1, 8):
    draw.line([(left, float(py(v))), (right, float(py(v)))], fill=_GRID, width=s)
    draw.text((left - 8 * s, float(py(v))), f'{v:g}', fill=_TEXT, font=small, anchor='rm')
  for v in nice_ticks(x0, x1, 10):
    draw.line([(float(px(v)), top), (float(px(v)), bottom)], fill=_GRID, width=s)
    draw.text((float(px(v)), bottom + 8 * s), f'{v:g}', fill=_TEXT, font=small, anchor='mt')
  draw.text(((left + right) // 2, bottom + 24 * s), x_label, fill=_TEXT, font=small, anchor='mt')
  draw.rectangle([left, top, right, bottom], outline=_AXIS, width=s)
  for i, (name, (x, y)) in enumerate(zip(series, points)):
    color = _SERIES_COLORS[i % len(_SERIES_COLORS)]
    pts = list(zip(px(x).tolist(), py(y).tolist()))
    if len(pts) > 1:
      draw.line(pts, fill=color, width=2 * s)
    for cx, cy in pts:
      draw.ellipse([cx - 4 * s, cy - 4 * s, cx + 4 * s, cy + 4 * s], fill=color)
    row = top + (10 + 22 * i) * s
    draw.line([(right + 16 * s, row), (right + 40 * s, row)], fill=color, width=3 * s)
    draw.text((right + 48 * s, row), name, fill=_TEXT, font=small, anchor='lm')
  image.resize((WIDTH, HEIGHT), Image.LANCZOS).save(os.fspath(path), format='PNG')
