"""The runner's arithmetic: a Llama forward in plain torch over a version's safetensors, with a paged KV cache.

No transformers at serve time. One forward takes every sequence of a step packed together: the linear layers run
on all their rows at once (that is the batching gain: weights are read once per step).

**KV cache and attention.** All sequences' keys and values live in one :class:`KVPool` (per layer, blocks of
:data:`BLOCK` = 32 positions; a sequence holds a block table sized for its whole reservation). Per layer, one
``index_copy_`` writes the K|V of every row of the step. Attention is batched by *group*: the sequences of a step
with the same (rows this step, cache blocks) — all decodes of similar length, or equal prefill chunks — gather
their blocks with one ``index_select`` and run two batched matmuls, a mask and a softmax together, so a step of 16
decodes costs a handful of ops per layer instead of ~10 per sequence per layer (aten ops of a 16-decode step,
nested ones included, torch.profiler: 30.2k with per-sequence attention, 8.4k batched). A sequence's attention
length is its own length rounded up to whole blocks, never the longest in the batch: the masked tail scores -inf
and its V are zeros (blocks are zeroed when handed out), so no padding leaks between sequences.

**Batch invariance.** fp32 GEMM kernels pick their reduction order by the row count M: on this CPU, a row's result
for M=1 differs from M≥2 in the last bits, and M=17..28 differs from M≤16 for some shapes, which is enough to flip a
greedy token after a few dozen steps. So :func:`_mm` always multiplies in blocks of 2..16 rows (a lone row is
padded to two): measured, a row's result is then bit-identical whatever else is in the batch. Weights are stored
transposed and contiguous (``x @ Wt``), the layout for which that holds. Attention: a batched matmul over G
sequences computes each [g*n, D] x [D, S] product as it computes a batch of one (the batch dimension only loops),
and softmax reduces each row on its own, so a sequence's bits depend only on its own (n, S), which depend only on
itself: its length, and prefill chunk boundaries that the scheduler cuts from the prompt alone. Measured with
``torch.equal`` over lengths 1..100 across block boundaries, batch mixes of 1..9 sequences, fp32 and int8, 1 and
2 threads (tests/server/llm/test_batched_attention.py).

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

__all__ = ["BLOCK", "KVCache", "KVPool", "Llama", "LlamaConfig", "SeqInput"]

_BLOCK = 16  # GEMM row block (_mm)
#: KV positions per cache block; a sequence's attention length is its own length rounded up to a multiple of it.
BLOCK = 32


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


class KVPool:
    """Every sequence's keys and values in one tensor: per layer, ``2*KV`` heads x blocks of ``BLOCK`` positions.

    Laid out [layer, k|v x kv-head, block, BLOCK x head_dim] so that, per layer, one ``index_copy_`` writes the K
    and V of every row of a step, and one ``index_select`` of a group's block tables gathers its K and V already
    in the [KV, sequence, position, D] order the batched attention multiplies. A block is zeroed when it is handed
    out (masked positions hold zeros, never stale NaNs). The engine sizes the pool once by its KV budget (pages
    are touched only as blocks are used); used standalone it grows on demand.
    """

    def __init__(self, config: LlamaConfig, dtype: torch.dtype, blocks: int = 0) -> None:
        self.config, self.dtype = config, dtype
        self.tensor = torch.empty((config.num_layers, 2 * config.num_kv_heads, 0, BLOCK * config.head_dim), dtype=dtype)
        self._free: list[int] = []
        self.grow(blocks)

    @property
    def blocks(self) -> int:
        return int(self.tensor.shape[2])

    def grow(self, blocks: int) -> None:
        """At least ``blocks`` blocks in all (never shrinks: blocks in use keep their place)."""
        old = self.blocks
        if blocks <= old:
            return
        bigger = torch.empty((*self.tensor.shape[:2], blocks, self.tensor.shape[3]), dtype=self.dtype)
        bigger[:, :, :old] = self.tensor
        self.tensor = bigger
        self._free.extend(range(blocks - 1, old - 1, -1))  # a stack: low block numbers first

    def allocate(self, blocks: int) -> list[int]:
        if blocks > len(self._free):
            self.grow(max(self.blocks * 2, self.blocks + blocks - len(self._free)))
        taken = [self._free.pop() for _ in range(blocks)]
        if taken:
            self.tensor.index_fill_(2, torch.tensor(taken, dtype=torch.long), 0)
        return taken

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))

    def available(self) -> int:
        return len(self._free)


class KVCache:
    """One sequence's blocks in the pool, allocated once for its whole reservation (prompt + max new tokens)."""

    __slots__ = ("blocks", "length", "pool")

    def __init__(self, pool: KVPool, capacity: int) -> None:
        self.pool = pool
        self.blocks = pool.allocate(-(-capacity // BLOCK))
        self.length = 0  # tokens whose K/V are written

    @property
    def capacity(self) -> int:
        return len(self.blocks) * BLOCK

    def free(self) -> None:
        """Give the blocks back (idempotent; also done when the cache is collected)."""
        blocks, self.blocks = self.blocks, []
        self.pool.release(blocks)

    def __del__(self) -> None:
        self.free()


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
        self.kv_pool = KVPool(c, dtype)
        self._buffer = torch.empty(0, dtype=dtype)  # the step's gathered K/V (_scratch)

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
        return KVCache(self.kv_pool, capacity)

    def reserve_kv(self, tokens: int) -> int:
        """Size the KV pool for ``tokens`` positions (rounded down to whole blocks); returns the blocks it holds."""
        self.kv_pool.grow(max(tokens // BLOCK, 1))
        return self.kv_pool.blocks

    def _scratch(self, numel: int) -> torch.Tensor:
        if self._buffer.numel() < numel:
            self._buffer = torch.empty(numel, dtype=self.dtype)
        return self._buffer[:numel]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps))

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _plan(self, seqs: list[SeqInput], order: list[int]) -> tuple[torch.Tensor, list[_Group]]:
        """Per step (not per layer): the pool slot of every row's K/V and the attention groups, rows in ``order``."""
        slots: list[int] = []
        groups: list[_Group] = []
        row = 0
        for i in order:
            s = seqs[i]
            p, n = s.cache.length, len(s.tokens)
            blocks = s.cache.blocks
            slots.extend(blocks[pos // BLOCK] * BLOCK + pos % BLOCK for pos in range(p, p + n))
            nb = -(-(p + n) // BLOCK)
            if groups and groups[-1].key == (n, nb):
                g = groups[-1]
            else:
                g = _Group((n, nb), row)
                groups.append(g)
            g.tables.extend(blocks[:nb])
            g.starts.append(p)
            row += n
        for g in groups:
            g.finish(self.config.num_heads // self.config.num_kv_heads)
        return torch.tensor(slots, dtype=torch.long), groups

    @torch.inference_mode()
    def forward(self, seqs: list[SeqInput]) -> list[torch.Tensor | None]:
        """Run one step; writes each sequence's K/V and advances ``cache.length``; logits (fp32, [vocab]) per seq.

        Rows are reordered so that sequences with the same (tokens this step, cache blocks) sit together: each
        such group runs its attention in a handful of batched ops per layer (module doc), whatever its size.
        """
        c = self.config
        for s in seqs:
            if s.cache.length + len(s.tokens) > s.cache.capacity:
                raise ValueError(f"KV cache overflow: {s.cache.length} + {len(s.tokens)} > {s.cache.capacity}")
        order = sorted(
            range(len(seqs)),
            key=lambda i: (len(seqs[i].tokens), -(-(seqs[i].cache.length + len(seqs[i].tokens)) // BLOCK)),
        )
        slots, groups = self._plan(seqs, order)
        ids = torch.tensor([t for i in order for t in seqs[i].tokens], dtype=torch.long)
        positions = torch.cat(
            [torch.arange(seqs[i].cache.length, seqs[i].cache.length + len(seqs[i].tokens)) for i in order]
        )
        x = self.embed[ids]
        rows = x.shape[0]
        hq, hkv, d = c.num_heads, c.num_kv_heads, c.head_dim
        g = hq // hkv
        # Per step, not per layer: the q heads' rotation carries the 1/sqrt(d) of the scores (exact for d = 64, a
        # power of two), so q needs no scaling op per layer.
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]
        scale = torch.tensor([d**-0.5] * hq + [1.0] * hkv, dtype=x.dtype)[None, :, None]
        cos, sin = cos * scale, sin * scale
        pool = self.kv_pool.tensor
        for layer, (ln1, wqkv, wo, ln2, wgu, wdown) in enumerate(self.layers):
            qkv = _linear(self._rms(x, ln1), wqkv)
            # q and k rotated together, written back so that qkv[:, q:] is the [rows, 2*KV, D] K|V source.
            qkv[:, : (hq + hkv) * d] = self._rope(qkv[:, : (hq + hkv) * d].view(rows, hq + hkv, d), cos, sin).view(
                rows, (hq + hkv) * d
            )
            q = qkv[:, : hq * d]
            kv = pool[layer]  # [2*KV, blocks, BLOCK*D]
            kv.view(2 * hkv, -1, d).index_copy_(1, slots, qkv[:, hq * d :].view(rows, 2 * hkv, d).transpose(0, 1))
            attn = torch.empty((rows, hq * d), dtype=x.dtype)
            for grp in groups:
                n, nb = grp.key
                size = len(grp.starts)
                span = nb * BLOCK
                # Into a reused buffer: a fresh multi-MB tensor per layer costs its page faults every time.
                gathered = self._scratch(2 * hkv * size * span * d).view(2 * hkv, size * nb, BLOCK * d)
                cache = torch.index_select(kv, 1, grp.table, out=gathered).view(2, hkv, size, span, d)
                qg = q[grp.row : grp.row + size * n].view(size, n, hkv, g, d).permute(2, 0, 3, 1, 4)
                scores = torch.matmul(qg.reshape(hkv, size, g * n, d), cache[0].transpose(-1, -2))
                scores.masked_fill_(grp.mask, float("-inf"))
                out = torch.matmul(torch.softmax(scores, dim=-1), cache[1])  # [KV, size, g*n, D]
                attn[grp.row : grp.row + size * n].view(size, n, hkv, g, d).copy_(
                    out.view(hkv, size, g, n, d).permute(1, 3, 0, 2, 4)
                )
            x = x + _linear(attn, wo)
            gate, up = _linear(self._rms(x, ln2), wgu).chunk(2, dim=-1)
            x = x + _linear(F.silu(gate) * up, wdown)
        ends: list[int] = []
        row = 0
        for i in order:
            s = seqs[i]
            s.cache.length += len(s.tokens)
            row += len(s.tokens)
            if s.want_logits:
                ends.append(row - 1)
        result: list[torch.Tensor | None] = [None] * len(seqs)
        if ends:
            last = self._rms(x[torch.tensor(ends, dtype=torch.long)], self.norm)
            logits = _linear(last, self.head).float()
            wanted = [i for i in order if seqs[i].want_logits]
            for j, i in enumerate(wanted):
                result[i] = logits[j]
        return result


class _Group:
    """Sequences of one step with the same rows (n) and cache blocks (nb): one batched attention per layer."""

    __slots__ = ("key", "mask", "row", "starts", "table", "tables")

    def __init__(self, key: tuple[int, int], row: int) -> None:
        self.key, self.row = key, row
        self.tables: list[int] = []
        self.starts: list[int] = []
        self.table = self.mask = torch.empty(0)

    def finish(self, heads_per_kv: int) -> None:
        """Block index [size * nb] and the mask [size, g*n, span]: True where query i may not see position j."""
        n, nb = self.key
        self.table = torch.tensor(self.tables, dtype=torch.long)
        starts = torch.tensor(self.starts, dtype=torch.long)
        visible = (starts[:, None] + torch.arange(n))[:, :, None]  # a query at position p sees 0..p
        mask = torch.arange(nb * BLOCK)[None, None, :] > visible  # [size, n, span]
        self.mask = mask[:, None].expand(-1, heads_per_kv, -1, -1).reshape(len(self.starts), heads_per_kv * n, -1)
