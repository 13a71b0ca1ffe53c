"""The one small interface every backend implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lmaas.protos.errors import Internal

__all__ = ["Backend", "BackendError", "Signature"]

Array = np.ndarray[Any, Any]


class BackendError(Internal):
    """The backend failed to load or run a model (its own exception is the cause): INTERNAL, message kept."""


@dataclass(frozen=True, slots=True)
class Signature:
    """A tensor as the model declares it: full shape including any batch dim; -1 = any."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class Backend(abc.ABC):
    """A loaded model. ``run`` is called from executor threads, never on the event loop."""

    platform: str
    inputs: tuple[Signature, ...]
    outputs: tuple[Signature, ...]

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """Run on named inputs; return the named outputs."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the model holds."""
