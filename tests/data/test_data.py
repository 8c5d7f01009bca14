"""The grain input pipeline: sources, preprocessing, sharding, checkpointable iterators."""

import json
import pickle

import av
import numpy as np
import pytest
from PIL import Image

from video_diffusion.config import config_from_dict
from video_diffusion.data import loader as data_loader
from video_diffusion.data import preprocess, sources
from video_diffusion.data.errors import DataError, UnreadableVideoWarning
from video_diffusion.data.spec import DataSpec
from video_diffusion.data.synthetic import caption
from video_diffusion.data.video_io import write_gif


def make_cfg(
  path=None,
  *,
  frames=4,
  size=16,
  channels=1,
  batch=2,
  accumulate=2,
  seed=0,
  unet=None,
  trainer=None,
):
  """The DataSpec of a small config with these settings."""
  return DataSpec.from_config(
    config_from_dict(
      {
        'unet': {'channels': channels, 'dim_mults': [1, 2], **(unet or {})},
        'diffusion': {'num_frames': frames, 'image_size': size, 'channels': channels},
        'trainer': {
          'dataset_path': None if path is None else str(path),
          'seed': seed,
          'train_batch_size': batch,
          'gradient_accumulate_every': accumulate,
          'data_workers': 0,
          **(trainer or {}),
        },
      }
    )
  )


def record(source, index, seed=0):
  """Record `index` of a source as the loader reads it (clip references through read_clip)."""
  return source.read_clip(index, np.random.default_rng(seed)) if source.clips else source[index]


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
  loader = data_loader.make_loader(make_cfg(mnist, frames=8, size=16), seed=1)
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
  (tmp_path / 'sub' / 'cut.gif').write_bytes(good[: len(good) // 2])
  (tmp_path / 'notes.txt').write_text('not a video')

  source = sources.VideoFolderSource(tmp_path)
  rel = [p[len(str(tmp_path)) + 1 :] for p in source.paths]
  assert rel == ['a.gif', 'c.GIF', 'sub/b.gif', 'sub/cut.gif', 'sub/deeper/d.mp4']
  with pytest.warns(UnreadableVideoWarning, match='cut.gif'):
    replaced = record(source, 3)
  assert replaced['video'].shape == (6, 32, 32, 3)  # the next file, d.mp4

  loader = data_loader.make_loader(make_cfg(tmp_path, frames=4, size=16, channels=3), seed=0)
  with pytest.warns(UnreadableVideoWarning, match='cut.gif'):
    batches = take(loader, 3)
  for batch in batches:
    assert batch['video'].shape == (4, 4, 16, 16, 3)


def test_channel_conversion_and_padding():
  rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), np.uint8)
  grey = preprocess.Preprocess(5, 8, 1).random_map({'video': rgb}, np.random.default_rng(0))[
    'video'
  ]
  assert grey.shape == (5, 8, 8, 1)
  pillow = np.stack([np.asarray(Image.fromarray(f).convert('L')) for f in rgb])
  assert np.abs(grey[:3, ..., 0].astype(int) - pillow).max() <= 1
  np.testing.assert_array_equal(grey[3], grey[2])  # padded by repeating the last frame
  np.testing.assert_array_equal(grey[4], grey[2])

  three = preprocess.Preprocess(3, 8, 3).random_map({'video': grey}, np.random.default_rng(0))
  assert three['video'].shape == (3, 8, 8, 3)
  np.testing.assert_array_equal(three['video'][..., 1], three['video'][..., 0])


def test_resize_keeps_the_centre_square():
  video = np.zeros((1, 20, 40, 1), np.uint8)
  video[:, :, 10:30] = 255  # the centred 20 x 20 square of a 20 x 40 frame
  out = preprocess.Preprocess(1, 10, 1).random_map({'video': video}, np.random.default_rng(0))
  assert out['video'].shape == (1, 10, 10, 1)
  assert (out['video'][..., 1:-1, :] == 255).all()  # the outer columns blend with the
  assert (out['video'] > 200).all()  # neighbours, as resize-then-crop would


def test_mnist_to_rgb(mnist):
  batch = take(data_loader.make_loader(make_cfg(mnist, channels=3), seed=0), 1)[0]
  assert batch['video'].shape == (4, 4, 16, 16, 3)


def test_synthetic_order_depends_on_seed():
  cfg = make_cfg(frames=3, size=8)
  a = take(data_loader.make_loader(cfg, seed=5), 2)
  assert_same_batches(a, take(data_loader.make_loader(cfg, seed=5), 2))
  b = take(data_loader.make_loader(cfg, seed=6), 2)
  assert not np.array_equal(a[0]['video'], b[0]['video'])
  assert a[0]['label'].shape == (4, 2) and (a[0]['label'][:, 0] >= 0).all()


def test_processes_read_disjoint_shards(mnist):
  cfg = make_cfg(mnist)

  def sequences(**kw):
    batches = list(data_loader.make_loader(cfg, seed=3, num_epochs=1, **kw))
    assert all(b['video'].shape[0] == 4 // kw.get('process_count', 1) for b in batches)
    return [int(v) // 20 for b in batches for v in b['video'][:, 0, 0, 0, 0]]

  whole = sequences()
  first, second = (sequences(process_index=i, process_count=2) for i in range(2))
  assert sorted(whole) == list(range(12))
  assert len(first) == len(second) == 6 and not set(first) & set(second)
  assert sorted(first + second) == sorted(whole)


def test_iterator_state_round_trip(mnist):
  cfg = make_cfg(mnist)
  it = iter(data_loader.make_loader(cfg, seed=2))
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(data_loader.iterator_state(it)))
  expected = [next(it) for _ in range(2)]
  restored = data_loader.restore_iterator(data_loader.make_loader(cfg, seed=2), state)
  assert_same_batches(expected, [next(restored) for _ in range(2)])
  with pytest.raises(DataError, match='seed=3'):
    data_loader.restore_iterator(data_loader.make_loader(cfg, seed=3), state)


def test_errors_name_the_path(tmp_path):
  with pytest.raises(DataError, match='nowhere.npy.*not found.*folder of videos'):
    sources.make_source(make_cfg(tmp_path / 'nowhere.npy'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match=r'empty: no video files.*\.gif'):
    sources.make_source(make_cfg(tmp_path / 'empty'))
  np.save(tmp_path / 'flat.npy', np.zeros((20, 64, 64), np.uint8))
  with pytest.raises(DataError, match=r'flat.npy: expected .*found uint8 .*\(20, 64, 64\)'):
    sources.make_source(make_cfg(tmp_path / 'flat.npy'))
  np.save(tmp_path / 'float.npy', np.zeros((20, 2, 64, 64), np.float32))
  with pytest.raises(DataError, match='float.npy: .*found float32'):
    sources.make_source(make_cfg(tmp_path / 'float.npy'))
  with pytest.raises(DataError, match=r'6 videos per step .* is not divisible by the 4'):
    data_loader.make_loader(make_cfg(batch=2, accumulate=3), seed=0, process_count=4)


def test_sources_pickle(mnist):
  source = pickle.loads(pickle.dumps(sources.MovingMnistSource(mnist)))
  assert len(source) == 12 and record(source, 5)['video'][3, 0, 0, 0] == 103
  assert len(pickle.dumps(sources.MovingMnistSource(mnist))) < 1000  # the path, not the array


def test_worker_process_gives_the_same_batches():
  cfg = make_cfg(frames=3, size=8)
  in_process = take(data_loader.make_loader(cfg, seed=4, worker_count=0), 2)
  it = iter(data_loader.make_loader(cfg, seed=4, worker_count=1))
  try:
    assert_same_batches(in_process, [next(it) for _ in range(2)])
  finally:
    data_loader.close_iterator(it)


# Conditions ('cond') of conditional configs.

CLASS, VECTOR, TEXT = {'num_classes': 10}, {'cond_dim': 10}, {'use_bert_text_cond': True}


def tiny_folder(root, names, frames=2):
  """Tiny grey GIFs at root/name; video k is the constant 40 k % 256 (to tell them apart)."""
  for k, name in enumerate(names):
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    write_gif(root / name, np.full((frames, 8, 8, 1), 40 * k % 256, np.uint8))
  return root


def test_condition_kind():
  assert make_cfg().condition.kind is None
  assert make_cfg(unet=CLASS).condition.kind == 'class'
  assert make_cfg(unet={'num_classes': 3, 'cond_dim': 16}).condition.kind == 'class'
  assert make_cfg(unet=VECTOR).condition.kind == 'vector'
  assert make_cfg(unet={**TEXT, 'cond_dim': 768}).condition.kind == 'text'


def test_unconditional_records_have_no_cond(tmp_path):
  batch = take(data_loader.make_loader(make_cfg(frames=2, size=8), seed=0), 1)[0]
  assert set(batch) == {'video', 'label', 'velocity'}
  assert repr(sources.make_source(make_cfg())) == (
    'SyntheticDigitsSource(seed=0, num_frames=4, image_size=16, channels=1, length=1048576)'
  )
  source = sources.make_source(make_cfg(tiny_folder(tmp_path, ['a/x.gif'])))
  assert set(record(source, 0)) == {'video', 'label', 'velocity'} and source.condition(0) is None


def test_synthetic_class_labels():
  cfg = make_cfg(frames=2, size=8, unet=CLASS)
  record = sources.make_source(cfg)[3]
  assert record['cond'].shape == () and record['cond'].dtype == np.int32
  batch = take(data_loader.make_loader(cfg, seed=0), 1)[0]
  assert batch['cond'].shape == (4,) and batch['cond'].dtype == np.int32
  assert batch['label'].shape == (4, 2) and (batch['label'][:, 1] == -1).all()  # one digit
  np.testing.assert_array_equal(batch['cond'], batch['label'][:, 0])
  assert ((batch['cond'] >= 0) & (batch['cond'] < 10)).all()
  assert not batch['velocity'][:, 1].any() and batch['velocity'][:, 0].any()
  with pytest.raises(DataError, match='synthetic digits have 10 classes.*num_classes is 5'):
    sources.make_source(make_cfg(unet={'num_classes': 5}))


def test_synthetic_condition_vectors():
  cfg = make_cfg(frames=2, size=8, unet=VECTOR)
  batch = take(data_loader.make_loader(cfg, seed=0), 1)[0]
  assert batch['cond'].shape == (4, 10) and batch['cond'].dtype == np.float32
  for cond, label in zip(batch['cond'], batch['label']):
    np.testing.assert_array_equal(np.flatnonzero(cond), np.unique(label[label >= 0]))
    assert set(cond.tolist()) <= {0.0, 1.0}
  with pytest.raises(DataError, match='10-wide condition vectors.*cond_dim is 8'):
    sources.make_source(make_cfg(unet={'cond_dim': 8}))


def test_synthetic_captions():
  cfg = make_cfg(frames=2, size=8, unet=TEXT)
  record = sources.make_source(cfg)[0]
  assert record['cond'].shape == () and record['cond'].dtype.kind == 'U'
  batch = take(data_loader.make_loader(cfg, seed=0), 1)[0]
  assert batch['cond'].shape == (4,) and batch['cond'].dtype.kind == 'U'
  for text, label, velocity in zip(batch['cond'], batch['label'], batch['velocity']):
    assert str(text) == caption(label, velocity) and str(text).startswith('a ')


def test_folder_class_labels(tmp_path):
  tiny_folder(tmp_path, ['root.gif', 'cats/a.gif', 'cats/b.gif', 'dogs/big/c.gif', 'dogs/d.gif'])
  good = (tmp_path / 'cats' / 'a.gif').read_bytes()
  (tmp_path / 'cats' / 'cut.gif').write_bytes(good[: len(good) // 2])
  cfg = make_cfg(tmp_path, frames=2, size=8, unet={'num_classes': 5})
  with pytest.warns(UnreadableVideoWarning, match='cut.gif'):  # its header, read at the start
    source = sources.make_source(cfg)
  assert source.class_names == ['', 'cats', 'dogs', 'dogs/big']
  rel = [p[len(str(tmp_path)) + 1 :] for p in source.paths]
  assert rel == [
    'cats/a.gif',
    'cats/b.gif',
    'cats/cut.gif',
    'dogs/big/c.gif',
    'dogs/d.gif',
    'root.gif',
  ]
  assert [int(source.condition(i)) for i in range(6)] == [1, 1, 1, 3, 2, 0]
  assert record(source, 4)['cond'].dtype == np.int32 and record(source, 4)['cond'].shape == ()
  replaced = record(source, 2)
  assert int(replaced['cond']) == 3 and replaced['video'][0, 0, 0, 0] == 120  # dogs/big/c.gif

  with pytest.warns(UnreadableVideoWarning):
    batches = list(data_loader.make_loader(cfg, seed=0, num_epochs=1, worker_count=0))
  assert len(batches) == 1
  batch = batches[0]
  assert batch['cond'].shape == (4,) and batch['cond'].dtype == np.int32
  names = {40 * k: c for k, c in enumerate([0, 1, 1, 3, 2])}  # video value -> class
  for video, cond in zip(batch['video'], batch['cond']):
    assert names[int(video[0, 0, 0, 0])] == cond

  with pytest.raises(
    DataError,
    match=r"4 class folders \('', 'cats', .*unet.num_classes is "
    r'3; set unet.num_classes to at least 4',
  ):
    sources.make_source(make_cfg(tmp_path, unet={'num_classes': 3}))


def test_folder_condition_vectors(tmp_path):
  tiny_folder(tmp_path, ['a.gif', 'b.gif', 'sub/c.mp4.gif', 'sub/d.gif'])
  for k, name in enumerate(['a', 'b', 'sub/c.mp4', 'sub/d']):
    np.save(tmp_path / f'{name}.npy', np.arange(3) + 10 * k)
  cfg = make_cfg(tmp_path, frames=2, size=8, unet={'cond_dim': 3})
  source = sources.make_source(cfg)
  np.testing.assert_array_equal(record(source, 2)['cond'], [20, 21, 22])
  assert record(source, 2)['cond'].dtype == np.float32
  batch = take(data_loader.make_loader(cfg, seed=1), 1)[0]
  assert batch['cond'].shape == (4, 3) and batch['cond'].dtype == np.float32
  for video, cond in zip(batch['video'], batch['cond']):
    assert cond[0] == 10 * (video[0, 0, 0, 0] // 40)

  with pytest.raises(DataError, match=r'cond_dim\).*found int64 array of shape \(3,\)'):
    sources.make_source(make_cfg(tmp_path, unet={'cond_dim': 4}))  # the shape, named by file
  np.save(tmp_path / 'b.npy', np.zeros((3, 1)))
  with pytest.raises(
    DataError,
    match=r'b\.npy: the condition vector must be a float array '
    r'of shape \(3,\).*found float64 array of shape \(3, 1\)',
  ):
    sources.make_source(cfg)
  (tmp_path / 'b.npy').unlink()
  with pytest.raises(
    DataError,
    match=r'b\.npy: condition file not found \(1 of 4 videos.*'
    r'unet.cond_dim',
  ):
    sources.make_source(cfg)


def test_folder_texts(tmp_path):
  tiny_folder(tmp_path, ['walking_the-dog/a.gif', 'walking_the-dog/b.gif', 'rain/c.gif'])
  texts = {
    'walking_the-dog/a': 'a dog walks\n',
    'walking_the-dog/b': '  ünïcödé ✓ ',
    'rain/c': 'rain falls',
  }
  for name, text in texts.items():
    (tmp_path / f'{name}.txt').write_text(text, encoding='utf-8')
  cfg = make_cfg(tmp_path, frames=2, size=8, unet=TEXT)
  source = sources.make_source(cfg)
  assert [str(source.condition(i)) for i in range(3)] == ['rain falls', 'a dog walks', 'ünïcödé ✓']
  assert record(source, 0)['cond'].shape == () and record(source, 0)['cond'].dtype.kind == 'U'
  batch = take(
    data_loader.make_loader(
      make_cfg(tmp_path, frames=2, size=8, batch=3, accumulate=1, unet=TEXT), seed=0
    ),
    1,
  )[0]
  assert batch['cond'].shape == (3,) and batch['cond'].dtype.kind == 'U'
  assert sorted(batch['cond'].tolist()) == ['a dog walks', 'rain falls', 'ünïcödé ✓']

  by_path = sources.make_source(make_cfg(tmp_path, unet=TEXT, trainer={'use_path_as_cond': True}))
  assert [str(by_path.condition(i)) for i in range(3)] == ['rain', 'walking the dog'] + [
    'walking the dog'
  ]
  (tmp_path / 'rain' / 'c.txt').unlink()
  by_path = sources.make_source(make_cfg(tmp_path, unet=TEXT, trainer={'use_path_as_cond': True}))
  assert str(record(by_path, 0)['cond']) == 'rain'  # no .txt needed
  with pytest.raises(DataError, match=r'c\.txt: condition file not found.*use_path_as_cond'):
    sources.make_source(cfg)


def test_text_batches_survive_a_worker_process(tmp_path):
  tiny_folder(tmp_path, [f'{k}.gif' for k in range(4)])
  for k in range(4):
    (tmp_path / f'{k}.txt').write_text(f'vidéo {k} ' + '✓' * k + '\n', encoding='utf-8')
  cfg = make_cfg(tmp_path, frames=2, size=8, unet=TEXT)
  in_process = take(data_loader.make_loader(cfg, seed=4, worker_count=0), 2)
  it = iter(data_loader.make_loader(cfg, seed=4, worker_count=1))
  try:
    from_worker = [next(it) for _ in range(2)]
  finally:
    data_loader.close_iterator(it)
  assert_same_batches(in_process, from_worker)
  for batch in from_worker:
    assert batch['cond'].shape == (4,) and batch['cond'].dtype.kind == 'U'
    assert sorted(batch['cond'].tolist()) == [f'vidéo {k} {"✓" * k}'.strip() for k in range(4)]


def test_moving_mnist_has_no_conditions(mnist):
  for unet, key in [(CLASS, 'num_classes'), (VECTOR, 'cond_dim'), (TEXT, 'use_bert_text_cond')]:
    with pytest.raises(
      DataError,
      match=rf'mnist.npy: a Moving MNIST .npy has no labels or '
      rf'texts.*unet.{key}.*folder dataset or the synthetic digits',
    ):
      sources.make_source(make_cfg(mnist, unet=unet))


def test_loader_rejects_a_source_of_another_kind(tmp_path):
  source = sources.make_source(make_cfg(frames=2, size=8))
  with pytest.raises(DataError, match='gives no conditions but the config asks for class'):
    data_loader.make_loader(make_cfg(frames=2, size=8, unet=CLASS), seed=0, source=source)


def test_conditional_sources_pickle_small(tmp_path):
  tiny_folder(tmp_path, [f'c{k % 3}/{k}.gif' for k in range(30)])
  source = sources.make_source(make_cfg(tmp_path, unet={'num_classes': 3}))
  copy = pickle.loads(pickle.dumps(source))
  assert copy.class_names == ['c0', 'c1', 'c2']
  assert [int(record(copy, k)['cond']) for k in (0, 10, 20)] == [
    0,
    1,
    2,
  ]  # c0/0.gif, c1/1.gif, c2/11.gif
  assert len(pickle.dumps(source)) < 3000 + 100 * len(source)
  synthetic = sources.make_source(make_cfg(unet=TEXT))
  assert len(pickle.dumps(synthetic)) < 1000
  assert str(pickle.loads(pickle.dumps(synthetic))[7]['cond']) == str(synthetic[7]['cond'])
