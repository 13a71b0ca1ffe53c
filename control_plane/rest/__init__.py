"""The control plane's REST API (``/api/v1``, OpenAPI at ``/openapi.json``): FastAPI on uvicorn, in-process.

Routes are thin calls of the same core objects as the gRPC servicers (Registry, ArtifactStore,
Deployments, Tokens, AuditLog, list_workers), with the same tokens, roles and audit
(:mod:`.access`, over :data:`lmaas.control_plane.auth.METHODS`) and the same error table (:mod:`.problems`).
The document kept in the repository, ``openapi.json`` beside this file, is regenerated with
``python -m lmaas.control_plane.rest.openapi --write``.
"""

from __future__ import annotations

from lmaas.control_plane.rest.app import API_PREFIX, create_app
from lmaas.control_plane.rest.server import RestServer

__all__ = ["API_PREFIX", "RestServer", "create_app"]
