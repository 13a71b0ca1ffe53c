"""One source per setting: `lmaas worker` and `lmaas control-plane` options come from the pydantic settings.

Parsing runs through click's own `make_context` / `CliRunner` (no server starts): a bad value must be a usage
error (exit 2) naming its flag, and every documented flag keeps its name, variable and default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from lmaas.cli import main
from lmaas.cli._settings import flag_name
from lmaas.cli.control_plane import control_plane, control_plane_settings
from lmaas.cli.worker import worker, worker_settings
from lmaas.control_plane.settings import DEFAULT_STORE, ControlPlaneSettings
from lmaas.protos.serving import TlsFiles, tls_files
from lmaas.server.settings import WorkerSettings
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# Options that are not settings (how the process runs, where keys come from).
NOT_SETTINGS = {"worker": {"processes", "api_key_file", "log_level", "log_format"},
                "control-plane": {"log_level", "log_format"}}
# Where the command differs from the field on purpose (each one is commented in the command's tweaks).
CLI_DEFAULTS: dict[str, dict[str, Any]] = {"worker": {"api_keys": ""}, "control-plane": {"http_port": 8080}}
CLI_ENV = {"control-plane": {"grace_seconds": "LMAAS_GRACE"}}

# The flags as documented before the options were generated: name → (variable, default). Never drop one.
DOCUMENTED: dict[str, dict[str, tuple[str, Any]]] = {
    "worker": {
        "--model-repository": ("LMAAS_MODEL_REPOSITORY", None), "--control-plane": ("LMAAS_CONTROL_PLANE", None),
        "--host": ("LMAAS_HOST", "127.0.0.1"), "--grpc-port": ("LMAAS_GRPC_PORT", 8001),
        "--http-port": ("LMAAS_HTTP_PORT", 8000), "--metrics-port": ("LMAAS_METRICS_PORT", 8002),
        "--drain-timeout": ("LMAAS_DRAIN_TIMEOUT", 30.0), "--max-message-bytes": ("LMAAS_MAX_MESSAGE_BYTES", 64 << 20),
        "--worker-id": ("LMAAS_WORKER_ID", ""), "--pool": ("LMAAS_POOL", "default"),
        "--max-download-rate": ("LMAAS_MAX_DOWNLOAD_RATE", float(256 << 20)),
        "--cache-dir": ("LMAAS_CACHE_DIR", Path(".lmaas/cache")), "--cache-size": ("LMAAS_CACHE_SIZE", None),
        "--trace-file": ("LMAAS_TRACE_FILE", None), "--token": ("LMAAS_TOKEN", None),
        "--memory-limit": ("LMAAS_MEMORY_LIMIT", None), "--report-every": ("LMAAS_REPORT_EVERY", 15.0),
        "--require-api-key": ("LMAAS_REQUIRE_API_KEY", False), "--api-key-file": ("LMAAS_API_KEY_FILE", None),
        "--api-keys": ("LMAAS_API_KEYS", ""), "--tls-cert": ("LMAAS_TLS_CERT", None),
        "--tls-key": ("LMAAS_TLS_KEY", None), "--tls-client-ca": ("LMAAS_TLS_CLIENT_CA", None),
        "--tls-ca": ("LMAAS_TLS_CA", None), "--processes": ("LMAAS_PROCESSES", 1),
        "--autotune": ("LMAAS_AUTOTUNE", True), "--no-autotune": ("LMAAS_AUTOTUNE", True),
        "--reuse-port": ("LMAAS_REUSE_PORT", False), "--metrics": ("LMAAS_SERVE_METRICS", True),
        "--no-metrics": ("LMAAS_SERVE_METRICS", True), "--log-level": ("LMAAS_LOG_LEVEL", "info"),
        "--log-format": ("LMAAS_LOG_FORMAT", "text"),
    },
    "control-plane": {
        "--store": ("LMAAS_STORE", "sqlite:///.lmaas/control.db"),
        "--artifact-dir": ("LMAAS_ARTIFACT_DIR", Path(".lmaas/artifacts")), "--host": ("LMAAS_HOST", "127.0.0.1"),
        "--grpc-port": ("LMAAS_GRPC_PORT", 8090), "--metrics-port": ("LMAAS_METRICS_PORT", 8091),
        "--http-port": ("LMAAS_HTTP_PORT", 8080), "--max-artifact-bytes": ("LMAAS_MAX_ARTIFACT_BYTES", 16 << 30),
        "--worker-lease-ttl": ("LMAAS_WORKER_LEASE_TTL", 10), "--replica-id": ("LMAAS_REPLICA_ID", None),
        "--grace": ("LMAAS_GRACE", 10.0), "--auth": ("LMAAS_AUTH", True), "--no-auth": ("LMAAS_AUTH", True),
        "--bootstrap-token-file": ("LMAAS_BOOTSTRAP_TOKEN_FILE", Path(".lmaas/admin.token")),
        "--tls-cert": ("LMAAS_TLS_CERT", None), "--tls-key": ("LMAAS_TLS_KEY", None),
        "--tls-client-ca": ("LMAAS_TLS_CLIENT_CA", None), "--tls-worker-cn": ("LMAAS_TLS_WORKER_CN", "*"),
        "--audit-limit": ("LMAAS_AUDIT_LIMIT", 10_000), "--rollout-timeout": ("LMAAS_ROLLOUT_TIMEOUT", 600.0),
        "--prometheus-url": ("LMAAS_PROMETHEUS_URL", ""), "--log-level": ("LMAAS_LOG_LEVEL", "info"),
        "--log-format": ("LMAAS_LOG_FORMAT", "text"),
    },
}
COMMANDS: dict[str, tuple[click.Command, type[BaseModel]]] = {
    "worker": (worker, WorkerSettings), "control-plane": (control_plane, ControlPlaneSettings),
}


def _default(opt: click.Parameter) -> Any:
    """The option's default, None when it has none (click 8.2+ marks that with a private sentinel)."""
    return None if repr(opt.default) == "Sentinel.UNSET" else opt.default


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


@pytest.mark.parametrize("role", sorted(COMMANDS))
def test_each_setting_is_exactly_one_option_with_its_default_help_and_variable(role: str) -> None:
    command, model = COMMANDS[role]
    options = _options(command)
    assert len(options) == len([p for p in command.params if isinstance(p, click.Option)])  # no name twice
    assert set(options) - set(model.model_fields) == NOT_SETTINGS[role]
    for name, field in model.model_fields.items():
        assert name in options, f"{role}: setting {name} has no option"
        opt = options[name]
        assert opt.envvar == CLI_ENV.get(role, {}).get(name, "LMAAS_" + name.upper()), (role, name)
        default = field.default if field.default is not PydanticUndefined else None
        default = getattr(default, "get_secret_value", lambda d=default: d)()
        assert _default(opt) == CLI_DEFAULTS[role].get(name, default), (role, name)
        text = (field.description or "").strip()
        assert opt.help and opt.help.rstrip(".").lower() == text.rstrip(".").lower(), (role, name)


@pytest.mark.parametrize("role", sorted(DOCUMENTED))
def test_documented_flags_keep_their_names_variables_and_defaults(role: str) -> None:
    command, _ = COMMANDS[role]
    by_flag = {flag: p for p in command.params if isinstance(p, click.Option) for flag in (*p.opts, *p.secondary_opts)}
    for flag, (env, default) in DOCUMENTED[role].items():
        assert flag in by_flag, f"lmaas {role} lost {flag}"
        assert (by_flag[flag].envvar, _default(by_flag[flag])) == (env, default), (role, flag)
    assert "worker" in main.commands and "control-plane" in main.commands


def test_env_only_knobs_have_flags_and_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--history-limit", "7", "--no-keep-previous-warm", "--max-message-bytes", str(2 << 20),
            "--bootstrap-worker-token", "w-secret", "--grace", "2.5", "--rollout-timeout", "90s", "--no-auth"]
    with control_plane.make_context("control-plane", args) as ctx:
        s = control_plane_settings(dict(ctx.params))
    assert (s.history_limit, s.keep_previous_warm, s.max_message_bytes) == (7, False, 2 << 20)
    assert s.bootstrap_worker_token is not None and s.bootstrap_worker_token.get_secret_value() == "w-secret"
    assert (s.grace_seconds, s.rollout_timeout, s.auth, s.http_port, s.store) == (2.5, 90.0, False, 8080, DEFAULT_STORE)
    monkeypatch.setenv("LMAAS_HISTORY_LIMIT", "9")
    monkeypatch.setenv("LMAAS_REPLICA_ID", "replica-a")
    monkeypatch.setenv("LMAAS_KEEP_PREVIOUS_WARM", "false")
    with control_plane.make_context("control-plane", []) as ctx:
        s = control_plane_settings(dict(ctx.params))
    assert (s.history_limit, s.replica_id, s.keep_previous_warm) == (9, "replica-a", False)


def test_worker_options_reach_its_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k2\n")
    monkeypatch.setenv("LMAAS_CACHE_SIZE", "2GiB")
    args = ["--model-repository", str(tmp_path), "--memory-limit", "300MiB", "--no-autotune", "--api-keys", "k1",
            "--api-key-file", str(keys), "--require-api-key", "--max-elements", "1000", "--no-metrics"]
    with worker.make_context("worker", args) as ctx:
        params = dict(ctx.params)
    s = worker_settings(params, params.pop("api_key_file"))
    assert (s.memory_limit, s.cache_size, s.autotune, s.max_elements) == (300 << 20, 2 << 30, False, 1000)
    assert (s.api_keys, s.require_api_key, s.serve_metrics, s.model_repository) == (("k1", "k2"), True, False, tmp_path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["control-plane", "--grpc-port", "70000"], "'--grpc-port'"),
        (["control-plane", "--history-limit", "1"], "'--history-limit'"),
        (["control-plane", "--rollout-timeout", "soon"], "invalid duration 'soon'"),
        (["worker", "--model-repository", ".", "--max-message-bytes", "10"], "'--max-message-bytes'"),
        (["worker", "--model-repository", ".", "--memory-limit", "lots"], "'--memory-limit'"),
        (["worker", "--model-repository", ".", "--report-every", "0"], "'--report-every'"),
        (["worker", "--model-repository", ".", "--tls-cert", "pyproject.toml"], "--tls-cert and --tls-key go together"),
        (["control-plane", "--tls-key", "pyproject.toml"], "--tls-cert and --tls-key go together"),
        (["control-plane", "--tls-client-ca", "pyproject.toml"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["worker", "--model-repository", ".", "--require-api-key"], "--require-api-key needs keys"),
        (["worker"], "give --model-repository DIR, --control-plane HOST:PORT, or both"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_its_flag(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, args, env={"LMAAS_API_KEYS": None})
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_one_default_store_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMAAS_STORE", raising=False)
    assert ControlPlaneSettings().store == DEFAULT_STORE == _options(control_plane)["store"].default


def test_one_tls_pair_check() -> None:
    cert, key, ca = Path("c.pem"), Path("k.pem"), Path("ca.pem")
    assert tls_files(None, None) is None
    assert tls_files(cert, key, ca) == TlsFiles(cert, key, ca)
    for bad in ((cert, None, None), (None, key, None), (None, None, ca)):
        with pytest.raises(ValueError, match="--tls-"):
            tls_files(*bad)
    assert flag_name("grace_seconds") == "--grace-seconds"
