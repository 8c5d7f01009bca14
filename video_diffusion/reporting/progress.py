"""A one-line training progress bar: step, percent, metrics, steps/s and ETA."""

import math
import sys
import time

_RATE_WINDOW = 30.0  # seconds: the time constant of the steps/s moving average


def format_number(value) -> str:
  """4 significant digits ('%.4g': scientific below 1e-4 and from 1e4); ints as ints."""
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  value = float(value)
  return f'{value:.4g}'


def format_duration(seconds: float) -> str:
  """m:ss under an hour, h:mm:ss above."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


class ProgressBar:
  """`step 120/1500 [####------] 8% | loss 0.0532 | 2.31 steps/s | ETA 9:57`.

  `unit` replaces "step" (e.g. 'video'), and `label` starts the line ("label: ...").

  The rate is an exponential moving average (time constant 30 s) over the steps since the
  first update; the first update only starts the clock, so the duration up to it (startup,
  compilation) is never counted. On a TTY the line is redrawn with '\\r' at most every
  `min_interval` seconds; otherwise a full line is printed at most every `min_interval * 20`
  seconds or each further 10% of progress, but the last step's, which close() prints
  (always, once, with the elapsed time).
  """

  def __init__(
    self,
    total: int,
    initial: int = 0,
    stream=None,
    min_interval: float = 0.5,
    *,
    width: int = 20,
    clock=time.monotonic,
    unit: str = 'step',
    label: str = '',
  ):
    # sys.stderr when the bar is made, not when this module was imported (tests swap it)
    self.total, self.step, self.stream = int(total), int(initial), stream or sys.stderr
    self.unit, self.label = unit, label
    self.min_interval, self.width, self._clock = min_interval, width, clock
    try:
      self._tty = bool(self.stream.isatty())
    except (AttributeError, ValueError):
      self._tty = False
    self.metrics = {}
    self._start = clock()
    self._last_time = self._last_step = None
    self._ema_steps = self._ema_time = 0.0
    self._last_print = -math.inf
    self._last_decile = self._decile(self.step)
    self._last_line, self._drawn_width, self._closed = None, 0, False

  def _decile(self, step):
    return int(10 * step / self.total) if self.total > 0 else 0

  @property
  def rate(self) -> float | None:
    """Steps per second, None before two updates."""
    return self._ema_steps / self._ema_time if self._ema_time > 0 else None

  def update(self, step: int, **metrics):
    """Sets the current step and the metrics to show; redraws when due."""
    now, step = self._clock(), int(step)
    if self._last_time is not None and step > self._last_step:
      elapsed = now - self._last_time
      decay = math.exp(-elapsed / _RATE_WINDOW)
      self._ema_steps = self._ema_steps * decay + (step - self._last_step)
      self._ema_time = self._ema_time * decay + elapsed
    if self._last_time is None or step > self._last_step:
      self._last_time, self._last_step = now, step
    self.step = step
    self.metrics.update(metrics)
    decile = self._decile(step)
    if self._tty:
      due = now - self._last_print >= self.min_interval
    else:  # the last step's line is close()'s, with the elapsed time: printed once
      due = now - self._last_print >= self.min_interval * 20 or decile > self._last_decile
      due = due and step < self.total
    if due:
      self._last_print, self._last_decile = now, decile
      self._emit(self.format_line())

  def format_line(self) -> str:
    """The current progress line."""
    frac = min(max(self.step / self.total, 0.0), 1.0) if self.total > 0 else 1.0
    filled = int(frac * self.width)
    prefix = f'{self.label}: ' if self.label else ''
    parts = [
      f'{prefix}{self.unit} {self.step}/{self.total} '
      f'[{"#" * filled}{"-" * (self.width - filled)}] {int(frac * 100)}%'
    ]
    parts += [f'{name} {format_number(value)}' for name, value in self.metrics.items()]
    rate = self.rate
    if rate is None:
      parts += [f'? {self.unit}s/s', 'ETA ?']
    else:
      parts += [
        f'{format_number(rate)} {self.unit}s/s',
        f'ETA {format_duration(max(self.total - self.step, 0) / rate)}',
      ]
    return ' | '.join(parts)

  def _emit(self, line, final=False):
    if self._tty:
      pad = ' ' * max(self._drawn_width - len(line), 0)
      self.stream.write('\r' + line + pad + ('\n' if final else ''))
      self._drawn_width = len(line)
    elif line != self._last_line:
      self.stream.write(line + '\n')
    self._last_line = line
    self.stream.flush()

  def close(self):
    """Prints the final line (once)."""
    if self._closed:
      return
    self._closed = True
    elapsed = format_duration(self._clock() - self._start)
    self._emit(f'{self.format_line()} | elapsed {elapsed}', final=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
