"""train-vae and eval-vae: bad input ends in exit status 2 and one `error:` line,
before any training or compiling."""

import numpy as np
import pytest
import yaml

from video_diffusion import cli
from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict, config_to_dict
from video_diffusion.config.vae import MODEL_KIND
from video_diffusion.train.state import init_train_state

GOOD = {
  'unet': dict(channels=1),
  'diffusion': dict(image_size=16, num_frames=5, channels=1),
  'vae': dict(
    base_dim=4, dim_mult=[1, 2], z_dim=4, temperal_downsample=[True], in_channels=1, out_channels=1
  ),
  'trainer': dict(train_batch_size=2, data_workers=0),
}


def save_checkpoint(folder, cfg, *, vae: bool = True) -> None:
  """Step 0 of a train-vae run of `cfg` (its VAE untrained), or with vae=False of a
  diffusion run (a stand-in state), in `folder`."""
  import optax

  from video_diffusion.vae.training import split_vae

  config, params = config_to_dict(cfg), {'w': np.zeros(2, np.float32)}
  if vae:
    config[MODEL_KIND] = 'vae'
    _, params, _ = split_vae(cfg.vae, 0)
  with Checkpointer(str(folder)) as ckpt:
    ckpt.save(init_train_state(params, optax.adam(1e-3), 0), data_state={}, config=config)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """{cfg}: a good config; {vae}: the checkpoints of its (untrained) VAE; {diffusion}: a
  diffusion run's checkpoints; {empty}: an empty folder; {small}: a .npy of 3 videos."""
  root = tmp_path_factory.mktemp('vae-cli')
  data = {k: dict(v) for k, v in GOOD.items()}
  data['trainer']['results_folder'] = str(root / 'results')
  (root / 'good.yaml').write_text(yaml.safe_dump(data))
  cfg = config_from_dict(data)
  save_checkpoint(root / 'vae', cfg)
  save_checkpoint(root / 'diffusion', cfg, vae=False)
  (root / 'empty').mkdir()
  np.save(root / 'small.npy', np.zeros((9, 3, 16, 16), np.uint8))  # (frames, videos, h, w)
  return {
    'cfg': root / 'good.yaml',
    'vae': root / 'vae',
    'diffusion': root / 'diffusion',
    'empty': root / 'empty',
    'small': root / 'small.npy',
  }


BAD_INPUTS = [
  ('frames', 'train-vae --config {cfg} diffusion.num_frames=4', 'encodes 1 + 4k frames'),
  (
    'channels',
    'train-vae --config {cfg} vae.in_channels=3',
    'vae.in_channels (3) must equal diffusion.channels (1)',
  ),
  (
    'frame size',
    'train-vae --config {cfg} diffusion.image_size=24 vae.dim_mult=[1,1,1,1,1] '
    'vae.temperal_downsample=[false,false,false,false]',
    'diffusion.image_size (24) must be divisible by 16',
  ),
  (
    'flags',
    'train-vae --config {cfg} vae.temperal_downsample=[false,true,true]',
    'decodes the 5 frames to 9',
  ),
  ('dropout', 'train-vae --config {cfg} vae.dropout=0.1', 'vae.dropout (0.1) is not applied'),
  ('bad key', 'train-vae --config {cfg} vae.base_dim=0', 'vae.base_dim must be > 0'),
  ('wan 2.2', 'train-vae --config {cfg} vae.patch_size=2', 'only Wan 2.1'),
  ('no config', 'train-vae --config {empty}/none.yaml', 'config file not found'),
  ('one video', 'eval-vae --checkpoint-path {vae} --num-videos 1', '--num-videos must be >= 2'),
  ('batch', 'eval-vae --checkpoint-path {vae} --batch-size 0', '--batch-size must be >= 1'),
  ('no folder', 'eval-vae --checkpoint-path {empty}/none', 'is not a folder'),
  ('empty folder', 'eval-vae --checkpoint-path {empty}', 'nor a train-vae checkpoint folder'),
  ('diffusion run', 'eval-vae --checkpoint-path {diffusion}', 'checkpoints of a diffusion model'),
  ('no step', 'eval-vae --checkpoint-path {vae} --step 7', 'no checkpoint for step 7'),
  (
    'few clips',
    'eval-vae --checkpoint-path {vae} --num-videos 4 --real-path {small}',
    'lower --num-videos to 3 or less',
  ),
]


@pytest.mark.parametrize(
  'template, message', [r[1:] for r in BAD_INPUTS], ids=[r[0] for r in BAD_INPUTS]
)
def test_bad_input_is_one_error_line(files, capsys, template, message):
  with pytest.raises(SystemExit) as stop:
    cli.main(template.format(**files).split())
  err = capsys.readouterr().err
  assert stop.value.code == 2, err
  lines = [line for line in err.splitlines() if 'error:' in line]
  assert len(lines) == 1 and message in lines[0], err
  assert 'Traceback' not in err
