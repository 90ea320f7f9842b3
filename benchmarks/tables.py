"""BENCHMARKS.md's figure table, regenerated from the JSON the benchmark scripts write.

Each row names one figure: the results file, the path of keys inside it, the goal the issue or
the paper sets, and the script that produces it. A file that is not there yet gives the row
"not measured" and the command that measures it; nothing is typed in by hand.

Run: python benchmarks/tables.py [--check]   (rewrites the block between the markers in
BENCHMARKS.md; --check exits 1 when the file is not up to date with the JSON)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- figures:begin (benchmarks/tables.py) -->", "<!-- figures:end -->"


class Figure(NamedTuple):
    area: str
    what: str
    file: str
    keys: Sequence[Any]
    goal: str
    script: str
    unit: str = ""


FIGURES: List[Figure] = [
    Figure("data", "exact-shuffle reader vs torchvision ImageFolder, 224 px JPEGs (images/s ratio)", "data.json",
           ("cases", 0, "exact_vs_imagefolder"), ">= 1", "bench_data.py", "x"),
    Figure("data", "random access by index offsets vs wids (samples/s ratio)", "data.json",
           ("cases", 0, "access_only", "offsets_vs_wids"), ">= 1", "bench_data.py", "x"),
    Figure("data", "class-ordered folder, full FT top-1: exact shuffle", "mixing.json",
           ("methods", "full", "exact shuffle (default)", "top1"), "= plain loop", "bench_mixing.py", "%"),
    Figure("data", "class-ordered folder, full FT top-1: plain PyTorch loop", "mixing.json",
           ("methods", "full", "plain PyTorch loop, randperm every epoch", "top1"), "reference", "bench_mixing.py", "%"),
    Figure("data", "class-ordered folder, full FT top-1: a stream reader reading one shard at a time (counter-example)", "mixing.json",
           ("methods", "full", "stream, 1 shard at a time (previous reader)", "top1"), "(unmixed)", "bench_mixing.py",
           "%"),
    Figure("engine", "VPT-deep p=50 s/step over full fine-tuning, ViT-S/16 224 px", "engine.json",
           ("step_time", "over_full", "deep_p50"), "< 1", "bench_engine.py", "x"),
    Figure("engine", "full FT over VPT-deep optimizer state, ViT-H/14", "engine.json",
           ("capacities_vpt_deep_p50_200_classes", "vit_h14", "ratio_full_over_vpt"), "", "bench_engine.py", "x"),
    Figure("engine", "engine step over a plain PyTorch loop, same model and batch (s/step ratio)", "step.json",
           ("summary", "engine_over_plain_max"), "<= 1.03", "bench_step.py", "x"),
    Figure("engine", "linear probe, 100 epochs: without / with the feature cache (demo backbone)", "caches.json",
           ("feature_cache_demo_backbone", "speedup"), ">= 20", "bench_caches.py", "x"),
    Figure("engine", "linear probe, 100 epochs: without / with the feature cache (ViT-S/16, 224 px)", "caches.json",
           ("feature_cache_vit_s16", "speedup"), ">= 20", "bench_caches.py", "x"),
    Figure("engine", "training samples/s with / without the decoded-sample cache, after epoch 1, 0 workers",
           "caches.json", ("decoded_cache", "end_to_end_ratio_w0"), "> 1", "bench_caches.py", "x"),
    Figure("engine", "training samples/s with / without the decoded-sample cache, after epoch 1, 2 workers",
           "caches.json", ("decoded_cache", "end_to_end_ratio_w2"), "> 1", "bench_caches.py", "x"),
    Figure("engine", "packed G=8 vs 8 runs one after another, wall time per config", "packed.json",
           ("ratio",), ">= 1.5 (CPU)", "bench_packed.py", "x"),
    Figure("init", "SPT prototype init time over one training epoch", "prompt_init.json",
           ("summary", "init_over_epoch"), "small", "bench_prompt_init.py", "x"),
    Figure("reliability", "injected faults held (every try of every fault)", "faults.json",
           ("rows",), "all", "bench_faults.py"),
    Figure("serving", "mixed T=20 over single-task throughput, demo backbone (scheduled: offline scoring, or a server with 8 batches queued)", "serving.json",
           ("throughput_vit_tiny_p7_28", "T=20", "scheduled_over_single"), ">= 0.9", "bench_serving.py", "x"),
    Figure("serving", "mixed T=5 over single-task throughput, demo backbone (scheduled: offline scoring, or a server with 8 batches queued)", "serving.json",
           ("throughput_vit_tiny_p7_28", "T=5", "scheduled_over_single"), ">= 0.9", "bench_serving.py", "x"),
    Figure("serving", "20 separate models over the bank, tensor bytes (demo backbone)", "serving.json",
           ("memory_vit_tiny_p7_28", "separate_over_bank"), "", "bench_serving.py", "x"),
    Figure("serving", "HTTP requests/s, 8 in flight, 20 tasks: spt serve (FastAPI + uvicorn, batching)", "serving.json",
           ("http_vit_tiny_p7_28_20_tasks", "fastapi_batched", 1, "requests_per_s"), "", "bench_serving.py"),
    Figure("serving", "HTTP p99 latency (ms), 8 in flight: spt serve", "serving.json",
           ("http_vit_tiny_p7_28_20_tasks", "fastapi_batched", 1, "p99_ms"), "", "bench_serving.py"),
    Figure("serving", "HTTP requests/s, 8 in flight: the same bank behind LitServe's batching", "serving.json",
           ("http_vit_tiny_p7_28_20_tasks", "litserve_batched", 1, "requests_per_s"), "", "bench_serving.py"),
]


def lookup(data: Any, keys: Sequence[Any]) -> Any:
    for key in keys:
        data = data[key]
    return data


def render_value(fig: Figure, value: Any) -> str:
    if fig.file == "faults.json":  # rows of {fault, tries, held}
        held, tries = sum(r["held"] for r in value), sum(r["tries"] for r in value)
        return f"{held} of {tries} tries, {len(value)} faults"
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return f"{value}{' ' + fig.unit if fig.unit == '%' else fig.unit}"


def measured(fig: Figure) -> Optional[str]:
    path = RESULTS / fig.file
    if not path.is_file():
        return None
    try:
        return render_value(fig, lookup(json.loads(path.read_text()), fig.keys))
    except (KeyError, IndexError, TypeError):
        return None


def table() -> str:
    lines = ["| area | figure | goal | measured | script -> results |", "|---|---|---|---|---|"]
    for fig in FIGURES:
        value = measured(fig) or f"not measured: `python benchmarks/{fig.script}`"
        lines.append(f"| {fig.area} | {fig.what} | {fig.goal} | {value} | "
                     f"[`{fig.script}`](benchmarks/{fig.script}) -> [`{fig.file}`](benchmarks/results/{fig.file}) |")
    return "\n".join(lines)


def updated(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{TARGET} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when BENCHMARKS.md differs from the JSON")
    args = ap.parse_args(argv)
    text = TARGET.read_text()
    new = updated(text)
    if args.check:
        return 0 if new == text else 1
    TARGET.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
