"""The grain input pipeline: sources, preprocessing, sharding, checkpointable iterators."""

import json
import pickle

import av
import numpy as np
import pytest
from PIL import Image

from video_diffusion import data
from video_diffusion.config import config_from_dict
from video_diffusion.video_io import write_gif


def make_cfg(path=None, *, frames=4, size=16, channels=1, batch=2, accumulate=2, seed=0):
  return config_from_dict({
      'unet': {'channels': channels, 'dim_mults': [1, 2]},
      'diffusion': {'num_frames': frames, 'image_size': size, 'channels': channels},
      'trainer': {'dataset_path': None if path is None else str(path), 'seed': seed,
                  'train_batch_size': batch, 'gradient_accumulate_every': accumulate,
                  'data_workers': 0}})


def take(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture
def mnist(tmp_path):
  """Moving MNIST layout (20, 12, 64, 64): frame t of sequence n is the constant 20 n + t."""
  values = 20 * np.arange(12)[None, :] + np.arange(20)[:, None]
  path = tmp_path / 'mnist.npy'
  np.save(path, np.broadcast_to(values[..., None, None], (20, 12, 64, 64)).astype(np.uint8))
  return path


def write_mp4(path, video):
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('libx264', rate=8)
    stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], 'yuv420p'
    for frame in video:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())


def test_moving_mnist_end_to_end(mnist):
  loader = data.make_loader(make_cfg(mnist, frames=8, size=16), seed=1)
  for batch in take(loader, 4):
    video = batch['video']
    assert video.shape == (4, 8, 16, 16, 1) and video.dtype == np.uint8
    assert (batch['label'] == -1).all() and batch['label'].shape == (4, 2)
    assert batch['velocity'].shape == (4, 2, 2) and not batch['velocity'].any()
    first = video[:, 0, 0, 0, 0].astype(int)
    start = first % 20
    assert (start <= 20 - 8).all()  # a window of 8 consecutive frames of one sequence
    np.testing.assert_array_equal(video[..., 0, 0, 0], first[:, None] + np.arange(8))
    assert (video == video[:, :, :1, :1]).all()


def test_folder_source_end_to_end(tmp_path):
  rng = np.random.default_rng(0)
  colours = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 30]], np.uint8)
  for name, shape in [('a.gif', (5, 20, 30)), ('sub/b.gif', (2, 16, 16)), ('c.GIF', (6, 24, 20))]:
    write_gif(tmp_path / name, colours[rng.integers(0, 3, shape)])
  (tmp_path / 'sub' / 'deeper').mkdir()
  write_mp4(tmp_path / 'sub' / 'deeper' / 'd.mp4', rng.integers(0, 255, (6, 32, 32, 3), np.uint8))
  good = (tmp_path / 'a.gif').read_bytes()
  (tmp_path / 'sub' / 'cut.gif').write_bytes(good[:len(good) // 2])
  (tmp_path / 'notes.txt').write_text('not a video')

  source = data.VideoFolderSource(tmp_path)
  rel = [p[len(str(tmp_path)) + 1:] for p in source.paths]
  assert rel == ['a.gif', 'c.GIF', 'sub/b.gif', 'sub/cut.gif', 'sub/deeper/d.mp4']
  with pytest.warns(data.UnreadableVideoWarning, match='cut.gif'):
    replaced = source[3]
  assert replaced['video'].shape == (6, 32, 32, 3)  # the next file, d.mp4

  loader = data.make_loader(make_cfg(tmp_path, frames=4, size=16, channels=3), seed=0)
  with pytest.warns(data.UnreadableVideoWarning, match='cut.gif'):
    batches = take(loader, 3)
  for batch in batches:
    assert batch['video'].shape == (4, 4, 16, 16, 3)


def test_channel_conversion_and_padding():
  rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), np.uint8)
  grey = data.Preprocess(5, 8, 1).random_map({'video': rgb}, np.random.default_rng(0))['video']
  assert grey.shape == (5, 8, 8, 1)
  pillow = np.stack([np.asarray(Image.fromarray(f).convert('L')) for f in rgb])
  assert np.abs(grey[:3, ..., 0].astype(int) - pillow).max() <= 1
  np.testing.assert_array_equal(grey[3], grey[2])  # padded by repeating the last frame
  np.testing.assert_array_equal(grey[4], grey[2])

  three = data.Preprocess(3, 8, 3).random_map({'video': grey}, np.random.default_rng(0))
  assert three['video'].shape == (3, 8, 8, 3)
  np.testing.assert_array_equal(three['video'][..., 1], three['video'][..., 0])


def test_resize_keeps_the_centre_square():
  video = np.zeros((1, 20, 40, 1), np.uint8)
  video[:, :, 10:30] = 255  # the centred 20 x 20 square of a 20 x 40 frame
  out = data.Preprocess(1, 10, 1).random_map({'video': video}, np.random.default_rng(0))
  assert out['video'].shape == (1, 10, 10, 1)
  assert (out['video'][..., 1:-1, :] == 255).all()  # the outer columns blend with the
  assert (out['video'] > 200).all()                 # neighbours, as resize-then-crop would


def test_mnist_to_rgb(mnist):
  batch = take(data.make_loader(make_cfg(mnist, channels=3), seed=0), 1)[0]
  assert batch['video'].shape == (4, 4, 16, 16, 3)


def test_synthetic_order_depends_on_seed():
  cfg = make_cfg(frames=3, size=8)
  a = take(data.make_loader(cfg, seed=5), 2)
  assert_same_batches(a, take(data.make_loader(cfg, seed=5), 2))
  b = take(data.make_loader(cfg, seed=6), 2)
  assert not np.array_equal(a[0]['video'], b[0]['video'])
  assert a[0]['label'].shape == (4, 2) and (a[0]['label'][:, 0] >= 0).all()


def test_processes_read_disjoint_shards(mnist):
  cfg = make_cfg(mnist)

  def sequences(**kw):
    batches = list(data.make_loader(cfg, seed=3, num_epochs=1, **kw))
    assert all(b['video'].shape[0] == 4 // kw.get('process_count', 1) for b in batches)
    return [int(v) // 20 for b in batches for v in b['video'][:, 0, 0, 0, 0]]

  whole = sequences()
  first, second = (sequences(process_index=i, process_count=2) for i in range(2))
  assert sorted(whole) == list(range(12))
  assert len(first) == len(second) == 6 and not set(first) & set(second)
  assert sorted(first + second) == sorted(whole)


def test_iterator_state_round_trip(mnist):
  cfg = make_cfg(mnist)
  it = iter(data.make_loader(cfg, seed=2))
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(data.iterator_state(it)))
  expected = [next(it) for _ in range(2)]
  restored = data.restore_iterator(data.make_loader(cfg, seed=2), state)
  assert_same_batches(expected, [next(restored) for _ in range(2)])
  with pytest.raises(data.DataError, match='seed=3'):
    data.restore_iterator(data.make_loader(cfg, seed=3), state)


def test_errors_name_the_path(tmp_path):
  with pytest.raises(data.DataError, match='nowhere.npy.*not found.*folder of videos'):
    data.make_source(make_cfg(tmp_path / 'nowhere.npy'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(data.DataError, match=r'empty: no video files.*\.gif'):
    data.make_source(make_cfg(tmp_path / 'empty'))
  np.save(tmp_path / 'flat.npy', np.zeros((20, 64, 64), np.uint8))
  with pytest.raises(data.DataError, match=r'flat.npy: expected .*found uint8 .*\(20, 64, 64\)'):
    data.make_source(make_cfg(tmp_path / 'flat.npy'))
  np.save(tmp_path / 'float.npy', np.zeros((20, 2, 64, 64), np.float32))
  with pytest.raises(data.DataError, match='float.npy: .*found float32'):
    data.make_source(make_cfg(tmp_path / 'float.npy'))
  with pytest.raises(data.DataError, match=r'2 \* 3 = 6 is not divisible by the 4'):
    data.make_loader(make_cfg(batch=2, accumulate=3), seed=0, process_count=4)


def test_sources_pickle(mnist):
  source = pickle.loads(pickle.dumps(data.MovingMnistSource(mnist)))
  assert len(source) == 12 and source[5]['video'][3, 0, 0, 0] == 103
  assert len(pickle.dumps(data.MovingMnistSource(mnist))) < 1000  # the path, not the array


def test_worker_process_gives_the_same_batches():
  cfg = make_cfg(frames=3, size=8)
  in_process = take(data.make_loader(cfg, seed=4, worker_count=0), 2)
  it = iter(data.make_loader(cfg, seed=4, worker_count=1))
  try:
    assert_same_batches(in_process, [next(it) for _ in range(2)])
  finally:
    data.close_iterator(it)
