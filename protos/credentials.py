"""TLS credentials from PEM files, shared by the worker and the control plane (servers and their clients).

* :func:`server_credentials`: TLS on a server port; with ``client_ca`` every
  client must present a certificate that CA signed (mutual TLS).
* :func:`channel_credentials`: TLS to a server whose certificate ``ca`` signed
  (the system roots when ``ca`` is None); with ``cert`` and ``key`` the client
  presents its own certificate (mutual TLS).
"""

from __future__ import annotations

from pathlib import Path

import grpc

__all__ = ["channel_credentials", "server_credentials"]


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    if (cert is None) != (key is None):
        raise ValueError("a client certificate and its key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
