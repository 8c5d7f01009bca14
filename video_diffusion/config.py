"""YAML run configs for train.py and sample.py: schema, loading, validation.

A config file has three sections, `unet` (Unet3D arguments), `diffusion`
(GaussianDiffusion arguments) and `trainer` (the training loop). Every key has
a default; a file names only what it changes. `load_config` checks the whole
config (names, types, ranges, agreement between sections) before any work
starts and raises `ConfigError` naming the file and the key. This module does
not import JAX.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import yaml

__all__ = ['Config', 'ConfigError', 'DiffusionConfig', 'TrainerConfig', 'UnetConfig',
           'config_from_dict', 'config_keys', 'config_to_dict', 'dump_config', 'load_config',
           'markdown_table', 'resolved_checkpoint_dir']


class ConfigError(ValueError):
  """A config file or override that cannot be used; the message names the file and key."""


# Checks: value -> None when fine, else the end of the message ("must be > 0, got 0").
def _rule(ok: Callable[[Any], bool], text: str) -> Callable[[Any], str | None]:
  return lambda v: None if ok(v) else (
      f'must be {text}, got {list(v) if isinstance(v, tuple) else v!r}')


_positive = _rule(lambda v: v > 0, '> 0')
_nonneg = _rule(lambda v: v >= 0, '>= 0')
_unit = _rule(lambda v: 0 <= v <= 1, 'in [0, 1]')
_open_unit = _rule(lambda v: 0 < v <= 1, 'in (0, 1]')
_odd = _rule(lambda v: v > 0 and v % 2 == 1, 'a positive odd int')
_mults = _rule(lambda v: bool(v) and all(m > 0 for m in v), 'a non-empty list of positive ints')


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
  return _rule(lambda v: v in allowed, f"one of {', '.join(map(repr, allowed))}")


def _key(default, help: str, check: Callable[[Any], str | None] | None = None):
  """A config key: its default, a one-line meaning and an optional range check."""
  return field(default=default, metadata={'help': help, 'check': check})


@dataclass(frozen=True)
class UnetConfig:
  """Arguments of Unet3D (the denoiser)."""
  dim: int = _key(64, 'Base channel width of the U-Net.', _positive)
  dim_mults: tuple[int, ...] = _key((1, 2, 4, 8), 'Width multiplier of each resolution level; '
                                    'the frame size is halved len-1 times.', _mults)
  channels: int = _key(3, 'Channels of the video (1 grey, 3 RGB); equals diffusion.channels.',
                       _positive)
  out_dim: int | None = _key(None, 'Output channels; null = channels.', _positive)
  cond_dim: int | None = _key(None, 'Width of the conditioning vector; null = unconditional.',
                              _positive)
  attn_heads: int = _key(8, 'Attention heads.', _positive)
  attn_dim_head: int = _key(32, 'Width of each attention head.', _positive)
  use_bert_text_cond: bool = _key(False, 'Condition on 768-wide BERT text embeddings.')
  init_dim: int | None = _key(None, 'Width of the first convolution; null = dim.', _positive)
  init_kernel_size: int = _key(7, 'Kernel size of the first convolution (odd).', _odd)
  use_sparse_linear_attn: bool = _key(True, 'Add spatial linear attention at each level.')
  rngs_seed: int = _key(0, 'Seed of the nnx.Rngs that initialise the weights.', _nonneg)


@dataclass(frozen=True)
class DiffusionConfig:
  """Arguments of GaussianDiffusion."""
  image_size: int = _key(64, 'Height and width of the frames in pixels.', _positive)
  num_frames: int = _key(16, 'Frames per video.', _positive)
  channels: int = _key(3, 'Channels of the video; equals unet.channels.', _positive)
  timesteps: int = _key(1000, 'Diffusion steps (training and sampling).', _positive)
  loss_type: str = _key('l1', "Denoising loss: 'l1' or 'l2'.", _one_of('l1', 'l2'))
  beta_schedule: str = _key('cosine', "Noise schedule: 'cosine' or 'linear'.",
                            _one_of('cosine', 'linear'))
  use_dynamic_thres: bool = _key(False, 'Dynamic thresholding of x0 while sampling.')
  dynamic_thres_percentile: float = _key(0.9, 'Percentile of |x0| used by dynamic '
                                         'thresholding, in (0, 1].', _open_unit)


@dataclass(frozen=True)
class TrainerConfig:
  """The training loop: data, optimiser, EMA, logging and checkpoints."""
  folder: str | None = _key(None, "The reference Trainer's folder argument; kept for the seed "
                            'configs, data comes from dataset_path.')
  dataset_path: str | None = _key(None, 'Training videos: a Moving MNIST .npy (frames, '
                                  'sequences, h, w) or a folder of .gif/.mp4/.webm/.avi files '
                                  '(searched recursively); null = built-in synthetic moving digits.')
  train_batch_size: int = _key(32, 'Videos per optimiser micro-batch.', _positive)
  train_lr: float = _key(1e-4, 'Adam learning rate.', _positive)
  train_num_steps: int = _key(100000, 'Optimiser steps to train for.', _positive)
  warmup_steps: int = _key(0, 'Linear learning-rate warm-up steps from 0; 0 = none.', _nonneg)
  lr_decay_start_step: int | None = _key(None, 'Step at which learning-rate decay starts; '
                                         'null = constant rate.', _nonneg)
  lr_decay_steps: int | None = _key(None, 'Steps over which the rate decays to '
                                    'train_lr * lr_decay_coeff.', _positive)
  lr_decay_coeff: float = _key(0.1, 'Final learning rate as a fraction of train_lr.', _unit)
  num_frames: int | None = _key(None, 'Frames per training video; null = diffusion.num_frames.',
                                _positive)
  image_size: int | None = _key(None, 'Frame size of the training videos; '
                                'null = diffusion.image_size.', _positive)
  channels: int | None = _key(None, 'Channels of the training videos; null = diffusion.channels.',
                              _positive)
  gradient_accumulate_every: int = _key(2, 'Micro-batches whose gradients make one step.',
                                        _positive)
  prob_focus_present: float = _key(0.0, 'Probability of training a video with temporal '
                                   'attention masked (focus on the present frame).', _unit)
  step_start_ema: int = _key(2000, 'Before this step the EMA weights copy the model.', _nonneg)
  update_ema_every: int = _key(10, 'Steps between EMA updates.', _positive)
  ema_decay: float = _key(0.995, 'EMA decay per update, in [0, 1].', _unit)
  max_grad_norm: float | None = _key(None, 'Clip gradients to this global norm; '
                                     'null = no clipping.', _positive)
  save_and_sample_every: int = _key(1000, 'Steps between sample GIFs written to results_folder.',
                                    _positive)
  results_folder: str = _key('./results', 'Folder of samples, loss plots and (by default) '
                             'checkpoints.')
  num_sample_rows: int = _key(4, 'Samples are a num_sample_rows^2 grid.', _positive)
  use_path_as_cond: bool = _key(False, 'Condition on the text of each video file path.')
  sample_text: str | None = _key(None, 'Text condition of the samples; null = none.')
  cond_scale: float = _key(1.0, 'Classifier-free guidance scale when sampling; 1 = none.')
  checkpoint_every_steps: int = _key(1000, 'Steps between checkpoints.', _positive)
  checkpoint_dir_path: str = _key('', 'Checkpoint folder; "" = <results_folder>/checkpoints.')
  max_to_keep: int | None = _key(3, 'Checkpoints kept on disk; null = all.', _positive)
  resume_training_step: int = _key(0, 'Checkpoint step to resume from; 0 = start afresh; '
                                   '-1 = the newest (afresh if none).',
                                   _rule(lambda v: v >= -1, '>= -1'))
  add_loss_plot: bool = _key(False, 'Also copy the loss curve next to each sample grid '
                             '(samples/loss-<step>.png); loss_curve.png is always written.')
  tensorboard_dir: str | None = _key(None, 'TensorBoard log folder; null = no TensorBoard logs.')
  profile_flush_step: int | None = _key(None, 'Write a JAX profiler trace (results_folder/'
                                        'profile) from step 2 up to this step; null = none.',
                                        _positive)
  num_model_shards: int = _key(1, 'Devices the model is split over; 1 = replicated.', _positive)
  data_workers: int = _key(2, 'Grain worker processes preparing batches; 0 = in the main process.',
                           _nonneg)
  seed: int = _key(0, 'Seed of data order, noise and timesteps.', _nonneg)


@dataclass(frozen=True)
class Config:
  """A whole run: model, diffusion and trainer."""
  unet: UnetConfig = field(default_factory=UnetConfig)
  diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
  trainer: TrainerConfig = field(default_factory=TrainerConfig)


SECTIONS: dict[str, type] = {'unet': UnetConfig, 'diffusion': DiffusionConfig,
                             'trainer': TrainerConfig}



class _Loader(yaml.SafeLoader):
  """SafeLoader that reads 1e-4 as a float (YAML 1.2) and refuses duplicate keys."""

  def construct_mapping(self, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
      key = self.construct_object(key_node, deep=deep)
      if key in seen:
        raise yaml.constructor.ConstructorError(
            None, None, f'duplicate key {key!r}', key_node.start_mark)
      seen.add(key)
    return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$'),
    list('-+0123456789.'))


class _Dumper(yaml.SafeDumper):
  """Block-style sections with one-line lists."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    'tag:yaml.org,2002:seq', v, flow_style=True))


def _yaml(text: str, where: str) -> Any:
  try:
    return yaml.load(text, Loader=_Loader)
  except yaml.YAMLError as e:
    raise ConfigError(f'{where}: not valid YAML: {e}') from None



def _type_of(cls: type, name: str) -> tuple[Any, bool]:
  """(base type, nullable) of a dataclass field."""
  hint = typing.get_type_hints(cls)[name]
  args = typing.get_args(hint)
  return (args[0], True) if type(None) in args else (hint, False)


def _got(v: Any) -> str:
  return 'got null' if v is None else f'got {v!r} ({type(v).__name__})'


def _coerce(v: Any, base: Any, nullable: bool) -> tuple[Any, str | None]:
  """(value with ints widened to float and lists to tuples, None) or (v, error)."""
  if v is None and nullable:
    return v, None
  if base is float and isinstance(v, (int, float)) and not isinstance(v, bool):
    return float(v), None if math.isfinite(v) else f'must be a finite number, got {v!r}'
  if base == tuple[int, ...] and isinstance(v, (list, tuple)) and all(
      isinstance(m, int) and not isinstance(m, bool) for m in v):
    return tuple(v), None
  if base in (bool, int, str) and type(v) is base:
    return v, None
  word = {int: 'an int', float: 'a float', bool: 'a bool', str: 'a str'}.get(
      base, 'a list of ints')
  return v, f"must be {word}{' or null' if nullable else ''}, {_got(v)}"


def _suggest(section: str | None, key: str | None) -> str:
  """'; did you mean trainer.train_lr?' or a list of the valid names."""
  if key is None:
    close = difflib.get_close_matches(str(section), SECTIONS, n=1)
    hint = f'did you mean {close[0]}?' if close else f"sections are {', '.join(SECTIONS)}"
    return f'; {hint}'
  names = [f.name for f in dataclasses.fields(SECTIONS[section])]
  close = difflib.get_close_matches(str(key), names, n=1)
  if close:
    return f'; did you mean {section}.{close[0]}?'
  for other, cls in SECTIONS.items():
    if key in {f.name for f in dataclasses.fields(cls)}:
      return f'; did you mean {other}.{key}? (it belongs in section {other})'
  return f"; valid keys of {section}: {', '.join(names)}"


def _build_section(section: str, data: dict, where: Callable[[str], str]):
  cls = SECTIONS[section]
  values = {}
  for f in dataclasses.fields(cls):
    if f.name not in data:
      continue
    full = f'{section}.{f.name}'
    base, nullable = _type_of(cls, f.name)
    value, err = _coerce(data[f.name], base, nullable)
    if err:
      raise ConfigError(f'{where(f.name)}: {full} {err}')
    check = f.metadata['check']
    if value is not None and check is not None and (msg := check(value)):
      raise ConfigError(f'{where(f.name)}: {full} {msg}')
    values[f.name] = value
  return cls(**values)


def _disagree(where: str, a: str, av: Any, b: str, bv: Any, fix: str) -> ConfigError:
  return ConfigError(f'{where}: {a} is {av!r} but {b} is {bv!r}; they must agree: {fix}')


def _check_together(cfg: Config, where: str) -> Config:
  """Cross-section agreement; fills trainer's null num_frames/image_size/channels."""
  u, d, t = cfg.unet, cfg.diffusion, cfg.trainer
  if u.channels != d.channels:
    raise _disagree(where, 'unet.channels', u.channels, 'diffusion.channels', d.channels,
                    f'set unet.channels to {d.channels} (or change both)')
  if u.out_dim is not None and u.out_dim != d.channels:
    raise _disagree(where, 'unet.out_dim', u.out_dim, 'diffusion.channels', d.channels,
                    'the model predicts the noise of every channel; set unet.out_dim to '
                    f'null or {d.channels}')
  factor = 2 ** (len(u.dim_mults) - 1)
  if d.image_size % factor:
    raise ConfigError(
        f'{where}: diffusion.image_size ({d.image_size}) must be divisible by {factor}, '
        f'since unet.dim_mults ({list(u.dim_mults)}) halves the frame size '
        f'{len(u.dim_mults) - 1} times; change diffusion.image_size or unet.dim_mults')
  filled = {}
  for key in ('num_frames', 'image_size', 'channels'):
    tv, dv = getattr(t, key), getattr(d, key)
    if tv is not None and tv != dv:
      raise _disagree(where, f'trainer.{key}', tv, f'diffusion.{key}', dv,
                      f'change trainer.{key} to {dv} (or null), or diffusion.{key} to {tv} '
                      'if the model should use it')
    filled[key] = dv
  if t.lr_decay_start_step is not None and t.lr_decay_steps is None:
    raise ConfigError(f'{where}: trainer.lr_decay_start_step is {t.lr_decay_start_step} but '
                      'trainer.lr_decay_steps is null; set trainer.lr_decay_steps too')
  return dataclasses.replace(cfg, trainer=dataclasses.replace(t, **filled))



def config_from_dict(data: Any, source: str = '<dict>',
                     key_sources: dict[tuple[str, str], str] | None = None) -> Config:
  """Validate a nested {section: {key: value}} mapping into a Config.

  `source` names the origin in error messages; `key_sources` may name a
  different origin for single keys (the override that set them).
  """
  if not isinstance(data, dict):
    got = 'got an empty document' if data is None else _got(data)
    raise ConfigError(f"{source}: a config must be a mapping with sections "
                      f"{', '.join(SECTIONS)}, {got}")
  key_sources = key_sources or {}
  sections = {}
  for section, body in data.items():
    if section not in SECTIONS:
      raise ConfigError(f'{source}: unknown section {section!r}{_suggest(section, None)}')
    body = {} if body is None else body
    if not isinstance(body, dict):
      raise ConfigError(f'{source}: section {section} must be a mapping of keys, '
                        f'{_got(body)}')
    for key in body:
      if key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        where = key_sources.get((section, key), source)
        raise ConfigError(f'{where}: unknown key {section}.{key}{_suggest(section, key)}')
    where = lambda k, s=section: key_sources.get((s, k), source)  # noqa: E731
    sections[section] = _build_section(section, body, where)
  return _check_together(Config(**sections), source)


def _apply_override(data: dict, text: str, source: str) -> tuple[str, str]:
  form = ('expected section.key=value, e.g. trainer.train_lr=3e-4, unet.dim_mults=[1,2] or '
          'trainer.max_grad_norm=null')
  name, eq, raw = str(text).partition('=')
  section, dot, key = name.strip().partition('.')
  if not eq or not dot or not section or not key or '.' in key:
    raise ConfigError(f'{source}: malformed override {text!r}; {form}')
  where = f'{source} (override {text!r})'
  if section not in SECTIONS:
    raise ConfigError(f'{where}: unknown section {section!r}{_suggest(section, None)}')
  body = data.get(section)
  if body is None:
    body = data[section] = {}
  elif not isinstance(body, dict):
    raise ConfigError(f'{source}: section {section} must be a mapping of keys, {_got(body)}')
  body[key] = _yaml(raw.strip(), where)
  return section, key


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
  """Read a YAML config, apply `section.key=value` overrides and validate it all."""
  source = os.fspath(path)
  if isinstance(overrides, str):
    overrides = [overrides]
  try:
    with open(source, encoding='utf-8') as fh:
      text = fh.read()
  except FileNotFoundError:
    raise ConfigError(f'{source}: config file not found') from None
  except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
    raise ConfigError(f'{source}: cannot read config file: {e}') from None
  data = _yaml(text, source)
  if not isinstance(data, dict):
    config_from_dict(data, source)  # raises the not-a-mapping error
  data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
  key_sources = {}
  for item in overrides:
    key_sources[_apply_override(data, item, source)] = f'{source} (override {item!r})'
  return config_from_dict(data, source, key_sources)


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
  """Plain nested dict (lists, not tuples) for YAML/JSON next to checkpoints."""
  out = {}
  for section in SECTIONS:
    values = dataclasses.asdict(getattr(cfg, section))
    out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
  return out


def dump_config(cfg: Config, path: str | os.PathLike | None = None) -> str:
  """The resolved config as YAML text; also written to `path` when given."""
  text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False)
  if path is not None:
    with open(path, 'w', encoding='utf-8') as fh:
      fh.write(text)
  return text


def resolved_checkpoint_dir(cfg: Config) -> str:
  """Absolute checkpoint folder: checkpoint_dir_path, or <results_folder>/checkpoints."""
  t = cfg.trainer
  path = t.checkpoint_dir_path or os.path.join(t.results_folder, 'checkpoints')
  return os.path.abspath(os.path.expanduser(path))


def config_keys() -> list[tuple[str, str, str, Any, str]]:
  """(section, key, type, default, help) for every key, in schema order."""
  rows = []
  for section, cls in SECTIONS.items():
    for f in dataclasses.fields(cls):
      base, nullable = _type_of(cls, f.name)
      kind = {int: 'int', float: 'float', bool: 'bool', str: 'str'}.get(base, 'list[int]')
      default = list(f.default) if isinstance(f.default, tuple) else f.default
      rows.append((section, f.name, kind + (' or null' if nullable else ''), default,
                   f.metadata['help']))
  return rows


def markdown_table() -> str:
  """A Markdown table of every key (for the README)."""
  lines = ['| key | type | default | meaning |', '| --- | --- | --- | --- |']
  for section, key, kind, default, meaning in config_keys():
    shown = yaml.safe_dump(default, default_flow_style=True).strip()
    shown = shown.removesuffix('...').strip() or "''"
    lines.append(f'| `{section}.{key}` | {kind} | `{shown}` | {meaning.replace("|", "/")} |')
  return '\n'.join(lines)
