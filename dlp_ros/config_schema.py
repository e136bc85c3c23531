"""Dataclass schemas: one validator for configs, command options and the model card.

A config is a (frozen) dataclass; its field types are the schema and a field's ``metadata``
may carry a :class:`Check` (ranges, choices, finiteness, lengths), most simply through
:func:`checked`::

    @dataclass(frozen=True)
    class ModelConfig:
        K: int = checked(8, ge=1)
        beta: float = checked(0.1, ge=0, finite=True)

        def __post_init__(self) -> None:
            check_fields(self)  # direct construction is validated too

:func:`from_mapping` builds such a dataclass from a mapping (YAML, a run directory, the model
card): unknown keys are refused naming the key and the allowed ones, missing required fields
and wrong types name the dotted field (``model.K: expected int, got 'x'``), nested dataclasses,
``X | None``, tuples, lists and ``dict[str, X]`` are followed, and each field's check runs
(``model.K must be >= 1, got 0``). :func:`from_args` does the same for a command's
``argparse.Namespace`` and names the flag instead (``--batch must be >= 1, got 0``).
Every refusal is a :class:`~dlp_ros.errors.ConfigError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dlp_ros.errors import ConfigError

logger = logging.getLogger(__name__)
T = TypeVar('T')
CHECK = 'check'  # the metadata key of a field's Check
# The class attribute of a dataclass mapping old key names to its fields' names
# (``RENAMED: ClassVar[dict[str, str]] = {'n_particles': 'K'}``), read by from_mapping.
RENAMED = 'RENAMED'
_noted: set[tuple[str, str]] = set()


def renamed_keys(data: Mapping[str, Any], renames: Mapping[str, str], where: str = '') -> Any:
    """``data`` with the old keys of ``renames`` (old -> new) under their new names, each
    logged once as deprecated; both names given with different values is a ConfigError.

    What the runs, checkpoints and caches written before a key was renamed still load through.
    """
    if not isinstance(data, Mapping) or not any(old in data for old in renames):
        return data
    out = dict(data)
    for old, new in renames.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ConfigError(f'{where}{old} (the old name of {where}{new}) is {value!r} but '
                              f'{where}{new} is {out[new]!r}')  # fmt: skip
        out[new] = value
        if (where + old, new) not in _noted:
            _noted.add((where + old, new))
            logger.warning('%s%s is deprecated: read as %s%s (rename the key)', where, old,
                           where, new)  # fmt: skip
    return out


@dataclass(frozen=True)
class Check:
    """Allowed values of one field: bounds (``ge``, ``gt``, ``le``, ``lt``), ``choices``,
    ``finite``, and for tuples and lists ``min_len`` and a check of every entry (``items``).
    ``say`` replaces the generated description (``'positive'`` instead of ``'> 0'``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    finite: bool = False
    min_len: int | None = None
    items: Check | None = None
    say: str | None = None

    def describe(self) -> str:
        """``'>= 1'``, ``'> 0 and <= 1'``, ``"one of ['sum', 'mean']"``, ..."""
        if self.say:
            return self.say
        parts = [f'{op} {_num(v)}' for op, v in
                 (('>=', self.ge), ('>', self.gt), ('<=', self.le), ('<', self.lt))
                 if v is not None]  # fmt: skip
        if self.finite:
            parts.insert(0, 'finite')
        if self.choices is not None:
            parts.append(f'one of {list(self.choices)}')
        if self.min_len:
            parts.append(f'at least {self.min_len} entries long')
        if self.items is not None:
            parts.append(f'with entries {self.items.describe()}')
        return ' and '.join(parts)

    def allows(self, value: Any) -> bool:
        """Whether ``value`` (already of the field's type) passes; None always passes."""
        if value is None:
            return True
        if self.choices is not None and value not in self.choices:
            return False
        if isinstance(value, tuple | list):
            if self.min_len is not None and len(value) < self.min_len:
                return False
            return self.items is None or all(self.items.allows(v) for v in value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return True
        if self.finite and not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        )


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def checked(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
            **check: Any) -> Any:  # fmt: skip
    """A dataclass field with a :class:`Check` (``K: int = checked(8, ge=1)``); ``factory``
    for mutable defaults; no default: a required field."""
    meta = {CHECK: Check(**check)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_check(f: dataclasses.Field) -> Check | None:
    """The :class:`Check` of a dataclass field, if it has one."""
    return f.metadata.get(CHECK)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def dotted(where: str, name: str) -> str:
    """``'model.'`` + ``'K'``: the label of a field in a nested mapping."""
    return f'{where}{name}'


def flag(where: str, name: str) -> str:
    """``'batch_size'`` -> ``'--batch-size'``: the label of a command-line option."""
    return f'--{name.replace("_", "-")}'


def from_mapping(
    cls: type[T], data: Any, where: str = '', label: Callable[[str, str], str] = dotted
) -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), checked field by field.

    ``where`` prefixes every field's name in errors (``'model.'``); ``label(where, name)``
    names a field (:func:`dotted`, or :func:`flag` for command-line options).

    Raises:
        ConfigError: naming the unknown key (and the allowed ones), the missing or ill-typed
            field, or the field whose value is out of its range.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f'{where.rstrip(".") or "config"}: expected a mapping, got '
                          f'{type(data).__name__} {data!r}')  # fmt: skip
    data = renamed_keys(data, getattr(cls, RENAMED, {}), where)
    fields = _init_fields(cls)
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        names = ', '.join(label(where, str(k)) for k in unknown)
        raise ConfigError(f'unknown config key(s) {names}; known: {", ".join(sorted(fields))}')
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = label(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f'{path}: missing (a value is required)')
            continue
        kwargs[name] = _checked_value(f, coerce(hints[name], data[name], path, label), path)
    return _construct(cls, kwargs, where, label)


def _construct(cls: type[T], kwargs: dict[str, Any], where: str, label: Callable) -> T:
    """``cls(**kwargs)``; a FieldError of ``cls``'s own checks is renamed to ``where``."""
    try:
        return cls(**kwargs)
    except FieldError as exc:
        if exc.owner is cls:
            raise FieldError(cls, label(where, exc.name), exc.what) from None
        raise
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f'{where.rstrip(".") or cls.__name__}: {exc}') from exc


def _checked_value(f: dataclasses.Field, value: Any, path: str) -> Any:
    check = field_check(f)
    if check is not None and not check.allows(value):
        raise ConfigError(f'{path} must be {check.describe()}, got {value!r}')
    return value


# Namespace entries of the program rather than of a command (``dlp-train -v COMMAND``).
PROGRAM_OPTIONS = frozenset({'command', 'verbose'})


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The options dataclass ``cls`` of a command from its parsed arguments; errors name the
    flag (``--batch must be >= 1, got 0``). An argument the dataclass lacks is refused (the
    program's own :data:`PROGRAM_OPTIONS` and ``_private`` entries aside), so an option added to
    a parser but not to its dataclass fails at once."""
    values = {k: v for k, v in vars(args).items()
              if k not in PROGRAM_OPTIONS and not k.startswith('_')}  # fmt: skip
    return from_mapping(cls, values, label=flag)


class FieldError(ConfigError):
    """A field of ``owner`` that :func:`check_fields` refused: ``owner.name must be ...``."""

    def __init__(self, owner: type, name: str, what: str) -> None:
        self.owner, self.name, self.what = owner, name, what
        label = name if name.startswith('-') or '.' in name else f'{owner.__name__}.{name}'
        super().__init__(f'{label} {what}')


def check_fields(obj: Any) -> None:
    """Check (and normalise: int -> float, list -> tuple) every field of a constructed
    dataclass against its type and :class:`Check`; call it from ``__post_init__``.

    Raises:
        FieldError: ``<Class>.<field> ...``, renamed by :func:`from_mapping` to the dotted
            field (``model.K must be >= 1, got 0``).
    """
    cls = type(obj)
    hints = _hints(cls)
    for name, f in _init_fields(cls).items():
        value = getattr(obj, name)
        try:
            new = coerce(hints[name], value, name, dotted)
        except ConfigError:
            what = f'must be {_type_name(hints[name])}, got {value!r}'
            raise FieldError(cls, name, what) from None
        if new is not value:
            object.__setattr__(obj, name, new)
        check = field_check(f)
        if check is not None and not check.allows(new):
            raise FieldError(cls, name, f'must be {check.describe()}, got {value!r}')


def fail(obj: Any, name: str, what: str) -> FieldError:
    """The error of a cross-field check in ``__post_init__``, named like :func:`check_fields`'s
    (``raise fail(self, 'patch_size', 'must divide S = 64, got 12')``)."""
    return FieldError(type(obj), name, what)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return ' or '.join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return 'None'
    if origin in (tuple, list):
        return 'a list'
    name = getattr(hint, '__name__', str(hint))
    return {'int': 'an int', 'float': 'a number', 'bool': 'a bool', 'str': 'a string'}.get(
        name, name
    )


def coerce(hint: Any, value: Any, path: str, label: Callable[[str, str], str] = dotted) -> Any:
    """``value`` as type ``hint``: ints are accepted as floats, lists as tuples, strings as
    paths, mappings as dataclasses (:func:`from_mapping`); anything else is a ConfigError
    naming ``path``."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(hint, value, path, label)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return from_mapping(hint, value, f'{path}.', dotted if label is flag else label)
    if origin in (tuple, list) or hint in (tuple, list):
        return _coerce_sequence(hint, value, path, label)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f'{path}: expected a mapping, got {value!r}')
        args = typing.get_args(hint)
        item = args[1] if args else Any
        return {k: coerce(item, v, f'{path}.{k}', label) for k, v in value.items()}
    return _coerce_scalar(hint, value, path)


def _coerce_union(hint: Any, value: Any, path: str, label: Callable) -> Any:
    options = typing.get_args(hint)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f'{path}: expected {_type_name(hint)}, got None')
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return coerce(option, value, path, label)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f'{path}: bad value {value!r}')


def _coerce_sequence(hint: Any, value: Any, path: str, label: Callable) -> Any:
    if not isinstance(value, list | tuple):
        raise ConfigError(f'{path}: expected a list, got {value!r}')
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f'{path}: expected {len(args)} entries, got {value!r}')
        kinds = list(args)
    else:
        kinds = [args[0] if args else Any] * len(value)
    items = [coerce(k, v, f'{path}[{i}]', label) for i, (k, v) in
             enumerate(zip(kinds, value, strict=True))]  # fmt: skip
    if origin is tuple:
        return value if isinstance(value, tuple) and all(
            a is b for a, b in zip(items, value, strict=True)
        ) else tuple(items)  # fmt: skip
    return items


def _coerce_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f'{path}: expected a number, got {value!r}')
        if type(value) is float:
            return value
        try:  # an int, or YAML 1.1's string for 3e-4 (no dot)
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f'{path}: expected a number, got {value!r}') from None
    if hint is Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, str):
            return Path(value)
        raise ConfigError(f'{path}: expected a path, got {value!r}')
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ConfigError(f'{path}: expected {hint.__name__}, got {value!r}')
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f'{path}: expected {hint.__name__}, got {value!r}')
    return value
