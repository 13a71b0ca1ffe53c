"""The one way LMaaS commands declare options: every flag also reads an ``LMAAS_*`` variable, shown in --help."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["F", "option"]

F = TypeVar("F", bound=Callable[..., Any])


def option(*names: str, env: str, **kw: Any) -> Callable[[F], F]:
    """``click.option`` that reads ``env`` and shows it (and the default) in --help."""
    return click.option(*names, envvar=env, show_envvar=True, **{"show_default": True, **kw})
