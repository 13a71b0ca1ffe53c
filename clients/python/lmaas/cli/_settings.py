"""Server commands' options generated from their pydantic settings: one default, one help text, one ``LMAAS_*``
variable per setting, kept in the settings class.

Each field ``foo_bar`` becomes ``--foo-bar`` (a bool: ``--foo-bar/--no-foo-bar``) reading ``LMAAS_FOO_BAR``, with
the field's default, its description as the help, and its bounds (``ge``/``gt``/``le``) as a click range, so bad
values fail as a usage error naming the flag. ``tweaks`` changes what a field needs beyond that (a file that must
exist, a documented flag or variable name that predates the field, a hidden flag); an option the command declares
itself for a field (a flag another engineer is adding by hand) is kept and not generated twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

import annotated_types
import click
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import PydanticUndefined

from lmaas.cli._options import F
from lmaas.cli._options import option as _opt

__all__ = ["DURATION", "SIZE", "build_settings", "settings_options"]


class _Size(click.ParamType[int]):
    """Bytes from ``300MiB``, ``2GiB``, ``500MB`` or a bare number (lmaas.server.memory.parse_size)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from lmaas.server.memory import parse_size

        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Duration(click.ParamType[float]):
    """Seconds from ``60s``, ``1.5m``, ``500ms``, ``2h`` or a bare number (lmaas.control_plane.settings)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from lmaas.control_plane.settings import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


M = TypeVar("M", bound=BaseModel)
SIZE = _Size()
DURATION = _Duration()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not NoneType]
        if len(args) == 1:
            return args[0]
    return annotation


def _click_type(annotation: Any, metadata: list[Any]) -> Any:
    kind = _unwrap(annotation)
    bounds: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            bounds["min"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            bounds.update(min=m.gt, min_open=True)
        elif isinstance(m, annotated_types.Le):
            bounds["max"] = m.le
    if kind is int:
        return click.IntRange(**bounds) if bounds else int
    if kind is float:
        return click.FloatRange(**bounds) if bounds else float
    if kind is Path:
        return click.Path(path_type=Path)
    if kind in (str, SecretStr):
        return str
    raise TypeError(f"no click type for {annotation!r}: give the field a tweak")


def _help(description: str | None) -> str:
    text = (description or "").strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def settings_options(
    model: type[BaseModel], tweaks: Mapping[str, Mapping[str, Any]] | None = None
) -> Callable[[F], F]:
    """Decorator (put it above the command's own options): one option per field of ``model``.

    A tweak may give ``decls`` (the flag names, e.g. a documented ``--grace`` for ``grace_seconds``), ``env`` and
    any ``click.option`` keyword (``type``, ``hidden``, ...). Fields the command already declares are skipped.
    """
    tweaks = tweaks or {}

    def decorate(fn: F) -> F:
        declared = {p.name for p in getattr(fn, "__click_params__", [])}
        for name, field in reversed(model.model_fields.items()):
            if name in declared:
                continue
            tweak = dict(tweaks.get(name, {}))
            decls = tweak.pop("decls", None)
            env = tweak.pop("env", "LMAAS_" + name.upper())
            kind = _unwrap(field.annotation)
            kw: dict[str, Any] = {"help": _help(field.description)}
            if field.default is not PydanticUndefined:
                default = field.default
                kw["default"] = default.get_secret_value() if isinstance(default, SecretStr) else default
            else:  # default_factory: the settings fill it in when the option is absent
                kw["default"] = None
                kw["show_default"] = False
            if kind is bool:
                decls = decls or (f"{flag_name(name)}/--no-{name.replace('_', '-')}",)
            else:
                kw["type"] = tweak.pop("type", None) or _click_type(field.annotation, field.metadata)
            kw.update(tweak)
            fn = _opt(*(decls or (flag_name(name),)), name, env=env, **kw)(fn)
        return fn

    return decorate


def build_settings(model: type[M], options: Mapping[str, Any]) -> M:
    """The settings from the parsed options (absent ones are None and left to the field's default factory); a
    value the settings refuse is a usage error naming its flag."""
    fields = model.model_fields
    values = {k: v for k, v in options.items() if not (v is None and k in fields and fields[k].default_factory)}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")  # a validator's own message names its flags
        if first["loc"]:
            message = f"{', '.join(flag_name(str(part)) for part in first['loc'])}: {message}"
        raise click.UsageError(message) from None
