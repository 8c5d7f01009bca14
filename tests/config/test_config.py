"""The YAML config system: every shipped config loads, and bad configs fail early and clearly."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from video_diffusion.config import (
  Config,
  ConfigError,
  TrainerConfig,
  config_from_dict,
  config_keys,
  config_to_dict,
  dump_config,
  load_config,
  markdown_table,
  resolved_checkpoint_dir,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'configs'
SEED = ROOT.parent / 'shared' / 'seed' / 'configs'
SEED_NAMES = ['config_v1_0.yaml', 'config_v2_2.yaml', 'config_v2_3.yaml']


def write(tmp_path, data, name='x.yaml'):
  path = tmp_path / name
  path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
  return path


def small(**sections):
  """A valid config dict; keyword sections update it."""
  data = {
    'unet': {'dim': 8, 'dim_mults': [1, 2], 'channels': 1},
    'diffusion': {'image_size': 16, 'num_frames': 4, 'channels': 1},
    'trainer': {'train_batch_size': 2, 'num_frames': 4},
  }
  for section, values in sections.items():
    data.setdefault(section, {}).update(values)
  return data


def raises(tmp_path, data, *fragments, overrides=()):
  path = write(tmp_path, data)
  with pytest.raises(ConfigError) as info:
    load_config(path, overrides)
  message = str(info.value)
  for fragment in (str(path), *fragments):
    assert fragment in message, message
  return message


@pytest.mark.parametrize('path', sorted(CONFIGS.glob('*.yaml')), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
  cfg = load_config(path)
  assert isinstance(cfg, Config)
  assert cfg.trainer.num_frames == cfg.diffusion.num_frames
  assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


@pytest.mark.parametrize('name', SEED_NAMES)
def test_seed_configs_copied_verbatim_and_load_their_values(name):
  ours = CONFIGS / name
  if (SEED / name).exists():
    assert ours.read_bytes() == (SEED / name).read_bytes()
  raw = yaml.safe_load(ours.read_text())
  resolved = config_to_dict(load_config(ours))
  for section, values in raw.items():
    for key, value in values.items():
      got = resolved[section][key]
      assert got == value, f'{section}.{key}'
      assert type(got) is type(value) or (key == 'max_grad_norm' and type(got) is float), key


def test_seed_specific_values():
  v23 = load_config(CONFIGS / 'config_v2_3.yaml')
  assert (v23.unet.dim, v23.trainer.num_model_shards, v23.trainer.profile_flush_step) == (
    128,
    2,
    100,
  )
  assert v23.trainer.max_grad_norm == 10.0 and isinstance(v23.trainer.max_grad_norm, float)
  v10 = load_config(CONFIGS / 'config_v1_0.yaml')
  assert v10.trainer.max_grad_norm is None and v10.trainer.train_lr == 1e-5
  assert v10.unet.dim_mults == (1, 2, 4, 8)
  assert v10.trainer.image_size == 64 and v10.trainer.channels == 1  # taken from diffusion


def test_moving_mnist_64_is_the_v2_2_model():
  assert load_config(CONFIGS / 'moving_mnist_64.yaml') == load_config(CONFIGS / 'config_v2_2.yaml')


def test_demo_config_values():
  """The demo is the small Unet3D with flow matching (bench_quality.py's unet_flow)."""
  cfg = load_config(CONFIGS / 'config.yaml')
  u, d, t = cfg.unet, cfg.diffusion, cfg.trainer
  assert (u.dim, u.dim_mults, u.attn_heads, u.attn_dim_head) == (16, (1, 2, 4), 4, 16)
  assert u.channels == 1 and not u.use_bert_text_cond and u.cond_dim is None
  assert not u.use_sparse_linear_attn
  assert (d.backbone, d.objective, d.time_sampling, d.loss_weighting) == (
    'unet3d',
    'flow',
    'logit_normal',
    'none',
  )
  assert (d.image_size, d.num_frames, d.channels, d.timesteps, d.loss_type) == (32, 8, 1, 250, 'l2')
  assert t.dataset_path is None and t.train_lr == 5e-4 and t.train_num_steps == 1500
  assert (t.train_batch_size, t.gradient_accumulate_every, t.num_sample_rows) == (8, 1, 3)
  assert (t.checkpoint_every_steps, t.max_to_keep, t.save_and_sample_every) == (100, 3, 1500)
  assert t.results_folder == './results/demo' and t.eval_sampler == 'euler'


def _run_independent(cfg):
  """The config with the keys that only say where a run writes and how long it is."""
  t = dataclasses.replace(
    cfg.trainer, results_folder='', tensorboard_dir='', train_num_steps=0, save_and_sample_every=0
  )
  return dataclasses.replace(cfg, trainer=t)


def test_demo_is_the_unet3d_demo_with_flow_matching():
  """The demo trains what bench_quality.py measured as unet_flow: the Unet3D demo
  config with only its objective changed, and the DiT demo the same data and trainer."""
  demo = load_config(CONFIGS / 'config.yaml')
  flow = ['diffusion.objective=flow', 'diffusion.loss_weighting=none']
  unet_flow = load_config(
    CONFIGS / 'demo_unet3d.yaml', flow + ['diffusion.time_sampling=logit_normal']
  )
  assert _run_independent(demo) == _run_independent(unet_flow)
  dit = load_config(CONFIGS / 'demo_dit.yaml')
  assert dit.diffusion.backbone == 'dit' and dit.diffusion.objective == 'flow'
  assert (dit.dit.patch_size, dit.dit.width, dit.dit.depth, dit.dit.heads) == (4, 128, 8, 4)
  assert _run_independent(dit).trainer == _run_independent(demo).trainer
  assert dit.trainer.results_folder == './results/demo-dit'


def test_defaults_follow_the_reference_trainer():
  t = TrainerConfig()
  assert (t.train_batch_size, t.train_lr, t.train_num_steps, t.gradient_accumulate_every) == (
    32,
    1e-4,
    100000,
    2,
  )
  assert (t.step_start_ema, t.update_ema_every, t.ema_decay, t.save_and_sample_every) == (
    2000,
    10,
    0.995,
    1000,
  )
  assert (t.results_folder, t.num_sample_rows, t.max_grad_norm) == ('./results', 4, None)


def test_every_key_has_help():
  rows = config_keys()
  assert len(rows) == len({(s, k) for s, k, *_ in rows})
  assert all(meaning.strip() for *_, meaning in rows)
  table = markdown_table()
  assert '`trainer.train_lr`' in table and '`unet.dim_mults`' in table
  assert all(line.count('|') == 5 for line in table.splitlines())


def test_overrides_are_typed(tmp_path):
  cfg = load_config(
    write(tmp_path, small()),
    [
      'trainer.train_lr=3e-4',
      'unet.dim_mults=[1,2,4]',
      'trainer.max_grad_norm=null',
      'diffusion.loss_type=l1',
      'trainer.add_loss_plot=true',
      'trainer.sample_text=a cat',
      'unet.use_bert_text_cond=true',
      'trainer.max_to_keep=5',
      'trainer.ema_decay=1',
    ],
  )
  t = cfg.trainer
  assert t.train_lr == 3e-4 and isinstance(t.train_lr, float)
  assert cfg.unet.dim_mults == (1, 2, 4)
  assert t.max_grad_norm is None and t.add_loss_plot is True and t.sample_text == 'a cat'
  assert t.max_to_keep == 5 and t.ema_decay == 1.0 and isinstance(t.ema_decay, float)
  cfg = load_config(write(tmp_path, small()), ['trainer.max_grad_norm=1.5'])
  assert cfg.trainer.max_grad_norm == 1.5


def test_override_can_add_a_section_and_file_may_omit_sections(tmp_path):
  cfg = load_config(write(tmp_path, {'diffusion': {'channels': 3}}), ['trainer.seed=7'])
  assert cfg.trainer.seed == 7 and cfg.unet == Config().unet


def test_exponent_floats_in_files(tmp_path):
  cfg = load_config(write(tmp_path, 'trainer:\n  train_lr: 1e-5\n  max_grad_norm: 5\n'))
  assert cfg.trainer.train_lr == 1e-5 and cfg.trainer.max_grad_norm == 5.0


@pytest.mark.parametrize(
  'section, key, typo, hint',
  [
    ('trainer', 'train_lr', 'train_lrr', 'did you mean trainer.train_lr?'),
    ('unet', 'dim_mults', 'dim_mult', 'did you mean unet.dim_mults?'),
    ('diffusion', 'timesteps', 'timestep', 'did you mean diffusion.timesteps?'),
    ('unet', 'image_size', 'image_size', 'did you mean diffusion.image_size?'),
  ],
)
def test_unknown_key_names_it_and_suggests(tmp_path, section, key, typo, hint):
  data = small(**{section: {typo: 1}})
  message = raises(tmp_path, data, f'unknown key {section}.{typo}', hint)
  assert message.startswith(str(tmp_path / 'x.yaml') + ': ')


def test_unknown_key_message_form(tmp_path):
  path = write(tmp_path, small(trainer={'train_lrr': 1}))
  with pytest.raises(
    ConfigError,
    match=r'x\.yaml: unknown key trainer\.train_lrr; '
    r'did you mean trainer\.train_lr\?$',
  ):
    load_config(path)


def test_unknown_section_suggests(tmp_path):
  raises(tmp_path, {'trainr': {}}, "unknown section 'trainr'", 'did you mean trainer?')


@pytest.mark.parametrize(
  'section, key, value, fragment',
  [
    (
      'trainer',
      'train_batch_size',
      'four',
      "trainer.train_batch_size must be an int, got 'four' (str)",
    ),
    (
      'trainer',
      'train_batch_size',
      2.5,
      'trainer.train_batch_size must be an int, got 2.5 (float)',
    ),
    ('trainer', 'train_batch_size', True, 'trainer.train_batch_size must be an int, got True'),
    ('trainer', 'train_batch_size', None, 'trainer.train_batch_size must be an int, got null'),
    ('trainer', 'train_lr', 'fast', 'trainer.train_lr must be a float'),
    ('trainer', 'train_lr', False, 'trainer.train_lr must be a float'),
    ('trainer', 'max_grad_norm', 'big', 'trainer.max_grad_norm must be a float or null'),
    ('trainer', 'add_loss_plot', 1, 'trainer.add_loss_plot must be a bool, got 1 (int)'),
    ('trainer', 'results_folder', 5, 'trainer.results_folder must be a str, got 5 (int)'),
    ('unet', 'dim_mults', 4, 'unet.dim_mults must be a list of ints, got 4 (int)'),
    ('unet', 'dim_mults', [1, 'a'], 'unet.dim_mults must be a list of ints'),
    ('unet', 'use_bert_text_cond', 'no way', 'unet.use_bert_text_cond must be a bool'),
    ('diffusion', 'loss_type', None, 'diffusion.loss_type must be a str, got null'),
    ('trainer', 'train_lr', float('inf'), 'trainer.train_lr must be a finite number'),
  ],
)
def test_wrong_types(tmp_path, section, key, value, fragment):
  raises(tmp_path, small(**{section: {key: value}}), fragment)


@pytest.mark.parametrize(
  'section, key, value, fragment',
  [
    ('trainer', 'train_batch_size', 0, 'trainer.train_batch_size must be > 0, got 0'),
    ('trainer', 'train_num_steps', -5, 'trainer.train_num_steps must be > 0'),
    ('trainer', 'train_lr', 0, 'trainer.train_lr must be > 0'),
    ('trainer', 'ema_decay', 1.5, 'trainer.ema_decay must be in [0, 1], got 1.5'),
    ('trainer', 'ema_decay', -0.1, 'trainer.ema_decay must be in [0, 1]'),
    ('trainer', 'prob_focus_present', 2, 'trainer.prob_focus_present must be in [0, 1]'),
    ('trainer', 'warmup_steps', -1, 'trainer.warmup_steps must be >= 0'),
    ('trainer', 'max_grad_norm', 0, 'trainer.max_grad_norm must be > 0'),
    ('trainer', 'max_to_keep', 0, 'trainer.max_to_keep must be > 0'),
    ('trainer', 'update_ema_every', 0, 'trainer.update_ema_every must be > 0'),
    ('diffusion', 'loss_type', 'l3', "diffusion.loss_type must be one of 'l1', 'l2', got 'l3'"),
    ('diffusion', 'beta_schedule', 'quad', 'diffusion.beta_schedule must be one of'),
    ('diffusion', 'timesteps', 0, 'diffusion.timesteps must be > 0'),
    ('diffusion', 'objective', 'noise', "diffusion.objective must be one of 'eps', 'x0', 'v'"),
    ('diffusion', 'loss_weighting', 'snr', "must be one of 'none', 'min_snr', got 'snr'"),
    ('diffusion', 'min_snr_gamma', 0, 'diffusion.min_snr_gamma must be > 0'),
    ('trainer', 'cond_drop_prob', 1.5, 'trainer.cond_drop_prob must be in [0, 1]'),
    ('unet', 'num_classes', 0, 'unet.num_classes must be > 0'),
    ('diffusion', 'dynamic_thres_percentile', 0, 'diffusion.dynamic_thres_percentile must be in'),
    ('unet', 'init_kernel_size', 4, 'unet.init_kernel_size must be a positive odd int, got 4'),
    ('unet', 'dim_mults', [], 'unet.dim_mults must be a non-empty list of positive ints'),
    ('unet', 'dim_mults', [1, 0], 'unet.dim_mults must be a non-empty list of positive ints'),
    ('unet', 'dim', 0, 'unet.dim must be > 0'),
  ],
)
def test_ranges(tmp_path, section, key, value, fragment):
  raises(tmp_path, small(**{section: {key: value}}), fragment)


def test_frames_mismatch_names_both_keys(tmp_path):
  message = raises(
    tmp_path,
    small(trainer={'num_frames': 10}),
    'trainer.num_frames',
    'diffusion.num_frames',
    '10',
    '4',
  )
  assert 'change trainer.num_frames to 4' in message


def test_trainer_num_frames_null_takes_diffusion(tmp_path):
  cfg = load_config(write(tmp_path, small(trainer={'num_frames': None})))
  assert cfg.trainer.num_frames == 4


@pytest.mark.parametrize(
  'data, fragments',
  [
    (
      small(unet={'channels': 3}),
      ('unet.channels', 'diffusion.channels', '3', '1', 'set unet.channels to 1'),
    ),
    (small(trainer={'image_size': 32}), ('trainer.image_size', 'diffusion.image_size', '32', '16')),
    (small(trainer={'channels': 3}), ('trainer.channels', 'diffusion.channels')),
    (small(unet={'out_dim': 2}), ('unet.out_dim', 'diffusion.channels')),
    (small(diffusion={'image_size': 15}), ('diffusion.image_size', 'unet.dim_mults')),
    (small(trainer={'lr_decay_start_step': 5}), ('trainer.lr_decay_steps',)),
    (
      small(unet={'num_classes': 10, 'use_bert_text_cond': True}),
      ('unet.num_classes and unet.use_bert_text_cond', 'one kind of condition'),
    ),
    (small(trainer={'sample_text': 'a 3'}), ('trainer.sample_text', 'use_bert_text_cond')),
    (small(trainer={'use_path_as_cond': True}), ('trainer.use_path_as_cond',)),
    (
      small(diffusion={'frame_conditioning': True, 'num_frames': 1}, trainer={'num_frames': 1}),
      ('frame_conditioning', 'num_frames >= 2'),
    ),
    (
      small(diffusion={'frame_conditioning': True}, trainer={'max_cond_frames': 4}),
      ('trainer.max_cond_frames (4)', 'less than diffusion.num_frames (4)'),
    ),
    (
      small(
        diffusion={'frame_conditioning': True},
        trainer={'cond_frames_prob_none': 0.6, 'cond_frames_prob_interpolate': 0.6},
      ),
      ('cond_frames_prob_none', 'more than 1'),
    ),
  ],
)
def test_cross_section_agreement(tmp_path, data, fragments):
  raises(tmp_path, data, *fragments)


def test_override_errors_name_the_override(tmp_path):
  message = raises(
    tmp_path,
    small(),
    'unknown key trainer.train_lrr',
    'did you mean trainer.train_lr?',
    "override 'trainer.train_lrr=1'",
    overrides=['trainer.train_lrr=1'],
  )
  assert 'x.yaml' in message
  raises(
    tmp_path,
    small(),
    "trainer.train_batch_size must be an int, got 'four' (str)",
    overrides=['trainer.train_batch_size=four'],
  )
  raises(tmp_path, small(), 'unknown section', 'did you mean unet?', overrides=['unt.dim=3'])


@pytest.mark.parametrize(
  'override', ['trainer.train_lr', 'train_lr=3e-4', '=3', 'a.b.c=1', '.dim=3']
)
def test_malformed_override(tmp_path, override):
  raises(tmp_path, small(), 'malformed override', 'section.key=value', overrides=[override])


def test_missing_file(tmp_path):
  path = tmp_path / 'nope.yaml'
  with pytest.raises(ConfigError, match='nope.yaml'):
    load_config(path)


@pytest.mark.parametrize(
  'text, fragment',
  [
    ('- 1\n- 2\n', 'must be a mapping'),
    ('just a string\n', 'must be a mapping'),
    ('', 'empty document'),
    ('unet: [1, 2]\n', 'section unet must be a mapping'),
    ('unet: {dim: [\n', 'not valid YAML'),
    ('trainer:\n  train_lr: 1\n  train_lr: 2\n', 'duplicate key'),
  ],
)
def test_bad_yaml(tmp_path, text, fragment):
  raises(tmp_path, text, fragment)


def test_empty_section_is_defaults(tmp_path):
  cfg = load_config(write(tmp_path, 'unet:\ndiffusion:\ntrainer:\n'))
  assert cfg.unet == Config().unet and cfg.trainer.num_frames == 16


def test_config_error_is_value_error():
  assert issubclass(ConfigError, ValueError)


def test_round_trip_and_checkpoint_dir(tmp_path):
  cfg = load_config(CONFIGS / 'config.yaml')
  data = config_to_dict(cfg)
  assert data['unet']['dim_mults'] == [1, 2, 4] and data['diffusion']['objective'] == 'flow'
  dump_config(cfg, tmp_path / 'resolved.yaml')
  assert load_config(tmp_path / 'resolved.yaml') == cfg
  assert resolved_checkpoint_dir(cfg) == os.path.abspath('results/demo/checkpoints')
  custom = dataclasses.replace(
    cfg, trainer=dataclasses.replace(cfg.trainer, checkpoint_dir_path=str(tmp_path / 'ck'))
  )
  assert resolved_checkpoint_dir(custom) == str(tmp_path / 'ck')


def test_config_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    Config().trainer.train_lr = 1.0


def test_import_does_not_load_jax():
  code = 'import sys, video_diffusion.config; assert "jax" not in sys.modules'
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_default_config_is_the_demo_from_any_working_directory(tmp_path, monkeypatch):
  from video_diffusion.cli.parsers import sample_parser, train_parser

  demo = load_config(CONFIGS / 'config.yaml')
  monkeypatch.chdir(ROOT)
  assert train_parser('train.py').parse_args([]).config == 'configs/config.yaml'
  monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged copy of the demo config
  for parser in (train_parser('train.py'), sample_parser('sample.py')):
    path = pathlib.Path(parser.parse_args([]).config)
    assert path.is_file() and path.is_absolute() and load_config(path) == demo


def test_empty_dataset_path_means_the_synthetic_digits():
  from video_diffusion.data.sources import SyntheticDigitsSource, make_source
  from video_diffusion.data.spec import DataSpec

  cfg = load_config(CONFIGS / 'config.yaml', ['trainer.dataset_path=""'])
  assert cfg.trainer.dataset_path == ''
  assert isinstance(make_source(DataSpec.from_config(cfg)), SyntheticDigitsSource)
