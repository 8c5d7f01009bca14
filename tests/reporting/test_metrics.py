"""Metrics logging: TensorBoard event files, the loss-curve PNG, the progress bar, metrics.jsonl."""

import io
import json
import math
import os
import time

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from video_diffusion.reporting import plot, progress, tensorboard
from video_diffusion.reporting import run_log as metrics


def read_events(logdir):
  """(scalars: tag -> [(step, value)], images: tag -> [(step, RGB pixels)]) as read."""
  acc = EventAccumulator(str(logdir), size_guidance={'scalars': 0, 'images': 0})
  acc.Reload()
  scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}
  images = {
    tag: [
      (e.step, np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert('RGB')))
      for e in acc.Images(tag)
    ]
    for tag in acc.Tags()['images']
  }
  return scalars, images


def test_event_file_read_back_by_tensorboard(tmp_path):
  frames = np.random.default_rng(0).integers(0, 256, (10, 3, 5, 1), np.uint8)
  with tensorboard.EventWriter(tmp_path) as writer:
    writer.scalars({'train/loss': 0.25}, step=0)
    writer.scalars({'train/loss': 0.125, 'train/lr': np.float32(1e-4)}, step=10)
    writer.scalars({'train/loss': math.nan}, step=2**40)
    writer.scalars({'train/big': 1e300}, step=20)
    writer.images('samples/grid', frames, step=10)
  with tensorboard.EventWriter(tmp_path) as other:  # same second, same process: a file apart
    pass
  assert other.path != writer.path and os.path.exists(writer.path)
  assert os.path.basename(writer.path).startswith('events.out.tfevents.')

  scalars, images = read_events(tmp_path)
  assert scalars['train/loss'][:2] == [(0, 0.25), (10, 0.125)]
  assert scalars['train/loss'][2][0] == 2**40 and math.isnan(scalars['train/loss'][2][1])
  assert scalars['train/lr'] == [(10, np.float32(1e-4))]
  assert scalars['train/big'] == [(20, math.inf)]
  ((step, pixels),) = images['samples/grid']
  assert step == 10 and pixels.shape == (2 * 3, 8 * 5, 3)  # 8 frames a row, grey -> RGB
  np.testing.assert_array_equal(pixels[:3, 5:10, 0], frames[1, ..., 0])
  np.testing.assert_array_equal(pixels[3:, 5:10, 1], frames[9, ..., 0])
  assert not pixels[3:, 10:].any()  # the second row's missing tiles are black


def test_purge_step_hides_a_crashed_runs_later_events(tmp_path):
  with tensorboard.EventWriter(tmp_path) as crashed:
    crashed.scalars({'train/loss': 1.0}, step=4)
    crashed.scalars({'train/loss': 1.0}, step=6)
  with tensorboard.EventWriter(tmp_path, purge_step=5) as resumed:
    resumed.scalars({'train/loss': 2.0}, step=5)
  scalars, _ = read_events(tmp_path)
  assert scalars['train/loss'] == [(4, 1.0), (5, 2.0)]


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
    log.log(6, {'loss': 0.1, 'fvd': 80.5, 'val_loss': 0.3, 'val_loss_t62': 0.5})
    log.frames(6, 'samples/grid', np.full((2, 4, 4, 3), 200, np.uint8))
  lines = (results / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 7
  first = json.loads(lines[0])
  assert list(first) == ['step', 'time', 'loss', 'lr', 'grad_norm', 'step_time']
  assert first['step'] == 0 and first['loss'] == 0.5 and abs(first['time'] - time.time()) < 60
  last = json.loads(lines[5])
  assert last['loss'] == 'NaN' and last['grad_norm'] == 'Infinity'  # valid JSON, no bare NaN
  records = metrics.read_metrics(results / 'metrics.jsonl')
  assert math.isnan(records[5]['loss']) and records[5]['grad_norm'] == math.inf
  assert records[6]['val_loss'] == 0.3 and records[6]['val_loss_t62'] == 0.5

  assert len(os.listdir(tb)) == 1
  scalars, images = read_events(tb)
  assert [step for step, _ in scalars['train/loss']] == list(range(7))
  assert scalars['train/step_time'][0] == (0, np.float32(0.1))
  assert 'train/step' not in scalars and 'train/time' not in scalars
  assert scalars['eval/fvd'] == [(6, 80.5)] and 'train/fvd' not in scalars
  assert scalars['val/loss'] == [(6, np.float32(0.3))] and scalars['val/loss_t62'] == [(6, 0.5)]
  ((step, pixels),) = images['samples/grid']
  assert step == 6 and pixels.shape == (4, 8, 3) and (pixels == 200).all()


def test_tensorboard_tags():
  assert metrics.tensorboard_tag('loss') == 'train/loss'
  assert metrics.tensorboard_tag('grad_norm', 'x/') == 'x/grad_norm'
  assert metrics.tensorboard_tag('fvd') == 'eval/fvd'
  assert metrics.tensorboard_tag('val_loss_t0.0625') == 'val/loss_t0.0625'


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
