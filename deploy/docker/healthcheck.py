"""Docker HEALTHCHECK for the LMaaS image: a grpc.health.v1 ``Check`` against the local gRPC server.

The image runs either role, so the port is ``--port`` if given, else ``$LMAAS_GRPC_PORT``, else the
worker's default 8001 and then the control plane's 8090; the first port that answers decides.
Exit status 0 when that server reports SERVING for ``--service`` (default "", the whole server), 1
otherwise. Kubernetes does not use this: the manifests use native gRPC probes instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["DEFAULT_PORTS", "candidate_ports", "check", "main"]

DEFAULT_PORTS = (8001, 8090)


def candidate_ports(explicit: int | None, environ: Mapping[str, str]) -> tuple[int, ...]:
    """The ports to try, in order."""
    if explicit is not None:
        return (explicit,)
    configured = environ.get("LMAAS_GRPC_PORT", "").strip()
    if configured:
        return (int(configured),)
    return DEFAULT_PORTS


def check(target: str, service: str = "", timeout: float = 3.0) -> bool | None:
    """True: SERVING; False: answered, not SERVING; None: nothing answered at ``target``."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            # NOT_FOUND: the server is up but does not know this service name.
            return False if exc.code() == grpc.StatusCode.NOT_FOUND else None
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grpc.health.v1 check for the LMaaS image")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    for port in candidate_ports(args.port, os.environ if environ is None else environ):
        target = f"{args.host}:{port}"
        result = check(target, args.service, args.timeout)
        if result is not None:
            print(f"{target} {args.service or '(server)'}: {'SERVING' if result else 'NOT SERVING'}")
            return 0 if result else 1
    print("no gRPC health service answered", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
