"""Backend ``sentence_transformers``: a sentence-embedding directory (BERT encoder + pooling), in plain torch.

A version directory of the sentence-transformers layout (``modules.json``, ``config.json`` with
``model_type: bert``, ``tokenizer.json``, ``model.safetensors``, ``1_Pooling/config.json``) is recognised by its
``modules.json``. It serves as an ordinary tensor model (so the dynamic batcher, metrics and OIP ``infer`` apply):
input ``text`` BYTES ``[-1]``, outputs ``embedding`` FP32 ``[-1, dim]`` and ``num_tokens`` INT64 ``[-1]``.
``/v1/embeddings`` is a thin route over that. No transformers or sentence-transformers at serve time: the
encoder below is the BERT forward (post-LayerNorm, exact GELU), then the pooling and normalisation that
``modules.json`` names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lmaas.server.backends.base import Backend, BackendError, Signature

__all__ = ["PLATFORM", "EmbeddingBackend", "is_embedding_dir"]

PLATFORM = "sentence_transformers"
Array = np.ndarray[Any, Any]


def is_embedding_dir(path: Path) -> bool:
    return path.is_dir() and (path / "modules.json").is_file() and (path / "config.json").is_file()


class EmbeddingBackend(Backend):
    """Loads ``directory`` (``modules.json`` inside it); ``run`` embeds a batch of texts (executor thread)."""

    platform = PLATFORM

    def __init__(self, directory: Path, parameters: Mapping[str, Any]) -> None:
        try:
            import torch
            from safetensors.torch import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - torch is the `torch` extra
            raise BackendError(f"the sentence_transformers backend needs torch: {exc}") from exc
        self._torch = torch
        try:
            modules = json.loads((directory / "modules.json").read_text())
            config = json.loads((directory / "config.json").read_text())
            st_path = directory / "sentence_bert_config.json"
            st_config = json.loads(st_path.read_text()) if st_path.is_file() else {}
            pooling_dir = next((m["path"] for m in modules if m["type"].endswith(".Pooling")), "1_Pooling")
            pooling = json.loads((directory / pooling_dir / "config.json").read_text())
            tensors = load_file(str(directory / "model.safetensors"))
            self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            raise BackendError(f"not a loadable sentence-transformers directory: {exc}") from exc
        if config.get("model_type") != "bert":
            raise BackendError(f"config.json: model_type {config.get('model_type')!r} is not supported (only bert)")
        if pooling.get("pooling_mode_mean_tokens", False) is not True:
            raise BackendError("1_Pooling: only mean pooling is supported")
        self.normalize = any(m["type"].endswith(".Normalize") for m in modules)
        self.max_length = int(parameters.get("max_seq_length", st_config.get("max_seq_length", 256)))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.threads = int(parameters.get("intra_op_threads", 0))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def w(name: str) -> Any:
            try:
                return tensors[prefix + name].float()
            except KeyError:
                raise BackendError(f"weights: tensor '{prefix + name}' is missing") from None

        self.word, self.position, self.token_type = (w("embeddings.word_embeddings.weight"),
                                                     w("embeddings.position_embeddings.weight"),
                                                     w("embeddings.token_type_embeddings.weight"))
        self.embed_norm = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            qkv_w = torch.cat([w(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")])
            qkv_b = torch.cat([w(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            self.layers.append((
                qkv_w, qkv_b, w(p + "attention.output.dense.weight"), w(p + "attention.output.dense.bias"),
                w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"),
                w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"),
                w(p + "output.dense.weight"), w(p + "output.dense.bias"),
                w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"),
            ))
        self.dim = int(self.word.shape[1])
        self.inputs = (Signature("text", "BYTES", (-1,)),)
        self.outputs = (Signature("embedding", "FP32", (-1, self.dim)), Signature("num_tokens", "INT64", (-1,)))

    def _encode(self, ids: Any, mask: Any) -> Any:
        torch = self._torch
        F = torch.nn.functional
        n, t = ids.shape
        x = self.word[ids] + self.position[:t].unsqueeze(0) + self.token_type[0]
        x = F.layer_norm(x, (self.dim,), *self.embed_norm, self.eps)
        head_dim = self.dim // self.heads
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # padded keys get no weight
        for qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, out_w, out_b, ln2_w, ln2_b in self.layers:
            q, k, v = F.linear(x, qkv_w, qkv_b).view(n, t, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            x = F.layer_norm(x + F.linear(attn.transpose(1, 2).reshape(n, t, self.dim), o_w, o_b), (self.dim,),
                             ln1_w, ln1_b, self.eps)
            h = F.linear(F.gelu(F.linear(x, i_w, i_b)), out_w, out_b)
            x = F.layer_norm(x + h, (self.dim,), ln2_w, ln2_b, self.eps)
        return x

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        torch = self._torch
        texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
                 for t in np.asarray(inputs["text"]).reshape(-1)]
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        with torch.inference_mode():
            hidden = self._encode(ids, mask)
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return {"embedding": pooled.numpy().astype(np.float32, copy=False),
                "num_tokens": mask.sum(1).numpy().astype(np.int64)}
