"""YAML run configs for train.py and sample.py: schema, loading, validation.

A config file has up to six sections, `unet` (Unet3D arguments), `diffusion`
(GaussianDiffusion arguments), `dit` (the transformer backbone), `trainer`
(the training loop), `vae` (the video autoencoder, diffusers' config.json keys)
and `vae_trainer` (its training loss and measurements). Every key has
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
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from video_diffusion.config.registry import (
  BACKBONES,
  LOSS_WEIGHTINGS,
  default_sampler,
  sampler_misfit,
)
from video_diffusion.config.schema import SECTIONS, Config
from video_diffusion.config.vae import LATENTS_RECORD, MODEL_KIND


class ConfigError(ValueError):
  """A config file or override that cannot be used; the message names the file and key."""


class _Loader(yaml.SafeLoader):
  """SafeLoader that reads 1e-4 as a float (YAML 1.2) and refuses duplicate keys."""

  def construct_mapping(self, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
      key = self.construct_object(key_node, deep=deep)
      if key in seen:
        raise yaml.constructor.ConstructorError(
          None, None, f'duplicate key {key!r}', key_node.start_mark
        )
      seen.add(key)
    return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
  'tag:yaml.org,2002:float',
  re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$'),
  list('-+0123456789.'),
)


class _Dumper(yaml.SafeDumper):
  """Block-style sections with one-line lists."""


_Dumper.add_representer(
  list, lambda d, v: d.represent_sequence('tag:yaml.org,2002:seq', v, flow_style=True)
)


def _yaml(text: str, where: str) -> Any:
  try:
    return yaml.load(text, Loader=_Loader)
  except yaml.YAMLError as e:
    raise ConfigError(
      f'{where}: not valid YAML: {_yaml_problem(e)}; fix the syntax there'
    ) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
  """One line: "expected ',' or ']', but got '<stream end>' at line 3, column 1 (while
  parsing a flow sequence from line 2, column 8)"."""

  def at(mark) -> str:
    return f'line {mark.line + 1}, column {mark.column + 1}'

  problem = ' '.join((getattr(error, 'problem', None) or str(error)).split())
  mark, context = getattr(error, 'problem_mark', None), getattr(error, 'context', None)
  text = problem if mark is None else f'{problem} at {at(mark)}'
  context_mark = getattr(error, 'context_mark', None)
  if context and context_mark is not None:
    text += f' ({context} from {at(context_mark)})'
  return text


def _type_of(cls: type, name: str) -> tuple[Any, bool]:
  """(base type, nullable) of a dataclass field."""
  hint = typing.get_type_hints(cls)[name]
  args = typing.get_args(hint)
  return (args[0], True) if type(None) in args else (hint, False)


def _got(v: Any) -> str:
  return 'got null' if v is None else f'got {v!r} ({type(v).__name__})'


_WORDS = {int: 'an int', float: 'a float', bool: 'a bool', str: 'a str'}
_LIST_WORDS = {int: 'a list of ints', float: 'a list of numbers', bool: 'a list of bools'}
_KINDS = {int: 'int', float: 'float', bool: 'bool', str: 'str'}


def _item_type(base: Any) -> Any:
  """X of a tuple[X, ...] type, else None."""
  return typing.get_args(base)[0] if typing.get_origin(base) is tuple else None


def _coerce_one(v: Any, base: Any) -> tuple[Any, bool]:
  """(v, an int widened to float, whether it is a `base`)."""
  if base is float and isinstance(v, (int, float)) and not isinstance(v, bool):
    return float(v), True
  return v, type(v) is base


def _coerce(v: Any, base: Any, nullable: bool) -> tuple[Any, str | None]:
  """(value with ints widened to float and lists to tuples, None) or (v, error)."""
  if v is None and nullable:
    return v, None
  item = _item_type(base)
  if item is None:
    value, ok = _coerce_one(v, base)
    numbers = [value]
  else:
    pairs = [_coerce_one(m, item) for m in v] if isinstance(v, (list, tuple)) else [(v, False)]
    value, ok = tuple(m for m, _ in pairs), all(fits for _, fits in pairs)
    numbers = list(value)
  if ok and not all(math.isfinite(m) for m in numbers if isinstance(m, float)):
    word = 'a finite number' if item is None else 'a list of finite numbers'
    return v, f'must be {word}, got {v!r}'
  if ok:
    return value, None
  word = _WORDS.get(base, str(base)) if item is None else _LIST_WORDS.get(item, str(base))
  return v, f'must be {word}{" or null" if nullable else ""}, {_got(v)}'


def _kind(base: Any) -> str:
  """'int', 'list[float]', ... for the key table."""
  item = _item_type(base)
  name = lambda t: _KINDS.get(t, getattr(t, '__name__', str(t)))
  return name(base) if item is None else f'list[{name(item)}]'


def _suggest(section: str | None, key: str | None) -> str:
  """'; did you mean trainer.train_lr?' or a list of the valid names."""
  if key is None:
    close = difflib.get_close_matches(str(section), SECTIONS, n=1)
    hint = f'did you mean {close[0]}?' if close else f'sections are {", ".join(SECTIONS)}'
    return f'; {hint}'
  names = [f.name for f in dataclasses.fields(SECTIONS[section])]
  close = difflib.get_close_matches(str(key), names, n=1)
  if close:
    return f'; did you mean {section}.{close[0]}?'
  for other, cls in SECTIONS.items():
    if key in {f.name for f in dataclasses.fields(cls)}:
      return f'; did you mean {other}.{key}? (it belongs in section {other})'
  return f'; valid keys of {section}: {", ".join(names)}'


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
  try:
    return cls(**values)
  except ValueError as e:  # a check of the section as a whole (VAEConfig's)
    raise ConfigError(f'{where(None)}: {section}: {e}') from None


def _disagree(where: str, a: str, av: Any, b: str, bv: Any, fix: str) -> ConfigError:
  return ConfigError(f'{where}: {a} is {av!r} but {b} is {bv!r}; they must agree: {fix}')


def _check_together(cfg: Config, where: str) -> Config:
  """Cross-section agreement. Fills the reference Trainer's num_frames, image_size
  and channels from the diffusion section (code reads only diffusion's), and
  trainer.mesh_fsdp (null = num_model_shards or 1; code reads only mesh_fsdp)."""
  u, d, t = cfg.unet, cfg.diffusion, cfg.trainer
  if u.channels != d.channels:
    raise _disagree(
      where,
      'unet.channels',
      u.channels,
      'diffusion.channels',
      d.channels,
      f'set unet.channels to {d.channels} (or change both)',
    )
  if u.out_dim is not None and u.out_dim != d.channels:
    raise _disagree(
      where,
      'unet.out_dim',
      u.out_dim,
      'diffusion.channels',
      d.channels,
      f'the model predicts the noise of every channel; set unet.out_dim to null or {d.channels}',
    )
  if d.vae is not None and d.use_dynamic_thres:
    raise ConfigError(
      f'{where}: diffusion.use_dynamic_thres bounds pixels to [-1, 1]; latents '
      '(diffusion.vae) are not bounded: set use_dynamic_thres: false'
    )
  check = BACKBONES[d.backbone].check  # the backbone's sections against the rest
  if check is not None and (problem := check(cfg)):
    raise ConfigError(f'{where}: {problem}')
  if d.is_flow and not LOSS_WEIGHTINGS[d.loss_weighting].flow:
    fits = ' or '.join(n for n, w in LOSS_WEIGHTINGS.items() if w.flow)
    raise ConfigError(
      f'{where}: diffusion.loss_weighting {d.loss_weighting!r} is for the Gaussian objectives; '
      f'flow matching weighs its times through diffusion.time_sampling: set loss_weighting: {fits}'
    )
  if t.fps is not None and t.frame_stride != 1:
    raise ConfigError(
      f'{where}: trainer.fps ({t.fps}) and trainer.frame_stride ({t.frame_stride}) both set '
      'how clips skip frames; keep one of them (frame_stride: 1, or fps: null)'
    )
  if bool(t.image_fraction) != bool(t.image_dataset_path):
    raise ConfigError(
      f'{where}: image-video co-training needs both trainer.image_dataset_path '
      f'({t.image_dataset_path!r}) and trainer.image_fraction > 0 ({t.image_fraction}); '
      'set both, or neither'
    )
  eval_sampler = t.eval_sampler or default_sampler(d.is_flow, fast=True)
  misfit = sampler_misfit(eval_sampler, d.is_flow)
  if misfit:
    raise ConfigError(f'{where}: trainer.eval_sampler: {misfit}')
  if t.val_every and not d.is_flow and t.val_times > d.timesteps:
    raise ConfigError(
      f'{where}: trainer.val_times ({t.val_times}) is more than the '
      f'{d.timesteps} diffusion.timesteps: use at most {d.timesteps}'
    )
  filled = {}
  for key in ('num_frames', 'image_size', 'channels'):
    tv, dv = getattr(t, key), getattr(d, key)
    if tv is not None and tv != dv:
      raise _disagree(
        where,
        f'trainer.{key}',
        tv,
        f'diffusion.{key}',
        dv,
        f'change trainer.{key} to {dv} (or null), or diffusion.{key} to {tv} '
        'if the model should use it',
      )
    filled[key] = dv
  if None not in (t.num_model_shards, t.mesh_fsdp) and t.num_model_shards != t.mesh_fsdp:
    raise _disagree(
      where,
      'trainer.num_model_shards',
      t.num_model_shards,
      'trainer.mesh_fsdp',
      t.mesh_fsdp,
      'set one of them (they name the same mesh axis)',
    )
  fsdp = t.mesh_fsdp or t.num_model_shards or 1
  kinds = [
    k
    for k, on in [
      ('unet.num_classes', u.num_classes is not None),
      ('unet.use_bert_text_cond', u.use_bert_text_cond),
    ]
    if on
  ]
  if len(kinds) > 1:
    raise ConfigError(
      f'{where}: {" and ".join(kinds)} are both set; a model takes one kind of '
      'condition: keep one of them'
    )
  for key, on in [
    ('use_path_as_cond', t.use_path_as_cond),
    ('sample_text', t.sample_text),
    ('text_encoder_path', t.text_encoder_path),
  ]:
    if on and not u.use_bert_text_cond:
      raise ConfigError(
        f'{where}: trainer.{key} is set but unet.use_bert_text_cond is false; '
        'set unet.use_bert_text_cond: true for a text-conditional model'
      )
  if d.frame_conditioning:
    if d.num_frames < 2:
      raise ConfigError(
        f'{where}: diffusion.frame_conditioning needs diffusion.num_frames >= 2, got {d.num_frames}'
      )
    if t.max_cond_frames is not None and t.max_cond_frames >= d.num_frames:
      raise ConfigError(
        f'{where}: trainer.max_cond_frames ({t.max_cond_frames}) must be less '
        f'than diffusion.num_frames ({d.num_frames}), so some frame is left to '
        'generate'
      )
    if t.cond_frames_prob_none + t.cond_frames_prob_interpolate > 1:
      raise ConfigError(
        f'{where}: trainer.cond_frames_prob_none + '
        f'trainer.cond_frames_prob_interpolate = {t.cond_frames_prob_none} + '
        f'{t.cond_frames_prob_interpolate} is more than 1; lower them'
      )
  if t.lr_decay_start_step is not None and t.lr_decay_steps is None:
    raise ConfigError(
      f'{where}: trainer.lr_decay_start_step is {t.lr_decay_start_step} but '
      'trainer.lr_decay_steps is null; set trainer.lr_decay_steps too'
    )
  return dataclasses.replace(
    cfg, trainer=dataclasses.replace(t, mesh_fsdp=fsdp, eval_sampler=eval_sampler, **filled)
  )


def config_from_dict(
  data: Any, source: str = '<dict>', key_sources: dict[tuple[str, str], str] | None = None
) -> Config:
  """Validate a nested {section: {key: value}} mapping into a Config.

  `source` names the origin in error messages; `key_sources` may name a
  different origin for single keys (the override that set them).
  """
  if not isinstance(data, dict):
    got = 'got an empty document' if data is None else _got(data)
    raise ConfigError(
      f'{source}: a config must be a mapping with sections {", ".join(SECTIONS)}, {got}'
    )
  key_sources = key_sources or {}
  sections = {}
  for section, body in data.items():
    if section not in SECTIONS:
      raise ConfigError(f'{source}: unknown section {section!r}{_suggest(section, None)}')
    body = {} if body is None else body
    if not isinstance(body, dict):
      raise ConfigError(f'{source}: section {section} must be a mapping of keys, {_got(body)}')
    own_keys = getattr(SECTIONS[section], 'own_keys', None)  # the vae section's metadata
    if own_keys is not None:
      try:
        body = own_keys(body)
      except ValueError as e:
        raise ConfigError(f'{source}: {section}: {e}') from None
    for key in body:
      if key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        where = key_sources.get((section, key), source)
        raise ConfigError(f'{where}: unknown key {section}.{key}{_suggest(section, key)}')
    where = lambda k, s=section: key_sources.get((s, k), source)
    sections[section] = _build_section(section, body, where)
  return _check_together(_assemble(sections), source)


def _assemble(sections: dict[str, Any]) -> Config:
  """A Config of the built sections; registered sections beyond Config's own
  fields (a backbone's) go to Config.extra, with their defaults where absent."""
  own = {f.name for f in dataclasses.fields(Config)} - {'extra'}
  extra = tuple((n, sections.get(n) or cls()) for n, cls in SECTIONS.items() if n not in own)
  return Config(**{n: v for n, v in sections.items() if n in own}, extra=extra)


def _apply_override(data: dict, text: str, source: str) -> tuple[str, str]:
  form = (
    'expected section.key=value, e.g. trainer.train_lr=3e-4, unet.dim_mults=[1,2] or '
    'trainer.max_grad_norm=null'
  )
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


def config_of_checkpoint(saved: dict, source: str = '<checkpoint>') -> Config:
  """The Config of the config dict a checkpoint holds (config_to_dict's, and for
  a train-vae run its MODEL_KIND key, of a latent model its LATENTS_RECORD, left out)."""
  kept = {k: v for k, v in saved.items() if k not in (MODEL_KIND, LATENTS_RECORD)}
  return config_from_dict(kept, source)


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
      kind = _kind(base)
      default = list(f.default) if isinstance(f.default, tuple) else f.default
      rows.append(
        (section, f.name, kind + (' or null' if nullable else ''), default, f.metadata['help'])
      )
  return rows


def markdown_table() -> str:
  """A Markdown table of every key (docs/configuration.md; make config-docs)."""
  lines = ['| key | type | default | meaning |', '| --- | --- | --- | --- |']
  for section, key, kind, default, meaning in config_keys():
    shown = yaml.safe_dump(default, default_flow_style=True).strip()
    shown = shown.removesuffix('...').strip() or "''"
    lines.append(f'| `{section}.{key}` | {kind} | `{shown}` | {meaning.replace("|", "/")} |')
  return '\n'.join(lines)
