"""How a config key is declared: its default, a one-line meaning and a range check.

Every section of the schema (config.schema, config.vae) declares its keys with
`config_key` and the checks here. This module does not import JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any


# Checks: value -> None when fine, else the end of the message ("must be > 0, got 0").
def rule(ok: Callable[[Any], bool], text: str) -> Callable[[Any], str | None]:
  return lambda v: (
    None if ok(v) else (f'must be {text}, got {list(v) if isinstance(v, tuple) else v!r}')
  )


positive = rule(lambda v: v > 0, '> 0')
nonneg = rule(lambda v: v >= 0, '>= 0')
unit = rule(lambda v: 0 <= v <= 1, 'in [0, 1]')
open_unit = rule(lambda v: 0 < v <= 1, 'in (0, 1]')
odd = rule(lambda v: v > 0 and v % 2 == 1, 'a positive odd int')
mults = rule(lambda v: bool(v) and all(m > 0 for m in v), 'a non-empty list of positive ints')


def among(table) -> Callable[[Any], str | None]:
  """Check: the value is a name of `table` (a registry of config.registry, read when
  checking, so names registered later count too)."""

  def check(v):
    return None if v in table else f'must be one of {", ".join(map(repr, table))}, got {v!r}'

  check.allowed = table  # the choices, for comparing with the registries that use them
  return check


def one_of(*allowed: str) -> Callable[[Any], str | None]:
  return among(allowed)


def config_key(default, help: str, check: Callable[[Any], str | None] | None = None):
  """A config key: its default, a one-line meaning and an optional range check."""
  return field(default=default, metadata={'help': help, 'check': check})
