"""Triton's sequence batcher: stateful models served one sequence per slot, with implicit state kept here.

``config`` holds the typed ``sequence_batching`` section (imported by the model config, so it imports nothing of
the server); ``scheduler`` the request path.
"""

from __future__ import annotations

__all__: list[str] = []
