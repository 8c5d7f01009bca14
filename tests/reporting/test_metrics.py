"""Metrics logging: TensorBoard event files, the loss-curve PNG, the progress bar, metrics.jsonl."""

import io
import json
import math
import os
import random
import time

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tb_masked_crc

from video_diffusion.reporting import plot, progress, tensorboard
from video_diffusion.reporting import run_log as metrics


def test_crc32c_vectors():
  assert tensorboard.crc32c(b'123456789') == 0xE3069283
  assert tensorboard.crc32c(b'') == 0
  assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
  rng = random.Random(0)
  for n in (1, 7, 100, 1000):
    data = bytes(rng.randrange(256) for _ in range(n))
    assert tensorboard.masked_crc32c(data) == tb_masked_crc(data)


def test_event_file_read_back_by_tensorboard(tmp_path):
  with tensorboard.EventWriter(tmp_path) as writer:
    writer.scalar('train/loss', 0.25, step=0, wall_time=123.5)
    writer.scalars({'train/loss': 0.125, 'train/lr': 1e-4}, step=10)
    writer.scalar('train/loss', math.nan, step=2**40)
    writer.scalar('train/big', 1e300, step=20)
  with tensorboard.EventWriter(tmp_path) as other:
    pass
  assert other.path != writer.path
  name = os.path.basename(writer.path)
  assert name.startswith('events.out.tfevents.') and 'tfevents' in name

  events = list(LegacyEventFileLoader(writer.path).Load())
  assert len(events) == 5  # a record with a bad CRC would be dropped silently
  assert events[0].file_version == 'brain.Event:2'
  assert not events[0].HasField('summary')
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert scalars[:3] == [
    (0, 'train/loss', 0.25),
    (10, 'train/loss', 0.125),
    (10, 'train/lr', np.float32(1e-4)),
  ]
  assert scalars[3][:2] == (2**40, 'train/loss') and math.isnan(scalars[3][2])
  assert scalars[4] == (20, 'train/big', math.inf)
  assert events[1].wall_time == 123.5
  assert abs(events[2].wall_time - events[0].wall_time) < 60


def _pixels(path):
  image = Image.open(path)
  return image, np.asarray(image.convert('RGB'))


def test_loss_curve_png(tmp_path):
  steps = np.arange(0, 100_001, 25)
  rng = np.random.default_rng(0)
  losses = 0.25 * np.exp(-steps / 3000) + 0.01 + rng.uniform(0, 0.01, steps.shape)
  losses[:3] = [50.0, 20.0, 10.0]
  losses[100], losses[200] = np.nan, np.inf
  path = tmp_path / 'loss.png'
  plot.plot_loss_curve(steps, losses, path)
  image, pixels = _pixels(path)
  assert image.format == 'PNG' and image.size == (plot.WIDTH, plot.HEIGHT)
  blue = (pixels[..., 2].astype(int) - pixels[..., 0] > 60).sum()
  assert blue > 2000  # curves drawn
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
  assert os.listdir(tmp_path) == ['loss.png']  # no temp file left behind


def test_loss_curve_edge_cases(tmp_path):
  cases = {
    'one': ([7], [0.3]),
    'const': (range(50), [0.5] * 50),
    'nan': ([0, 1, 2], [math.nan, math.inf, -math.inf]),
    'empty': ([], []),
  }
  for name, (steps, losses) in cases.items():
    plot.plot_loss_curve(steps, losses, tmp_path / f'{name}.png', title=name)
    image, pixels = _pixels(tmp_path / f'{name}.png')
    assert image.size == (plot.WIDTH, plot.HEIGHT)
    assert (pixels < 200).any(), name  # text at least


def test_nice_ticks_and_labels():
  assert list(plot.nice_ticks(0, 100_000, 10)) == list(range(0, 100_001, 10_000))
  assert np.allclose(plot.nice_ticks(-0.013, 0.26, 8), np.arange(0, 0.26, 0.05))
  assert [plot.format_step(v) for v in (0, 500, 10_000, 1_500_000)] == ['0', '500', '10k', '1.5M']
  smoothed = plot.smooth([1.0, 0.0])
  assert smoothed[0] == 1.0 and abs(smoothed[1] - 0.6 / 1.6) < 1e-12  # debiased EMA


def test_progress_bar_not_a_tty():
  clock = [0.0]
  out = io.StringIO()
  bar = progress.ProgressBar(1500, initial=100, stream=out, clock=lambda: clock[0])
  for step in range(101, 1501):
    clock[0] += 30.0 if step == 101 else 0.4  # the first update includes compilation
    bar.update(step, loss=0.05 + 1 / step, lr=1e-4)
  bar.close()
  bar.close()
  lines = out.getvalue().splitlines()
  assert 10 <= len(lines) <= 80  # throttled, not one line per step
  assert lines[0].startswith('step 101/1500 [')
  assert 'ETA ?' in lines[0]
  middle = next(line for line in lines if line.startswith('step 750/1500'))
  assert '| loss 0.05133 |' in middle and '| lr 0.0001 |' in middle
  assert '| 2.5 steps/s | ETA 5:00' in middle  # 750 steps left at 2.5 steps/s
  assert lines[-1].startswith('step 1500/1500 [####################] 100%')
  assert 'elapsed 9:50' in lines[-1]  # 30 s + 1399 x 0.4 s
  assert sum(line.startswith('step 1500/1500') for line in lines) == 1  # printed once
  assert all(not line.startswith('\r') for line in lines)


def test_progress_bar_tty_and_format():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  clock = [0.0]
  out = Tty()
  bar = progress.ProgressBar(10, stream=out, clock=lambda: clock[0])
  for step in range(1, 11):
    clock[0] += 1.0
    bar.update(step, loss=2e-7)
  bar.close()
  text = out.getvalue()
  assert text.count('\r') == 11 and text.endswith('\n') and text.count('\n') == 1
  assert 'loss 2e-07' in text and '1 steps/s' in text
  assert progress.format_duration(3725) == '1:02:05'
  assert [progress.format_number(v) for v in (0.0532, 3, 123456.0)] == ['0.0532', '3', '1.235e+05']


def test_metrics_logger_jsonl_tensorboard_and_plot(tmp_path):
  results, tb = tmp_path / 'results', tmp_path / 'tb'
  with metrics.MetricsLogger(results, tensorboard_dir=tb, plot_every=3) as log:
    for step in range(5):
      log.log(
        step, {'loss': np.float32(0.5 / (step + 1)), 'lr': 1e-4, 'grad_norm': 1.0, 'step_time': 0.1}
      )
    assert (results / 'loss_curve.png').exists()  # after 3 logs
    log.log(5, {'loss': math.nan, 'grad_norm': math.inf})
  lines = (results / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 6
  first = json.loads(lines[0])
  assert list(first) == ['step', 'time', 'loss', 'lr', 'grad_norm', 'step_time']
  assert first['step'] == 0 and first['loss'] == 0.5 and abs(first['time'] - time.time()) < 60
  last = json.loads(lines[5])
  assert last['loss'] == 'NaN' and last['grad_norm'] == 'Infinity'  # valid JSON, no bare NaN
  records = metrics.read_metrics(results / 'metrics.jsonl')
  assert math.isnan(records[5]['loss']) and records[5]['grad_norm'] == math.inf

  (event_file,) = os.listdir(tb)
  events = list(LegacyEventFileLoader(str(tb / event_file)).Load())[1:]
  tags = {(e.step, v.tag) for e in events for v in e.summary.value}
  assert (4, 'train/loss') in tags and (0, 'train/step_time') in tags and (5, 'train/loss') in tags
  assert not any(v.tag in ('train/step', 'train/time') for e in events for v in e.summary.value)


def test_metrics_logger_resume_dedupes_curve(tmp_path):
  with metrics.MetricsLogger(tmp_path, plot_every=1000) as log:
    for step in range(0, 100, 10):  # crashed at 90, the last checkpoint was at 50
      log.log(step, {'loss': 1.0})
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 95, "lo')  # a line cut short by the crash
  with metrics.MetricsLogger(tmp_path, plot_every=1000) as log:
    for step in range(50, 130, 10):
      log.log(step, {'loss': 2.0})
    curve = list(log._curve)  # pylint: disable=protected-access
  assert [s for s, _ in curve] == list(range(0, 130, 10))
  assert dict(curve)[40] == 1.0 and dict(curve)[50] == 2.0 and dict(curve)[90] == 2.0
  raw = metrics.read_metrics(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in raw] == list(range(0, 100, 10)) + list(range(50, 130, 10))
  deduped = metrics.read_metrics(tmp_path / 'metrics.jsonl', deduplicate=True)
  assert [r['step'] for r in deduped] == list(range(0, 130, 10))
  assert (tmp_path / 'loss_curve.png').exists()


def test_metrics_logger_disabled_writes_nothing(tmp_path):
  with metrics.MetricsLogger(
    tmp_path / 'results', tensorboard_dir=tmp_path / 'tb', plot_every=1, enabled=False
  ) as log:
    log.log(0, {'loss': 1.0})
    log.plot()
    log.flush()
  assert os.listdir(tmp_path) == []
