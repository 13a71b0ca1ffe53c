"""The runner's arithmetic: a Llama forward in plain torch over a version's safetensors, with a KV cache per sequence.

No transformers at serve time. One forward takes every sequence of a step packed together: the linear layers run
on all their rows at once (that is the batching gain: weights are read once per step), attention runs per
sequence against that sequence's own cache, so there is no padding that could leak between sequences.

**Batch invariance.** fp32 GEMM kernels pick their reduction order by the row count M: on this CPU, a row's result
for M=1 differs from M≥2 in the last bits, and M=17..28 differs from M≤16 for some shapes, which is enough to flip a
greedy token after a few dozen steps. So :func:`_mm` always multiplies in blocks of 2..16 rows (a lone row is
padded to two): measured, a row's result is then bit-identical whatever else is in the batch. Prefill chunk
boundaries depend only on the sequence itself (see the scheduler), so attention sees the same shapes alone or
batched. Weights are stored transposed and contiguous (``x @ Wt``), the layout for which that holds.

**int8 versions** (``quantization_config`` in config.json, see :mod:`lmaas.server.llm.quant`): the linear layers
are :class:`~lmaas.server.llm.quant.QLinear` and multiply with integer GEMMs, batch invariant by construction;
embeddings, norms, attention and the KV cache stay on the fp32 path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lmaas.server.llm.quant import SCALE_SUFFIX, QLinear, is_int8, qmm

__all__ = ["KVCache", "Llama", "LlamaConfig", "SeqInput"]

_BLOCK = 16


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    int8: bool = False  # linear weights are int8 + per-channel scales (quant.METHOD)

    @classmethod
    def from_file(cls, path: Path) -> LlamaConfig:
        raw: dict[str, Any] = json.loads(path.read_text())
        arch = raw.get("model_type")
        if arch != "llama":
            raise ValueError(f"config.json: model_type '{arch}' is not supported (only llama)")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"config.json: rope_type '{rope.get('rope_type')}' is not supported")
        heads = int(raw["num_attention_heads"])
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads", heads)),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
            rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            int8=is_int8(raw),
        )

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    """One sequence's keys and values, allocated once for its whole reservation (prompt + max new tokens)."""

    __slots__ = ("k", "length", "v")

    def __init__(self, config: LlamaConfig, capacity: int, dtype: torch.dtype) -> None:
        shape = (config.num_layers, config.num_kv_heads, capacity, config.head_dim)
        self.k = torch.empty(shape, dtype=dtype)
        self.v = torch.empty(shape, dtype=dtype)
        self.length = 0  # tokens whose K/V are written


@dataclass(slots=True)
class SeqInput:
    """One sequence's share of a forward: tokens at positions ``cache.length ..``; logits of the last one if asked."""

    tokens: list[int]
    cache: KVCache
    want_logits: bool


def _mm(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """``x @ wt`` in row blocks of 2..16 so that each row's bits never depend on the batch (module doc)."""
    n = x.shape[0]
    if n == 1:
        return (torch.cat((x, x)) @ wt)[:1]
    if n <= _BLOCK:
        return x @ wt
    out = torch.empty((n, wt.shape[1]), dtype=x.dtype)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        if stop - start == 1:
            out[start:stop] = (x[start - 1 : stop] @ wt)[1:]  # borrow the previous row: a block of two
        else:
            torch.matmul(x[start:stop], wt, out=out[start:stop])
    return out


Weight = torch.Tensor | QLinear
#: One block: input norm, q|k|v, o, post-attention norm, gate|up, down.
_Layer = tuple[torch.Tensor, Weight, Weight, torch.Tensor, Weight, Weight]


def _linear(x: torch.Tensor, w: Weight) -> torch.Tensor:
    return qmm(x, w) if isinstance(w, QLinear) else _mm(x, w)


class _LazyTensors:
    """``pop(name)`` reads one tensor from the safetensors files: load peak = final weights + one tensor."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._where: dict[str, Any] = {}
        for f in files:
            handle: Any = safe_open(str(f), framework="pt")
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                self._where[key] = handle

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def pop(self, name: str, *default: None) -> torch.Tensor | None:
        handle = self._where.pop(name, None)
        if handle is None:
            if default:
                return None
            raise KeyError(name)
        return handle.get_tensor(name)  # type: ignore[no-any-return]


class Llama:
    """Weights (transposed, fused q|k|v and gate|up) and the forward."""

    def __init__(self, config: LlamaConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
        self.config, self.dtype = config, dtype
        c = config

        def take(name: str) -> torch.Tensor:
            try:
                return tensors.pop(name).to(dtype)
            except KeyError:
                raise ValueError(f"weights: tensor '{name}' is missing") from None

        def own(name: str) -> torch.Tensor:
            # A copy: the loaded tensors may share one buffer per file, which a kept view would pin whole.
            return take(name).clone()

        def quantized(name: str) -> QLinear | None:
            if not c.int8 or name + SCALE_SUFFIX not in tensors:
                return None
            weight, scale = tensors.pop(name), tensors.pop(name + SCALE_SUFFIX)
            if weight.dtype != torch.int8 or weight.dim() != 2 or tuple(scale.shape) != (weight.shape[0],):
                raise ValueError(f"weights: '{name}' is not int8 [out, in] with a scale [out]")
            return QLinear(weight, scale.to(torch.float32))

        def t(*names: str) -> Weight:
            parts = [quantized(n) for n in names]
            if all(p is not None for p in parts):
                return QLinear.cat(p for p in parts if p is not None)
            if any(p is not None for p in parts):
                raise ValueError(f"weights: {', '.join(names)} must all be int8 or all fp32")
            return torch.cat([take(n) for n in names]).t().contiguous()

        self.embed = own("model.embed_tokens.weight")
        if tuple(self.embed.shape) != (c.vocab_size, c.hidden_size):
            raise ValueError(f"weights: embedding shape {tuple(self.embed.shape)} does not match config.json")
        self.layers: list[_Layer] = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            self.layers.append(
                (
                    own(p + "input_layernorm.weight"),
                    t(p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"),
                    t(p + "self_attn.o_proj.weight"),
                    own(p + "post_attention_layernorm.weight"),
                    t(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                    t(p + "mlp.down_proj.weight"),
                )
            )
        self.norm = own("model.norm.weight")
        qhead = quantized("lm_head.weight")
        head = None if qhead is not None else tensors.pop("lm_head.weight", None)
        if qhead is None and head is None and not c.tie_word_embeddings:
            raise ValueError("weights: lm_head.weight is missing and the embeddings are not tied")
        self.head: Weight = qhead or (self.embed if head is None else head.to(dtype)).t().contiguous()
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim))
        angles = torch.outer(torch.arange(c.max_position_embeddings, dtype=torch.float64), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.cos, self.sin = angles.cos().to(dtype), angles.sin().to(dtype)

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype = torch.float32) -> Llama:
        config = LlamaConfig.from_file(directory / "config.json")
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ValueError(f"no *.safetensors in {directory}")
        return cls(config, _LazyTensors(files), dtype)  # type: ignore[arg-type]

    def weight_bytes(self) -> int:
        tensors = [self.embed, self.norm, self.head, *(w for layer in self.layers for w in layer)]
        return sum(t.nbytes if isinstance(t, QLinear) else t.numel() * t.element_size() for t in tensors)

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.config, capacity, self.dtype)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps))

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Grouped-query attention of one sequence: q [n, H, D] against its cache k, v [KV, S, D] → [n, H, D].

        Plain bmm + softmax: torch's CPU flash kernel costs milliseconds per call at these tiny shapes.
        """
        n, hq, d = q.shape
        hkv, s = k.shape[0], k.shape[1]
        g = hq // hkv
        qg = q.transpose(0, 1).reshape(hkv, g * n, d)
        scores = torch.bmm(qg, k.transpose(1, 2)) * (d**-0.5)
        if mask is not None:
            scores = scores.view(hkv, g, n, s).masked_fill(~mask, float("-inf")).view(hkv, g * n, s)
        out = torch.bmm(torch.softmax(scores, dim=-1), v)
        return out.view(hq, n, d).transpose(0, 1)

    @torch.inference_mode()
    def forward(self, seqs: list[SeqInput]) -> list[torch.Tensor | None]:
        """Run one step; writes each sequence's K/V and advances ``cache.length``; logits (fp32, [vocab]) per seq."""
        c = self.config
        lengths = [len(s.tokens) for s in seqs]
        starts = [s.cache.length for s in seqs]
        ids = torch.tensor([t for s in seqs for t in s.tokens], dtype=torch.long)
        positions = torch.cat([torch.arange(p, p + n) for p, n in zip(starts, lengths, strict=True)])
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]
        masks = [
            None if n == 1 else torch.ones(n, p + n, dtype=torch.bool).tril(p)
            for p, n in zip(starts, lengths, strict=True)
        ]
        x = self.embed[ids]
        rows = x.shape[0]
        hq, hkv, d = c.num_heads, c.num_kv_heads, c.head_dim
        for layer, (ln1, wqkv, wo, ln2, wgu, wdown) in enumerate(self.layers):
            qkv = _linear(self._rms(x, ln1), wqkv)
            q = self._rope(qkv[:, : hq * d].view(rows, hq, d), cos, sin)
            k = self._rope(qkv[:, hq * d : (hq + hkv) * d].view(rows, hkv, d), cos, sin)
            v = qkv[:, (hq + hkv) * d :].view(rows, hkv, d)
            attn = torch.empty((rows, hq, d), dtype=x.dtype)
            offset = 0
            for s, p, n, mask in zip(seqs, starts, lengths, masks, strict=True):
                ck, cv = s.cache.k[layer], s.cache.v[layer]
                ck[:, p : p + n] = k[offset : offset + n].transpose(0, 1)
                cv[:, p : p + n] = v[offset : offset + n].transpose(0, 1)
                attn[offset : offset + n] = self._attend(q[offset : offset + n], ck[:, : p + n], cv[:, : p + n], mask)
                offset += n
            x = x + _linear(attn.view(rows, hq * d), wo)
            gate, up = _linear(self._rms(x, ln2), wgu).chunk(2, dim=-1)
            x = x + _linear(F.silu(gate) * up, wdown)
        for s, n in zip(seqs, lengths, strict=True):
            s.cache.length += n
        wanted = [i for i, s in enumerate(seqs) if s.want_logits]
        result: list[torch.Tensor | None] = [None] * len(seqs)
        if wanted:
            ends = torch.tensor(lengths).cumsum(0) - 1
            last = self._rms(x[ends[wanted]], self.norm)
            logits = _linear(last, self.head).float()
            for j, i in enumerate(wanted):
                result[i] = logits[j]
        return result
