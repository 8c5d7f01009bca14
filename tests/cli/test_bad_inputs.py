"""Bad input of every kind ends in exit status 2 and one `error:` line, and changes no checkpoint.

Each row of BAD_INPUTS is a command line (train, sample, eval or prepare) run
in-process through `video_diffusion.cli.main`, so an uncaught exception fails
the test the way a traceback would fail a user. Placeholders: {train},
{sample}, {eval}, {prepare} a command with the tiny (class-conditional) config
{cfg} (and its trained checkpoints {ckpt}); {uncond} the override that makes
the model unconditional; {dir} this module's folder of bad files; {damaged} a
copy of the checkpoints with a truncated params file; {fresh} a new, empty
folder, where a training run without a results folder of its own writes. A
few rows run again through the scripts.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import yaml
from conftest import ROOT
from PIL import Image

from video_diffusion import cli
from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict, config_to_dict
from video_diffusion.data.prepare import prepare
from video_diffusion.data.spec import DataSpec
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.train.optimizer import make_optimizer
from video_diffusion.train.state import init_train_state

pytestmark = pytest.mark.slow  # trains a model and runs the CLI end to end

TINY = {
  'unet': dict(dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8, num_classes=10),
  'diffusion': dict(image_size=16, num_frames=4, channels=1, timesteps=8, loss_type='l2'),
  'trainer': dict(
    train_batch_size=2,
    train_num_steps=1,
    checkpoint_every_steps=1,
    save_and_sample_every=1000,
    data_workers=0,
  ),
}
UNCONDITIONAL = 'unet.num_classes=null'  # so a dataset's own fault is what is reported
SMALL_DIT = 'diffusion.backbone=dit dit.width=16 dit.depth=1 dit.heads=2 dit.patch_size=4'

# (what is wrong, command line, text the error line must hold)
BAD_INPUTS = [
  # config: types, sizes, mismatches, empty strings, unknown names, YAML
  ('wrong type', '{train} trainer.train_lr=abc', 'trainer.train_lr must be a float'),
  ('zero size', '{train} trainer.train_batch_size=0', 'must be > 0, got 0'),
  ('negative size', '{train} trainer.train_batch_size=-2', 'must be > 0, got -2'),
  ('zero frame size', '{train} diffusion.image_size=0', 'diffusion.image_size must'),
  ('negative frames', '{train} diffusion.num_frames=-1', 'num_frames must be > 0'),
  ('zero timesteps', '{train} diffusion.timesteps=0', 'timesteps must be > 0'),
  ('negative steps', '{train} trainer.train_num_steps=-5', 'train_num_steps must'),
  ('out of range', '{train} trainer.ema_decay=1.5', 'ema_decay must be in [0, 1]'),
  (
    'frames mismatch',
    '{train} trainer.num_frames=7',
    'trainer.num_frames is 7 but diffusion.num_frames is 4',
  ),
  ('channels mismatch', '{train} unet.channels=3', 'unet.channels is 3 but'),
  ('size vs levels', '{train} diffusion.image_size=15', 'must be divisible by 2'),
  (
    'dit heads',
    '{train} diffusion.backbone=dit dit.width=30 dit.heads=4',
    'dit.width (30) must split into dit.heads (4)',
  ),
  (
    'dit patch',
    '{train} diffusion.backbone=dit dit.patch_size=5',
    'must be divisible by dit.patch_size (5)',
  ),
  ('empty string', '{train} diffusion.loss_type=', 'loss_type must be a str'),
  ('empty folder name', '{train} trainer.results_folder=', 'results_folder must'),
  ('unknown choice', '{train} diffusion.objective=bogus', "one of 'eps', 'x0'"),
  ('unknown backbone', '{train} diffusion.backbone=transformer', "'unet3d', 'dit'"),
  ('empty list', '{train} unet.dim_mults=[]', 'a non-empty list of positive ints'),
  ('not a list', '{train} unet.dim_mults=abc', 'must be a list of ints'),
  ('unknown section', '{train} modle.dim=8', "unknown section 'modle'"),
  ('unknown key', '{train} unet.dimm=8', 'did you mean unet.dim?'),
  ('malformed override', '{train} trainer.train_lr', 'expected section.key=value'),
  ('YAML syntax', 'train --config {dir}/syntax.yaml', "got '<stream end>' at line 3, column 1"),
  ('YAML list', 'train --config {dir}/list.yaml', 'a config must be a mapping'),
  ('YAML section name', 'train --config {dir}/section.yaml', "unknown section 'modle'"),
  ('YAML scalar section', 'train --config {dir}/scalar.yaml', 'section unet must be a mapping'),
  ('YAML duplicate key', 'train --config {dir}/duplicate.yaml', 'dim'),
  ('YAML empty file', 'train --config {dir}/empty.yaml', 'got an empty document'),
  ('no config file', 'train --config {dir}/nothere.yaml', 'config file not found'),
  # data
  ('empty folder', '{train} trainer.dataset_path={dir}/empty {uncond}', 'no video files'),
  (
    'text named .mp4',
    '{train} trainer.dataset_path={dir}/text {uncond}',
    'none of the 1 video files can be read (a.mp4: Invalid data',
  ),
  ('audio-only mp4', '{train} trainer.dataset_path={dir}/audio {uncond}', 'no video stream'),
  ('truncated GIF', '{train} trainer.dataset_path={dir}/cut {uncond}', 'truncated'),
  ('npy dtype', '{train} trainer.dataset_path={dir}/complex.npy {uncond}', 'found complex64'),
  ('npy rank', '{train} trainer.dataset_path={dir}/rank2.npy {uncond}', 'shape (20, 16)'),
  ('not npy', '{train} trainer.dataset_path={dir}/garbage.npy {uncond}', 'cannot read as'),
  ('no dataset', '{train} trainer.dataset_path={dir}/nothere {uncond}', 'dataset not found'),
  (
    'npy for classes',
    '{train} trainer.dataset_path={dir}/frames.npy',
    'cannot train a class-conditional model',
  ),
  # checkpoints
  ('missing resume step', '{train} trainer.results_folder={ckpt}/.. --resume_step 7', 'step 7'),
  ('folder in use', '{train} trainer.results_folder={ckpt}/..', 'already holds'),
  (
    'resume other model',
    '{train} trainer.results_folder={ckpt}/.. --resume_step -1 unet.dim=16',
    'unet.dim=8 in the checkpoint, 16 in the config',
  ),
  (
    'resume damaged step',
    '{train} trainer.results_folder={damaged}/.. --resume_step 1',
    'is damaged',
  ),
  ('sample other model', '{sample} unet.dim=16', 'does not'),
  ('sample missing step', '{sample} --step 9', 'step 9'),
  ('sample damaged', 'sample --checkpoint-path {damaged} --config {cfg}', 'is damaged'),
  ('eval damaged', 'eval --checkpoint-path {damaged} --config {cfg}', 'is damaged'),
  ('no such folder', 'sample --checkpoint-path {dir}/nothere --config {cfg}', 'is not a folder'),
  ('no checkpoints', 'sample --checkpoint-path {dir}/empty --config {cfg}', 'no checkpoints in'),
  # command line
  ('class too big', '{sample} --class 12', 'out of range'),
  ('class negative', '{sample} --class -1', 'out of range'),
  ('text for classes', '{sample} --text cat', 'takes --class'),
  ('prime and interpolate', '{sample} --prime {dir}/good.gif '
   '--interpolate {dir}/good.gif {dir}/good.gif', 'cannot be combined'),
  ('prime not a video', '{sample} --prime {dir}/empty.yaml',
   "unknown extension '.yaml'"),
  ('prime missing', '{sample} --prime {dir}/no.gif',
   'no.gif: cannot read video: file not found'),
  ('prime truncated', '{sample} --prime {dir}/cut/x.gif',
   'truncated'),
  ('cond frames = frames', '{sample} --prime {dir}/good.gif '
   '--num-cond-frames 4', 'give at most 3'),
  ('cond frames zero', '{sample} --num-cond-frames 0', '>= 1'),
  ('batch zero', '{sample} --batch-size 0', '--batch-size'),
  ('frames zero', '{sample} --num-frames 0', '--num-frames'),
  ('ddim steps zero', '{sample} --sampler ddim --steps 0',
   'steps'),
  ('flow sampler', '{sample} --sampler heun',
   'cannot sample a Gaussian model'),
  ('unknown sampler', '{sample} --sampler bogus',
   "invalid choice: 'bogus'"),
  ('unknown allocator', '{train} --malloc bogus', "invalid choice: 'bogus'"),
  ('prepare into a used folder', '{prepare} {dir}/frames.npy {dir}/cut', 'is not empty'),
  ('prepare no source', '{prepare} {dir}/nothere {fresh}', 'dataset not found'),
  ('prepare no shards', '{prepare} {dir}/frames.npy {fresh} --shards 0', '--shards must be'),
  (
    'packed clips of another size',
    '{train} trainer.dataset_path={dir}/packed {uncond} diffusion.num_frames=2',
    'holds clips of 4 frames of 16x16',
  ),
  ('eval one video', '{eval} --num-videos 1', '>= 2, got 1'),
  ('eval empty real', '{eval} --real-path {dir}/empty',
   'no video files'),
]  # fmt: skip


def write_bad_files(folder):
  """Configs, datasets and clips that cannot be used, and one good clip."""
  (folder / 'syntax.yaml').write_text('unet:\n  dim: [8\n')
  (folder / 'list.yaml').write_text('- 1\n- 2\n')
  (folder / 'section.yaml').write_text('modle:\n  dim: 8\n')
  (folder / 'scalar.yaml').write_text('unet: 5\n')
  (folder / 'duplicate.yaml').write_text('unet:\n  dim: 8\n  dim: 16\n')
  (folder / 'empty.yaml').write_text('')
  (folder / 'empty').mkdir()
  (folder / 'text').mkdir()
  (folder / 'text' / 'a.mp4').write_text('not a video\n')
  (folder / 'audio').mkdir()
  with av.open(str(folder / 'audio' / 'tone.mp4'), 'w') as container:
    stream = container.add_stream('aac', rate=16000)
    stream.layout = 'mono'
    for i in range(4):
      samples = (0.3 * np.sin(np.arange(1024) / 10))[None].astype(np.float32)
      frame = av.AudioFrame.from_ndarray(samples, format='fltp', layout='mono')
      frame.sample_rate, frame.pts = 16000, i * 1024
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  rng = np.random.default_rng(0)
  frames = [Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)) for _ in range(6)]
  frames[0].save(folder / 'good.gif', save_all=True, append_images=frames[1:])
  (folder / 'cut').mkdir()
  whole = (folder / 'good.gif').read_bytes()
  (folder / 'cut' / 'x.gif').write_bytes(whole[: len(whole) // 3])
  np.save(folder / 'complex.npy', np.zeros((4, 20, 16, 16), np.complex64))
  np.save(folder / 'rank2.npy', np.zeros((20, 16), np.uint8))
  np.save(folder / 'frames.npy', np.zeros((4, 20, 16, 16), np.uint8))
  (folder / 'garbage.npy').write_bytes(b'\x93NUMPY garbage')


@pytest.fixture(scope='module')
def bad(tmp_path_factory):
  """{placeholder: path} of the bad files, the tiny config and its trained checkpoints."""
  root = tmp_path_factory.mktemp('bad')
  write_bad_files(root)
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer']['results_folder'] = str(root / 'run')
  cfg = config_from_dict(data)
  _, params, _ = split_diffusion(cfg)  # a checkpoint of step 1, written without training
  state = init_train_state(params, make_optimizer(cfg.trainer), seed=0)
  with Checkpointer(str(root / 'run' / 'checkpoints')) as ckpt:
    ckpt.save(state.replace(step=state.step + 1), data_state={}, config=config_to_dict(cfg))
  (root / 'tiny.yaml').write_text(yaml.safe_dump(data))
  spec = DataSpec.from_config(config_from_dict(data))
  prepare(str(root / 'frames.npy'), str(root / 'packed'), spec, 1)
  ckpt = root / 'run' / 'checkpoints'
  damaged = root / 'damaged' / 'checkpoints'
  shutil.copytree(ckpt, damaged)
  victim = max(
    (p for p in (damaged / '1' / 'params').rglob('*') if p.is_file()), key=os.path.getsize
  )
  with open(victim, 'r+b') as f:
    f.truncate(victim.stat().st_size // 2)
  return {'cfg': root / 'tiny.yaml', 'dir': root, 'ckpt': ckpt, 'damaged': damaged}


def fingerprint(folder):
  """{relative path: sha1} of every file under `folder`."""
  return {
    os.path.relpath(p, folder): hashlib.sha1(p.read_bytes()).hexdigest()
    for p in folder.rglob('*')
    if p.is_file()
  }


COMMANDS = {
  'train': 'train --config {cfg}',
  'sample': 'sample --checkpoint-path {ckpt} --config {cfg}',
  'eval': 'eval --checkpoint-path {ckpt} --config {cfg}',
  'prepare': 'prepare --config {cfg}',
}


def command(template, paths, fresh):
  """argv of a row; a training run without its own results folder writes into `fresh`."""
  commands = {name: text.format(**paths) for name, text in COMMANDS.items()}
  argv = template.format(
    **paths, **commands, uncond=UNCONDITIONAL, small_dit=SMALL_DIT, fresh=fresh
  ).split()
  if argv[0] == 'train' and not any('results_folder=' in a for a in argv):
    argv.append(f'trainer.results_folder={fresh}')
  return argv


def error_lines(text):
  return [line for line in text.splitlines() if 'error:' in line]


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # orbax, damaged
@pytest.mark.parametrize(
  'template, message', [r[1:] for r in BAD_INPUTS], ids=[r[0] for r in BAD_INPUTS]
)
def test_bad_input_is_one_error_line_and_changes_nothing(bad, tmp_path, capsys, template, message):
  before = {name: fingerprint(bad[name]) for name in ('ckpt', 'damaged')}
  with pytest.raises(SystemExit) as stop:
    cli.main(command(template, bad, tmp_path / 'fresh'))
  err = capsys.readouterr().err
  assert stop.value.code == 2, err
  lines = error_lines(err)
  assert len(lines) == 1 and message in lines[0], err
  assert 'Traceback' not in err
  assert {name: fingerprint(bad[name]) for name in ('ckpt', 'damaged')} == before
  fresh = tmp_path / 'fresh' / 'checkpoints'
  assert not fresh.exists() or not os.listdir(fresh)


def test_there_are_at_least_thirty_kinds_of_bad_input():
  kinds = [row[0] for row in BAD_INPUTS]
  assert len(set(kinds)) == len(kinds) >= 30


@pytest.mark.parametrize(
  'template, message',
  [
    ('train --config {dir}/syntax.yaml', 'not valid YAML'),
    ('{sample} --class 12', 'out of range'),
    (
      '{train} trainer.dataset_path={dir}/text {uncond} trainer.data_workers=2',
      'none of the 1 video files can be read',
    ),
    (
      '{train} {uncond} trainer.data_workers=2 trainer.train_num_steps=4 trainer.train_lr=1e30 '
      'trainer.max_grad_norm=null {small_dit}',
      'at step 2; training stopped',
    ),
  ],
  ids=['YAML syntax', 'class too big', 'unreadable videos', 'diverging loss'],
)
def test_the_scripts_print_one_error_line_too(bad, tmp_path, template, message):
  """train.py / sample.py themselves, with grain's worker processes in two of them."""
  script, *argv = command(template, bad, tmp_path / 'fresh')
  proc = subprocess.run(
    [sys.executable, f'{script}.py', *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 2, proc.stderr
  assert [message in line for line in error_lines(proc.stderr)] == [True], proc.stderr
  assert 'Traceback' not in proc.stderr
  assert 'leaked shared_memory' not in proc.stderr  # the batches grain's workers made
  # a skipped file is one `warning:` line, not Python's warning with its source line
  assert all(
    line.startswith('warning: skipping unreadable video')
    for line in proc.stderr.splitlines()
    if 'unreadable' in line
  ), proc.stderr
