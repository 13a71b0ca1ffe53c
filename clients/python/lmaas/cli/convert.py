"""``lmaas model convert``: a GGUF file or a Hugging Face directory → an LLM version directory.

Offline and once, never on a request path (GGUF → fp32 takes ~18 s and ~1.2 GB). The output is what the
worker's ``llm`` backend reads: ``config.json``, ``tokenizer.json``, ``tokenizer_config.json`` (with the
chat template), ``generation_config.json`` and fp32 ``model.safetensors`` (a tied ``lm_head`` is written once,
as the embedding). ``--quantize int8`` writes the int8 format of :mod:`lmaas.server.llm.quant` instead.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import click

from lmaas.cli._options import option

__all__ = ["convert", "convert_model"]


def _log(message: str, started: float) -> None:
    click.echo(f"[{time.perf_counter() - started:6.1f}s] {message}", err=True)


def convert_model(output: Path, *, gguf: Path | None = None, hf: Path | None = None, quiet: bool = False,
                  quantize: str | None = None) -> Path:
    """Write the version directory; returns ``output``. Needs ``lmaas[convert]`` (transformers, gguf)."""
    if quantize not in (None, "int8"):
        raise click.UsageError(f"--quantize {quantize!r}: only int8")
    if (gguf is None) == (hf is None):
        raise click.UsageError("give exactly one of --gguf FILE or --hf DIR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download: the source is local
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()

    def log(message: str) -> None:
        if not quiet:
            _log(message, started)

    try:
        import torch
        from safetensors.torch import save_file

        transformers: Any = importlib.import_module("transformers")  # untyped: keep it Any
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise click.ClickException(
            f"conversion needs the 'convert' extra (pip install 'lmaas[convert]'): {exc}"
        ) from exc
    src: dict[str, Any] = (
        {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
        if gguf is not None
        else {"pretrained_model_name_or_path": str(hf)}
    )
    log(f"reading {'GGUF ' + str(gguf) if gguf is not None else 'Hugging Face directory ' + str(hf)}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(**src)
    log("tokenizer loaded")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(**src, dtype=torch.float32)
    log(f"weights loaded ({sum(p.numel() for p in loaded.parameters()) / 1e6:.1f} M parameters, fp32)")
    config = transformers.AutoConfig.from_pretrained(**src)
    if config.model_type != "llama":
        raise click.ClickException(f"only Llama-architecture models are served (this one is '{config.model_type}')")
    config.dtype = "float32"
    output.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in loaded.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: the embedding is the head, stored once
    if quantize == "int8":
        from lmaas.server.llm.quant import quantize_tensors

        state = quantize_tensors(state, tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)))
        log("quantised the linear layers to int8 (per output channel)")
    # save_pretrained refuses a GGUF-loaded (quantised) model: write the tensors ourselves.
    save_file(state, str(output / "model.safetensors"), metadata={"format": "pt"})
    log(f"wrote model.safetensors ({(output / 'model.safetensors').stat().st_size / 1e6:.0f} MB, {len(state)} tensors)")
    config.to_json_file(str(output / "config.json"))
    if quantize == "int8":
        from lmaas.server.llm.quant import quantization_config

        raw = json.loads((output / "config.json").read_text())
        raw["quantization_config"] = quantization_config()
        (output / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    loaded.generation_config.to_json_file(str(output / "generation_config.json"))
    tokenizer.save_pretrained(str(output))
    _template_into_config(output, tokenizer.chat_template)
    log("wrote config.json, generation_config.json, tokenizer.json, tokenizer_config.json")
    return output


def _template_into_config(output: Path, template: Any) -> None:
    """Newer transformers write the chat template to chat_template.jinja; the worker reads tokenizer_config.json."""
    path = output / "tokenizer_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    if isinstance(template, str) and template:
        data["chat_template"] = template
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    (output / "chat_template.jinja").unlink(missing_ok=True)


@click.command("convert")
@option("--gguf", env="LMAAS_CONVERT_GGUF", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A GGUF file.")
@option("--hf", env="LMAAS_CONVERT_HF", type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="A Hugging Face directory.")
@option(
    "--output",
    "-o",
    env="LMAAS_CONVERT_OUTPUT",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The version directory to write (REPO/<model>/<version>/ serves it).",
)
@option("--quantize", env="LMAAS_CONVERT_QUANTIZE", type=click.Choice(["int8"]), default=None,
        help="int8: per-channel int8 linear weights, computed with integer GEMMs (default: fp32).")
@option("--quiet", "-q", env="LMAAS_QUIET", is_flag=True, help="No progress lines.")
def convert(gguf: Path | None, hf: Path | None, output: Path, quantize: str | None, quiet: bool) -> None:
    """Build an LLM version directory (fp32 safetensors + tokenizer + chat template), offline."""
    convert_model(output, gguf=gguf, hf=hf, quiet=quiet, quantize=quantize)
    click.echo(str(output))
