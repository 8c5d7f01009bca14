"""`video-diffusion prepare` and packed ArrayRecord shards read through grain."""

import numpy as np
import pytest
from array_record.python import array_record_module
from test_clips import frame_numbers, write_counting_video
from test_data import make_cfg, take

from video_diffusion.data import loader as data_loader
from video_diffusion.data import prepare as prepare_lib
from video_diffusion.data import sources
from video_diffusion.data.errors import DataError
from video_diffusion.data.preprocess import Preprocess
from video_diffusion.data.shards import PackedSource


@pytest.fixture
def videos(tmp_path):
  """Two class folders of counting videos, with a caption and a vector beside each."""
  for name, frames in [('cats/a.mp4', 30), ('cats/b.mp4', 34), ('dogs/c.mp4', 40)]:
    (tmp_path / 'src' / name).parent.mkdir(parents=True, exist_ok=True)
    write_counting_video(tmp_path / 'src' / name, frames)
    (tmp_path / 'src' / name).with_suffix('.txt').write_text(f'a clip called {name}')
    np.save((tmp_path / 'src' / name).with_suffix('.npy'), np.array([frames, 0.5, -1], np.float32))
  return tmp_path / 'src'


def numbered_npy(path, sequences=12, frames=10):
  """A (frames, sequences, 8, 8) .npy whose pixels read 10 * sequence + frame."""
  values = 10 * np.arange(sequences)[None, :] + np.arange(frames)[:, None]
  np.save(
    path, np.broadcast_to(values[..., None, None], (frames, sequences, 8, 8)).astype(np.uint8)
  )
  return path


def test_prepare_packs_the_clips_training_would_cut(tmp_path, videos):
  spec = make_cfg(videos, frames=4, size=16, trainer={'frame_stride': 2, 'clips_per_video': 2})
  manifest = prepare_lib.prepare(str(videos), str(tmp_path / 'out'), spec, 2)
  assert manifest['clips'] == 6 and manifest['video_shape'] == [4, 16, 16, 1]
  assert manifest['conditions'] == {'class': ['cats', 'dogs'], 'text': True, 'vector': 3}
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
    'clips-00000-of-00002.array_record',
    'clips-00001-of-00002.array_record',
    'manifest.json',
  ]
  folder = sources.make_source(spec)
  packed = sources.make_source(make_cfg(tmp_path / 'out', frames=4, size=16))
  assert isinstance(packed, PackedSource) and len(packed) == 6
  preprocess = Preprocess(4, 16, 1)
  for index in range(6):
    rng = np.random.default_rng([0, index])
    expected = preprocess.random_map(folder.read_clip(index, rng), rng)['video']
    np.testing.assert_array_equal(packed[index]['video'], expected)
    assert np.all(np.diff(frame_numbers(packed[index]['video'])) == 2)
  classes = sources.make_source(
    make_cfg(tmp_path / 'out', frames=4, size=16, unet={'num_classes': 2})
  )
  assert [int(classes[i]['cond']) for i in range(6)] == [0, 0, 0, 0, 1, 1]
  texts = sources.make_source(
    make_cfg(tmp_path / 'out', frames=4, size=16, unet={'use_bert_text_cond': True})
  )
  assert str(texts[4]['cond']) == 'a clip called dogs/c.mp4'
  vectors = sources.make_source(make_cfg(tmp_path / 'out', frames=4, size=16, unet={'cond_dim': 3}))
  np.testing.assert_array_equal(vectors[2]['cond'], np.array([34, 0.5, -1], np.float32))
  batch = take(data_loader.make_loader(make_cfg(tmp_path / 'out', frames=4, size=16), seed=0), 1)
  assert batch[0]['video'].shape == (4, 4, 16, 16, 1)


def test_a_mismatched_or_missing_condition_is_refused(tmp_path, videos):
  prepare_lib.prepare(str(videos), str(tmp_path / 'out'), make_cfg(videos), 1)
  with pytest.raises(DataError, match=r'holds clips of 4 frames of 16x16 with 1 channels but the'):
    sources.make_source(make_cfg(tmp_path / 'out', frames=6))
  with pytest.raises(DataError, match='condition vectors of 3 values but unet.cond_dim is 5'):
    sources.make_source(make_cfg(tmp_path / 'out', unet={'cond_dim': 5}))


def test_an_interrupted_prepare_continues_without_redoing_finished_shards(tmp_path, monkeypatch):
  npy = numbered_npy(tmp_path / 'm.npy')
  spec = make_cfg(npy, frames=3, size=8)
  out = str(tmp_path / 'out')
  writes, fail_at = [], [7]

  class Counting(array_record_module.ArrayRecordWriter):
    def write(self, data):
      if len(writes) == fail_at[0]:
        raise KeyboardInterrupt
      writes.append(data)
      super().write(data)

  monkeypatch.setattr(prepare_lib, 'ArrayRecordWriter', Counting)
  with pytest.raises(KeyboardInterrupt):
    prepare_lib.prepare(str(npy), out, spec, 4)  # 3 clips per shard
  assert sorted(p.name for p in (tmp_path / 'out').iterdir())[:2] == [
    'clips-00000-of-00004.array_record',
    'clips-00001-of-00004.array_record',
  ]
  with pytest.raises(DataError, match='unfinished prepare with other settings \\(shards\\)'):
    prepare_lib.prepare(str(npy), out, spec, 3)
  writes.clear()
  fail_at[0] = None
  prepare_lib.prepare(str(npy), out, spec, 4)
  assert len(writes) == 6  # shards 2 and 3 only
  packed = sources.make_source(make_cfg(tmp_path / 'out', frames=3, size=8))
  first_pixels = sorted(int(packed[i]['video'][0, 0, 0, 0]) // 10 for i in range(12))
  assert first_pixels == list(range(12))  # every sequence once
  with pytest.raises(DataError, match=r'holds no class conditions \(it has: none\)'):
    sources.make_source(make_cfg(tmp_path / 'out', frames=3, size=8, unet={'num_classes': 3}))
  with pytest.raises(DataError, match='already holds packed clips'):
    prepare_lib.prepare(str(npy), out, spec, 4)


def test_processes_read_disjoint_shares_and_the_position_resumes(tmp_path):
  npy = numbered_npy(tmp_path / 'm.npy')
  prepare_lib.prepare(str(npy), str(tmp_path / 'out'), make_cfg(npy, frames=3, size=8), 5)
  spec = make_cfg(tmp_path / 'out', frames=3, size=8, batch=2, accumulate=1)
  seen = []
  for process in range(2):
    loader = data_loader.make_loader(
      spec, seed=1, process_index=process, process_count=2, num_epochs=1
    )
    seen.append({int(v[0, 0, 0, 0]) // 10 for batch in loader for v in batch['video']})
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(12))
  it = iter(data_loader.make_loader(spec, seed=1))
  take(it, 2)
  state = data_loader.iterator_state(it)
  after = take(it, 2)
  restored = data_loader.restore_iterator(data_loader.make_loader(spec, seed=1), state)
  for a, b in zip(after, take(restored, 2)):
    np.testing.assert_array_equal(a['video'], b['video'])
