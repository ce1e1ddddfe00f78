"""One way to say "these are the valid options": defaults plus rules, checked in one place.

A module that owns options (a fusion type, an encoder, an objective, an evaluator, a dataset)
states them once, as a dataclass or as keyword defaults, with rules for the fields that need
more than a type: `choices`, or a `(predicate, why)` pair. `check` resolves a user's values
against them and raises `ConfigError` naming the option as it is written on the command line
(`config.model.fusion.num_layers`), the bad value and what is valid, collecting every problem
of a node so the user fixes them all at once.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import ml_collections


class ConfigError(ValueError):
  """A config value is missing, unknown, has the wrong type or is out of range.

  `problems` holds the single messages, so a caller checking several nodes reports them all
  at once (`collect`).
  """

  def __init__(self, message: str = '', problems: Sequence[str] | None = None):
    problems = list(problems or ([message] if message else []))
    super().__init__(message or _join(problems))
    self.problems = problems


def _join(messages: Sequence[str]) -> str:
  return messages[0] if len(messages) == 1 else 'invalid config:\n  ' + '\n  '.join(messages)


def collect(*checks: Callable[[], Any]) -> None:
  """Runs every check; raises one ConfigError with all their problems (duplicates once)."""
  messages = []
  for check_fn in checks:
    try:
      check_fn()
    except ConfigError as e:
      messages += e.problems
  if messages:
    raise ConfigError(problems=list(dict.fromkeys(messages)))


Rule = tuple[Callable[[Any], bool], str]  # (ok(value), why it is not)
# A rule between fields: (where, resolved values) -> a message naming the fields (or several),
# or None when they agree.
Relation = Callable[[str, Mapping[str, Any]], 'str | Iterable[str] | None']


def defaults_of(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """{field: default} of a dataclass (instance or class) or of a callable's keyword
  arguments; fields without a default are left out (they are not options)."""
  if dataclasses.is_dataclass(obj):
    out = {}
    for f in dataclasses.fields(obj):
      if f.name in skip or not f.init:
        continue
      if f.default is not dataclasses.MISSING:
        out[f.name] = f.default
      elif f.default_factory is not dataclasses.MISSING:
        out[f.name] = f.default_factory()
    return out
  params = inspect.signature(obj).parameters.values()
  return {p.name: p.default for p in params if p.name not in skip
          and p.default is not inspect.Parameter.empty
          and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def as_dict(values: Any) -> dict[str, Any]:
  """A plain dict of a ConfigDict / FrozenConfigDict / mapping (one level)."""
  if isinstance(values, ml_collections.FrozenConfigDict):
    values = values.as_configdict()
  if isinstance(values, ml_collections.ConfigDict):
    return values.to_dict()
  return dict(values or {})


def number(v: Any) -> bool:
  """A finite real number (NumPy scalars too), not a bool."""
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(v: Any) -> bool:
  """An int (NumPy integers too), not a bool."""
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- common rules


def int_at_least(low: int) -> Rule:
  return (lambda v: integer(v) and v >= low), f'must be an int >= {low}'


def ints_at_least(low: int) -> Rule:
  """Every item of a tuple is an int >= low."""
  return (lambda v: all(integer(x) and x >= low for x in v)), f'must be all ints >= {low}'


def at_least(low: float) -> Rule:
  return (lambda v: number(v) and v >= low), f'must be >= {low:g}'


POSITIVE_INT: Rule = (lambda v: integer(v) and v > 0), 'must be a positive int'
POSITIVE: Rule = (lambda v: number(v) and v > 0), 'must be a positive number'
FRACTION: Rule = (lambda v: number(v) and 0 <= v < 1), 'must be in [0, 1)'
PROBABILITY: Rule = (lambda v: number(v) and 0 <= v <= 1), 'must be in [0, 1]'
BOOL: Rule = (lambda v: isinstance(v, bool)), 'must be True or False'


def _type_ok(value: Any, default: Any) -> bool:
  """The value has the default's type (an int passes for a float; a list for a tuple;
  anything for a None default)."""
  if default is None:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return integer(value)
  if isinstance(default, float):
    return number(value)
  if isinstance(default, tuple):
    return isinstance(value, (tuple, list))
  if isinstance(default, (Mapping, ml_collections.ConfigDict)):
    return isinstance(value, (Mapping, ml_collections.ConfigDict))
  return isinstance(value, type(default))


def problems(where: str, values: Mapping[str, Any], defaults: Mapping[str, Any], *,
             choices: Mapping[str, tuple[Any, ...]] | None = None,
             rules: Mapping[str, Rule] | None = None, nullable: tuple[str, ...] = (),
             required: bool | Iterable[str] = False, relations: Iterable[Relation] = ()
             ) -> list[str]:
  """Every problem of `values` against `defaults` and the rules, as messages.

  required: a field missing from `values` is a problem (for nodes that code reads directly)
  instead of taking its default: True for every field, or the names of those that must be
  set. relations: rules between fields, run on the resolved values once every field is valid
  on its own.
  """
  out = []
  unknown = sorted(set(values) - set(defaults))
  if unknown:
    out.append(f'{where}: unknown option(s) {unknown}; valid options: {sorted(defaults)}')
  if required:
    needed = defaults if required is True else required
    out += [f'{where}.{key} is missing' for key in needed if key not in values]
  for key, value in values.items():
    if key not in defaults or (value is None and key in nullable):
      continue
    if not _type_ok(value, defaults[key]):
      out.append(f'{where}.{key}={value!r}: ' + (
          'must be True or False' if isinstance(defaults[key], bool) else
          f'must be of type {type(defaults[key]).__name__} (like its default '
          f'{defaults[key]!r})'))
      continue
    if choices and key in choices:
      items = value if isinstance(defaults[key], tuple) else (value,)
      bad = [v for v in items if v not in choices[key]]
      if bad:
        out.append(f'{where}.{key}={value!r}: valid choices: {tuple(choices[key])}')
        continue
    if rules and key in rules:
      ok, why = rules[key]
      try:
        good = ok(value)
      except (TypeError, ValueError):
        good = False
      if not good:
        out.append(f'{where}.{key}={value!r}: {why}')
  if not out:
    resolved = {**defaults, **values}
    for relation in relations:
      found = relation(where, resolved)
      out += [found] if isinstance(found, str) else list(found or ())
  return out


def check(where: str, values: Any, defaults: Mapping[str, Any], **kwargs: Any
          ) -> dict[str, Any]:
  """`{**defaults, **values}`, or ConfigError listing every problem (see `problems`)."""
  values = as_dict(values)
  messages = problems(where, values, defaults, **kwargs)
  if messages:
    raise ConfigError(problems=messages)
  return {**defaults, **values}


class Options:
  """Mixin for a (frozen) dataclass whose fields are options: checked when it is built.

  The class states, beyond each field's type (taken from its default): CHOICES {field:
  valid values}, RULES {field: Rule}, NULLABLE (fields that may be None), RELATIONS (rules
  between fields) and WHERE, how the node is named in messages when no caller says.
  """
  WHERE: ClassVar[str] = 'options'
  CHOICES: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
  RULES: ClassVar[Mapping[str, Rule]] = {}
  NULLABLE: ClassVar[tuple[str, ...]] = ()
  RELATIONS: ClassVar[tuple[Relation, ...]] = ()

  def __post_init__(self):
    type(self).check({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

  @classmethod
  def check(cls, values: Any, where: str | None = None) -> dict[str, Any]:
    """The resolved options, or ConfigError naming every bad one under `where`."""
    return check(where or cls.WHERE, values, defaults_of(cls), choices=cls.CHOICES,
                 rules=cls.RULES, nullable=cls.NULLABLE, relations=cls.RELATIONS)

  @classmethod
  def from_config(cls, cfg: Any, where: str | None = None) -> Any:
    """An instance from a ConfigDict / mapping (None: the defaults; an instance: itself),
    with problems named under `where` (e.g. 'config.data.synthetic')."""
    if isinstance(cfg, cls):
      return cfg
    return cls(**cls.check({} if cfg is None else cfg, where))
