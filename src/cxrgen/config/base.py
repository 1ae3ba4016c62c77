"""Config machinery: build frozen dataclasses from YAML dicts, apply checked ``a.b=v`` overrides, save."""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxrgen.errors import ConfigError

T = TypeVar("T")


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping for a config field of free-form keys (e.g. constructor kwargs).

    Lists become tuples and nested mappings FrozenDicts, so a frozen config holding it stays hashable.
    """

    __slots__ = ("_items",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._items = {str(k): _freeze(v) for k, v in (data or {}).items()}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return FrozenDict, (dict(self._items),)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-ready dict of a (nested) config dataclass."""
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{type(cfg).__name__} is not a config dataclass")
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build config ``cls`` from a dict, recursing into nested configs; unknown keys are errors."""
    data = dict(data or {})
    upgrade = getattr(cls, "upgrade_dict", None)  # a config that reads an earlier layout of its section
    if upgrade is not None:
        data = upgrade(data, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[where + k for k in unknown]}; valid keys here: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"cannot build {cls.__name__} from {data}: {exc}") from exc


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn a YAML value into the field's type (nested dataclass, tuple, float from int)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where + ".")
    if origin is collections.abc.Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping (key: value lines), got {value!r}")
        return FrozenDict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text; Python's float() does not
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load config ``cls`` from a YAML file (or defaults), then apply ``a.b=v`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    cfg = from_dict(cls, data)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Return ``cfg`` with each ``a.b=v`` set (v parsed as YAML), checked against field names.

    Below a mapping field (e.g. ``model.denoiser.kwargs``) any key may be set; it is checked where used.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: write it as key.path=value")
        key, raw = item.split("=", 1)
        node, tp = data, type(cfg)
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            free = tp is not None and _is_mapping(tp)
            if not isinstance(node, dict) or (part not in node and not free):
                raise ConfigError(f"override {item!r}: {_no_field(node, tp, parts[:i], part)}")
            if i == len(parts) - 1:
                node[part] = yaml.safe_load(raw)
            else:
                tp = None if free else _field_type(tp, part)
                node = node.setdefault(part, {}) if free else node[part]
    return from_dict(type(cfg), data)


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) is collections.abc.Mapping


def _field_type(tp: Any, name: str) -> Any:
    """The type of field ``name`` of dataclass ``tp`` (Optional unwrapped; None when not a dataclass)."""
    if not dataclasses.is_dataclass(tp):
        return None
    field_tp = typing.get_type_hints(tp).get(name)
    if typing.get_origin(field_tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(field_tp) if a is not type(None)]
        field_tp = args[0] if len(args) == 1 else None
    return field_tp


def _no_field(node: Any, tp: Any, path: list[str], part: str) -> str:
    """Why ``path.part`` names no field: the valid names here, and a close match or mapping to put it under."""
    valid = sorted(node) if isinstance(node, dict) else []
    where = ".".join([*path, part])
    hint = [f"did you mean {'.'.join([*path, m])!r}?" for m in difflib.get_close_matches(part, valid, 1)]
    if dataclasses.is_dataclass(tp):
        hint += [f"free-form keys go under a mapping field: {'.'.join([*path, f.name, part])}=..."
                 for f in dataclasses.fields(tp) if _is_mapping(_field_type(tp, f.name))]
    return "; ".join([f"no field {where!r}; valid here: {valid}", *hint])


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write a config as YAML (saved beside every checkpoint and prepared table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path
