"""Serving figures: one backbone answering T tasks from their prompt packs.

1. Throughput, in the process: T = 1, 5, 20 tasks mixed at random in one stream of images,
   run in batches of B, against the same images run one task at a time in full batches of B
   (each task's own per-image time, measured per distinct prompt shape). Packs cycle through
   prompt lengths 1, 5, 10, 50, shallow and deep. Mixed batches three ways: as they come (fifo)
   with lengths grouped into passes ("group") or padded and masked ("pad"), and as the server
   and `score_shards` batch them (schedule.py: one prompt length per batch where the waiting
   samples allow, several tasks each; 8 batches of look-ahead). The demo backbone
   (vit_tiny_p7_28, 28 px) and, with --vitb, random ViT-B/16 weights at 224 px. Measurements
   take turns round by round; the best round counts (shared machine).
2. Memory: the bank of T = 20 packs (one backbone + stacked prompts and heads) against T
   separate PromptedViTs (load_prompt_pack per pack): tensor bytes, and resident-memory growth
   of this process while each is built (demo backbone). ViT-B's separate figure is T times
   one model's tensor bytes (20 copies of 86 M parameters are not built).
3. Latency and throughput over HTTP under a bounded load from a local client (asyncio +
   httpx, C requests in flight, a fixed number of requests): `spt serve` (FastAPI + uvicorn +
   DynamicBatcher) with and without batching, and, with --litserve DIR (a folder holding the
   litserve package, e.g. `pip install --target DIR litserve pyzmq --no-deps`), the same bank
   behind LitServe's batching (benchmarks/serving_litserve.py). The client shares the 2 cores.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_serving.py [--vitb] [--litserve DIR]
     -> benchmarks/results/serving.json
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "serving.json"
DEMO = ROOT / "spt_dist" / "assets" / "vit_tiny_p7_28_fmnist04.safetensors"
LENGTHS = (1, 5, 10, 50)


def write_packs(folder: Path, cfg_overrides: List[str], backbone_file: str, n: int, classes: int = 10) -> Dict[str, str]:
    """n packs with random prompts and heads; pack i: length LENGTHS[i % 4], deep for i // 4 even."""
    from spt_dist.config import load_config
    from spt_dist.engine.export import export_prompt_pack, pack_metadata
    from spt_dist.model import build_backbone, input_spec, weights_hash

    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), cfg_overrides + [f"model.checkpoint={backbone_file}"])
    backbone = build_backbone(cfg.model.name, checkpoint=backbone_file)
    h, d, depth = weights_hash(backbone), backbone.embed_dim, len(backbone.blocks)
    packs, g = {}, torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p, deep = LENGTHS[i % 4], (i // 4) % 2 == 0
        meta = pack_metadata(cfg, h, "token", [f"c{j}" for j in range(classes)], input_spec(cfg), torch.float32)
        meta.update(prompt_length=str(p), deep=json.dumps(deep), method="vpt")
        tensors = {"prompts": torch.randn(depth if deep else 1, p, d, generator=g) * 0.1,
                   "head.weight": torch.randn(classes, d, generator=g) * 0.02, "head.bias": torch.zeros(classes)}
        packs[f"task{i:02d}"] = str(export_prompt_pack(folder / f"task{i:02d}.safetensors", tensors, meta))
    return packs


def throughput(backbone_file: str, packs: Dict[str, str], batch: int, n_batches: int, rounds: int) -> dict:
    from spt_dist.serve import PromptBank
    from spt_dist.serve.schedule import scheduled

    banks = {mode: PromptBank.open(backbone_file, packs, lengths=mode) for mode in ("group", "pad")}
    bank = banks["group"]
    s = int(bank.inputs["img_size"])
    x = torch.randn(batch, 3, s, s)
    names = list(packs)
    shape = {t.name: (t.prompt_length, t.deep) for t in bank.tasks()}
    first = {}  # one task per distinct prompt shape: its per-image time stands for all of that shape
    for name in names:
        first.setdefault(shape[name], name)
    out = {}
    for T in (1, 5, 20):
        rng = random.Random(T)
        stream = [rng.choice(names[:T]) for _ in range(batch * n_batches)]
        fifo = [stream[i:i + batch] for i in range(0, len(stream), batch)]  # as they come
        by_length = list(scheduled(stream, batch, key=bank.prompt_length))  # as the server batches
        runs = {"fifo_group": ("group", fifo), "fifo_pad": ("pad", fifo), "scheduled": ("group", by_length)}
        times = {**{k: [] for k in runs}, **{k: [] for k in first if k in {shape[n] for n in names[:T]}}}
        for r in range(rounds + 1):  # round 0 warms up
            for key in times:
                t0 = time.perf_counter()
                if key in runs:
                    mode, batches = runs[key]
                    for tasks in batches:
                        banks[mode].logits(x[:len(tasks)], tasks)
                    per_image = (time.perf_counter() - t0) / len(stream)
                else:  # as many batches as the mixed stream: timings of the same length compare
                    for _ in range(n_batches):
                        bank.logits(x, [first[key]] * batch)
                    per_image = (time.perf_counter() - t0) / (batch * n_batches)
                if r:
                    times[key].append(per_image)
        best = {k: min(v) for k, v in times.items()}
        single = float(np.mean([best[shape[t]] for t in stream]))  # the same images, each task alone
        row = {"single_images_per_s": round(1 / single, 1)}
        for k, (_, batches) in runs.items():
            row[f"{k}_images_per_s"] = round(1 / best[k], 1)
            row[f"{k}_over_single"] = round(single / best[k], 3)
        row["passes_per_batch_fifo_group"] = round(float(np.mean([len({shape[t][0] for t in b}) for b in fifo])), 2)
        row["passes_per_batch_scheduled"] = round(float(np.mean([len({shape[t][0] for t in b}) for b in by_length])), 2)
        row["tasks_per_batch_scheduled"] = round(float(np.mean([len(set(b)) for b in by_length])), 2)
        out[f"T={T}"] = row
        print(f"  T={T}: {row}", flush=True)
    return out


def memory(backbone_file: str, packs: Dict[str, str], build_separate: bool) -> dict:
    from spt_dist.engine.export import load_prompt_pack
    from spt_dist.serve import PromptBank

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    bank = PromptBank.open(backbone_file, packs)
    bank_rss = proc.memory_info().rss - rss0
    mem = bank.memory_bytes()
    one_model, _ = load_prompt_pack(next(iter(packs.values())), backbone_file)
    model_bytes = sum(t.numel() * t.element_size() for t in one_model.parameters())
    out = {"tasks": len(packs), "bank_tensor_bytes": mem["backbone"] + mem["stack"], "bank_backbone_bytes":
           mem["backbone"], "bank_stack_bytes": mem["stack"], "one_model_tensor_bytes": model_bytes}
    if build_separate:
        rss1 = proc.memory_info().rss
        models = [load_prompt_pack(p, backbone_file)[0] for p in packs.values()]
        out["separate_rss_growth_bytes"] = proc.memory_info().rss - rss1
        out["bank_rss_growth_bytes"] = bank_rss
        out["separate_tensor_bytes"] = sum(t.numel() * t.element_size() for m in models for t in m.parameters())
        del models
    else:
        out["separate_tensor_bytes"] = model_bytes * len(packs)  # computed: T copies are not built
    out["separate_over_bank"] = round(out["separate_tensor_bytes"] / out["bank_tensor_bytes"], 2)
    return out


def _png(seed: int, size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def _load(url: str, names: List[str], images: List[bytes], concurrency: int, total: int, litserve: bool) -> dict:
    import httpx

    latencies, errors, sem, rng = [], [], asyncio.Semaphore(concurrency), random.Random(0)
    jobs = [(rng.choice(names), images[i % len(images)]) for i in range(total)]
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(task: str, data: bytes) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    if litserve:
                        r = await client.post(f"{url}/predict", json={"task": task, "top_k": 1,
                                                                       "image": base64.b64encode(data).decode()})
                    else:
                        r = await client.post(f"{url}/v1/tasks/{task}/classify", params={"top_k": 1}, content=data)
                    r.raise_for_status()
                except httpx.HTTPError as exc:  # counted and reported, not a crash of the benchmark
                    errors.append(type(exc).__name__)
                    return
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(one(*jobs[i]) for i in range(min(8, total))))  # warm-up, not counted
        latencies.clear()
        errors.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(t, d) for t, d in jobs))
        wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000.0
    return {"concurrency": concurrency, "requests": total, "answered": len(latencies),
            "errors": {e: errors.count(e) for e in sorted(set(errors))},
            "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None}


def _start(cmd: List[str], env: dict, ready: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: List[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    deadline = time.time() + 120
    while time.time() < deadline and not any(ready in l for l in lines):
        if proc.poll() is not None:
            raise RuntimeError("".join(lines))
        time.sleep(0.1)
    proc.lines = lines
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


def serving(packs: Dict[str, str], litserve_dir: str, loads: List[tuple]) -> dict:
    import httpx

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    images = [_png(i, 28) for i in range(64)]
    names, out = list(packs), {}
    specs = [f"{k}={v}" for k, v in packs.items()]
    for label, max_batch in (("fastapi_batched", 32), ("fastapi_unbatched", 1)):
        port = _free_port()
        proc = _start([sys.executable, "-m", "spt_dist.cli", "serve", str(DEMO), *specs, "--port", str(port),
                       "--max-batch-size", str(max_batch), "--max-wait-ms", "5"], env, "listening on")
        url = f"http://127.0.0.1:{port}"
        try:
            runs = []
            for c, total in loads:
                before = httpx.get(f"{url}/metrics").json()["batches"]
                res = asyncio.run(_load(url, names, images, c, total, False))
                after = httpx.get(f"{url}/metrics").json()
                b = after["batches"]
                res["mean_batch_size"] = round((b["images"] - before["images"]) / max(1, b["count"] - before["count"]), 2)
                res["batches_with_several_tasks"] = sum(v for k, v in b["tasks_per_batch"].items() if int(k) > 1) - sum(
                    v for k, v in before["tasks_per_batch"].items() if int(k) > 1)
                runs.append(res)
                print(f"  {label}: {res}", flush=True)
            out[label] = runs
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    for label, fast in (("litserve_batched", "0"), ("litserve_batched_zmq", "1")) if litserve_dir else ():
        port, log = _free_port(), tempfile.mktemp(suffix=".batches")
        lenv = dict(env, PYTHONPATH=f"{litserve_dir}{os.pathsep}{ROOT}", SPT_BATCH_LOG=log, SPT_MAX_BATCH="32",
                    SPT_MAX_WAIT_MS="5", SPT_FAST_QUEUE=fast)
        proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "serving_litserve.py"), str(port), str(DEMO),
                                 *specs], cwd=ROOT, env=lenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # its own group: LitServe's workers end with it
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{url}/health")
            runs = []
            for c, total in loads:
                seen = len(Path(log).read_text().splitlines()) if Path(log).exists() else 0
                res = asyncio.run(_load(url, names, images, c, total, True))
                sizes = [tuple(map(int, l.split())) for l in Path(log).read_text().splitlines()[seen:]]
                res["mean_batch_size"] = round(float(np.mean([s for s, _ in sizes])), 2) if sizes else None
                res["batches_with_several_tasks"] = sum(1 for _, k in sizes if k > 1)
                runs.append(res)
                print(f"  {label}: {res}", flush=True)
            out[label] = runs
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:  # LitServe's server processes can outlive their parent (seen spinning a core)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vitb", action="store_true", help="also the throughput of random ViT-B/16 weights (slow)")
    ap.add_argument("--litserve", default="", help="folder holding the litserve package, for the comparison")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--sections", default="throughput,memory,http",
                    help="which parts to measure; the others keep their figures from --out")
    args = ap.parse_args()
    out, sections = Path(args.out), args.sections.split(",")
    result = json.loads(out.read_text()) if out.is_file() and len(sections) < 3 else {}
    result.update(machine=f"{os.cpu_count()} cores (shared), torch threads {torch.get_num_threads()}, no GPU, "
                          f"load average {os.getloadavg()[0]:.1f} at the start",
                  prompt_lengths=list(LENGTHS), torch=torch.__version__)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(key: str, value: dict) -> None:  # after each part: a crash keeps what is done
        result[key] = value
        out.write_text(json.dumps(result, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = write_packs(tmp / "demo", [], str(DEMO), 20)
        if "throughput" in sections:
            print("throughput, demo backbone", flush=True)
            save("throughput_vit_tiny_p7_28", {"batch": 64, **throughput(str(DEMO), demo, 64, 10, 5)})
        if "memory" in sections:
            save("memory_vit_tiny_p7_28", memory(str(DEMO), demo, build_separate=True))
            print(f"  memory: {result['memory_vit_tiny_p7_28']}", flush=True)
        if "http" in sections:
            print("serving over HTTP, demo backbone, 20 tasks", flush=True)
            save("http_vit_tiny_p7_28_20_tasks", serving(demo, args.litserve, [(1, 200), (8, 600), (32, 1200)]))
        if args.vitb:
            from spt_dist.model import build_backbone, save_backbone_weights

            torch.manual_seed(0)
            vitb = save_backbone_weights(build_backbone("vit_b16"), tmp / "vit_b16_random.safetensors")
            packs = write_packs(tmp / "vitb", ["model.name=vit_b16"], vitb, 20)
            print("throughput, ViT-B/16", flush=True)
            save("throughput_vit_b16", {"batch": 16, **throughput(vitb, packs, 16, 2, 2)})
            save("memory_vit_b16", memory(vitb, packs, build_separate=False))
            print(f"  memory: {result['memory_vit_b16']}", flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
