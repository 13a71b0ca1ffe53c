"""Triton's LogSettings over the worker's real logging (TraceSetting: :mod:`lmaas.server.tracing`).

LogSettings reads and sets the level of the process's root logger (what ``setup_logging`` configured), so a
change applies to every log line from then on. Triton's flags map onto one Python level: ``log_verbose_level``
> 0 is DEBUG, else ``log_info`` INFO, else ``log_warning`` WARNING, else ``log_error`` ERROR, else nothing.
The destination (stderr) and the format (set at start) are reported, not changeable at run time.
"""

from __future__ import annotations

import logging

from lmaas.protos.errors import InvalidArgument

__all__ = ["LogValue", "log_settings"]

LogValue = bool | int | str
_FLAGS = ("log_info", "log_warning", "log_error")
_SILENT = logging.CRITICAL + 10


def _current() -> dict[str, LogValue]:
    root = logging.getLogger()
    level = root.getEffectiveLevel()
    json_format = any(type(h.formatter).__name__ == "_JsonFormatter" for h in root.handlers)
    return {
        "log_file": "",
        "log_info": level <= logging.INFO,
        "log_warning": level <= logging.WARNING,
        "log_error": level <= logging.ERROR,
        "log_verbose_level": 1 if level <= logging.DEBUG else 0,
        "log_format": "json" if json_format else "default",
    }


def log_settings(updates: dict[str, LogValue]) -> dict[str, LogValue]:
    """Apply ``updates`` (Triton's keys), then answer the settings in force."""
    current = _current()
    unknown = sorted(set(updates) - set(current))
    if unknown:
        raise InvalidArgument(f"unknown log setting(s) {unknown}: this server has {sorted(current)}")
    for key, value in updates.items():
        if key in _FLAGS and not isinstance(value, bool):
            raise InvalidArgument(f"log setting '{key}' must be a boolean")
        if key == "log_verbose_level" and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument("log setting 'log_verbose_level' must be an unsigned integer")
        if key in ("log_file", "log_format") and value != current[key]:
            raise InvalidArgument(
                f"log setting '{key}' cannot change at run time (the worker logs to stderr, format set at start)"
            )
    merged = {**current, **updates}
    if merged["log_verbose_level"]:
        level = logging.DEBUG
    elif merged["log_info"]:
        level = logging.INFO
    elif merged["log_warning"]:
        level = logging.WARNING
    elif merged["log_error"]:
        level = logging.ERROR
    else:
        level = _SILENT
    logging.getLogger().setLevel(level)
    return _current()

