"""The LLM engine in-process (no server): single-stream tok/s and TTFT, aggregate tok/s under concurrency.

    python -m benchmarks.llm_engine                       # SmolLM2 (converted once, cached), fp32, 1/4/16 streams
    python -m benchmarks.llm_engine --concurrency 1 --max-tokens 32 --dtype bfloat16
    python -m benchmarks.llm_engine --weights fp32,int8 --max-tokens 32   # int8 beside fp32, ratios at the end

Prompt: 32 tokens, greedy, ``ignore_eos``, ``--max-tokens`` (default 128) new tokens per stream. TTFT is arrival to
the first chunk (p50, p95, max); ITL = (e2e - TTFT) / (tokens - 1) per request, as aiperf defines it (p50, p99);
aggregate tok/s = all generated tokens over the wall time of the whole level. One warm-up generation first.
``--weights int8`` serves the int8 version of the same directory (``lmaas.server.llm.quant``, quantised once and
cached beside it); with several weight formats each runs in turn in the same process and the last table gives
each one's ratio to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

__all__ = ["main"]

_TEXT = (
    "Paris, the capital of France, has a history that spans more than two thousand years, from a Celtic "
    "settlement on the banks of the Seine to the Roman town of Lutetia and the seat of the kings of France."
)


async def _one(engine: object, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    from lmaas.server.llm.types import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async for chunk in engine.generate(prompt, params):  # type: ignore[attr-defined]
        if not ttft:
            ttft = time.perf_counter() - started
        tokens = chunk.completion_tokens
    return ttft, time.perf_counter() - started, tokens


async def _level(engine: object, prompt: str, streams: int, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(_one(engine, prompt, max_tokens) for _ in range(streams)))
    wall = time.perf_counter() - started
    ttfts = [r[0] for r in results]
    itls = [(e2e - ttft) / max(n - 1, 1) for ttft, e2e, n in results]
    return {
        "streams": streams,
        "agg_tok_s": sum(r[2] for r in results) / wall,
        "per_stream_tok_s": statistics.mean(r[2] / r[1] for r in results),
        "ttft_ms_p50": statistics.median(ttfts) * 1000,
        "ttft_ms_p95": _quantile(ttfts, 0.95) * 1000,
        "ttft_ms_max": max(ttfts) * 1000,
        "itl_ms_p50": statistics.median(itls) * 1000,
        "itl_ms_p99": _quantile(itls, 0.99) * 1000,
    }


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), also for one value."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _int8_of(directory: Path) -> Path:
    """The int8 version of an fp32 directory, quantised once into a sibling ``<name>-int8``."""
    import json

    from lmaas.server.llm.quant import is_int8, quantize_directory

    if is_int8(json.loads((directory / "config.json").read_text())):
        return directory
    target = directory.with_name(directory.name + "-int8")
    if not (target / "model.safetensors").is_file():
        partial = directory.with_name(f".{directory.name}-int8.partial")
        quantize_directory(directory, partial)
        partial.rename(target)
    return target


async def _run(args: argparse.Namespace) -> list[dict[str, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from llm_support import smollm2_dir

    base = Path(args.model) if args.model else smollm2_dir()
    table: dict[str, list[dict[str, float]]] = {}
    for weights in args.weights:
        directory = _int8_of(base) if weights == "int8" else base
        print(f"# weights={weights}  {directory}", flush=True)
        table[weights] = await _run_one(args, directory)
    if len(table) > 1:
        first, *others = table
        for name in others:
            for ref, row in zip(table[first], table[name], strict=True):
                print(f"streams={int(row['streams']):>3}  {name}/{first} aggregate tok/s "
                      f"{row['agg_tok_s'] / ref['agg_tok_s']:.2f}x  TTFT p50 "
                      f"{row['ttft_ms_p50'] / ref['ttft_ms_p50']:.2f}x", flush=True)
    return [row for rows in table.values() for row in rows]


async def _run_one(args: argparse.Namespace, directory: Path) -> list[dict[str, float]]:
    from lmaas.server.llm.engine import EngineSettings, LLMEngine

    settings = EngineSettings(torch_threads=args.threads, dtype=args.dtype, kv_cache_mb=args.kv_cache_mb)
    engine = LLMEngine(directory, name="bench", settings=settings)
    try:
        ids = engine.codec.encode(_TEXT)[:32]
        prompt = engine.codec.decode(ids)
        await _one(engine, prompt, 8)  # warm-up
        rows = []
        for streams in args.concurrency:
            row = await _level(engine, prompt, streams, args.max_tokens)
            rows.append(row)
            print(
                f"streams={streams:>3}  aggregate {row['agg_tok_s']:7.1f} tok/s  per stream "
                f"{row['per_stream_tok_s']:6.1f} tok/s  TTFT p50 {row['ttft_ms_p50']:7.1f} ms "
                f"p95 {row['ttft_ms_p95']:7.1f} (max {row['ttft_ms_max']:7.1f})  ITL p50 {row['itl_ms_p50']:6.1f} "
                f"p99 {row['itl_ms_p99']:6.1f} ms",
                flush=True,
            )
        return rows
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an LLM version directory (default: SmolLM2, converted once)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = engine default")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--kv-cache-mb", type=int, default=256)
    parser.add_argument("--weights", type=lambda s: s.split(","), default=["fp32"],
                        help="fp32, int8 or both (fp32,int8): int8 = the directory quantised (cached)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.weights) - {"fp32", "int8"})
    if unknown:
        parser.error(f"--weights: unknown {', '.join(unknown)} (fp32, int8)")
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
