"""Serving figures: one backbone answering T tasks from their prompt packs.

1. Throughput, in the process: T = 1, 5, 20 tasks mixed at random in one stream of images,
   run in batches of B, against the same images run one task at a time in full batches of B
   (each task's own per-image time, measured per distinct prompt shape). Packs cycle through
   prompt lengths 1, 5, 10, 50, shallow and deep. Mixed batches three ways: as they come (fifo)
   with lengths grouped into passes ("group") or padded and masked ("pad"), and as the server
   and `score_shards` batch them (schedule.py: one prompt length per batch where the waiting
   samples allow, several tasks each; 8 batches of look-ahead). Each row also gives the
   schedule's backbone passes against the fewest any grouping of that stream can have (per
   prompt length, its sample count over B, rounded up), and the load average when it ran.
   The demo backbone (vit_tiny_p7_28, 28 px) and, with --vitb, random ViT-B/16 weights at
   224 px. Measurements take turns round by round; the best round counts (shared machine).
   On the CPU the time is this process's CPU time, with one torch thread (OMP_NUM_THREADS=1):
   on a machine whose cores other processes load, wall time and extra threads measure the
   load as much as the model (a T = 1 row, the same work both ways, read 1.07-1.19x by wall
   time at load 10); on a GPU, wall time.
2. Memory, T = 1, 5, 20: the bank of T packs (one backbone + stacked prompts and heads)
   against T separate PromptedViTs (load_prompt_pack per pack): tensor bytes, and for the demo
   backbone at T = 20 the resident-memory growth of this process while each is built; on CUDA
   also the device memory the bank allocates. ViT-B's separate figure is the sum of the T
   models' tensor bytes, computed (20 copies of 86 M parameters are not built).
3. Latency and throughput over HTTP under a bounded load from a local client (asyncio +
   httpx, C requests in flight, a fixed number of requests): `spt serve` (FastAPI + uvicorn +
   DynamicBatcher) with and without batching, and, with --litserve DIR (a folder holding the
   litserve package, e.g. `pip install --target DIR litserve pyzmq --no-deps`), the same bank
   behind LitServe's batching (benchmarks/serving_litserve.py). The client shares the 2 cores.

--device cuda runs sections 1 and 2 on the GPU (the bank's --device; the HTTP section stays
on the CPU); --dtype bf16 writes the packs as bf16 runs do (the bank then runs in bf16);
--tiny: small sizes, and vit_micro_p4_16 in ViT-B's place: what a check of the script itself
needs (benchmarks/gpu_check.py --mode cpu).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_serving.py [--vitb] [--litserve DIR]
     -> benchmarks/results/serving.json
     benchmarks/bench_serving.py --device cuda --dtype bf16 --vitb --sections throughput,memory --out F
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
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "serving.json"
DEMO = ROOT / "spt_dist" / "assets" / "vit_tiny_p7_28_fmnist04.safetensors"
LENGTHS = (1, 5, 10, 50)
TASKS = (1, 5, 20)


def write_packs(folder: Path, cfg_overrides: List[str], backbone_file: str, n: int, classes: int = 10,
                dtype: torch.dtype = torch.float32) -> Dict[str, str]:
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
        meta = pack_metadata(cfg, h, "token", [f"c{j}" for j in range(classes)], input_spec(cfg), dtype)
        meta.update(prompt_length=str(p), deep=json.dumps(deep), method="vpt")
        tensors = {"prompts": torch.randn(depth if deep else 1, p, d, generator=g) * 0.1,
                   "head.weight": torch.randn(classes, d, generator=g) * 0.02, "head.bias": torch.zeros(classes)}
        packs[f"task{i:02d}"] = str(export_prompt_pack(folder / f"task{i:02d}.safetensors", tensors, meta))
    return packs


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def fewest_passes(stream: List[str], batch: int, length) -> int:
    """The fewest backbone passes any batching of `stream` into batches of `batch` can take:
    a pass holds one prompt length, so per length its sample count over `batch`, rounded up."""
    counts: Dict[int, int] = {}
    for t in stream:
        counts[length(t)] = counts.get(length(t), 0) + 1
    return sum(-(-n // batch) for n in counts.values())


def throughput(backbone_file: str, packs: Dict[str, str], batch: int, n_batches: int, rounds: int,
               device: str = "cpu", tasks: tuple = TASKS) -> dict:
    from spt_dist.serve import PromptBank
    from spt_dist.serve.schedule import scheduled

    banks = {mode: PromptBank.open(backbone_file, packs, lengths=mode, device=device) for mode in ("group", "pad")}
    bank = banks["group"]
    s = int(bank.inputs["img_size"])
    x = torch.randn(batch, 3, s, s)  # on the host, as the server's decoded images are
    names = list(packs)
    shape = {t.name: (t.prompt_length, t.deep) for t in bank.tasks()}
    first = {}  # one task per distinct prompt shape: its per-image time stands for all of that shape
    for name in names:
        first.setdefault(shape[name], name)
    # On the CPU, this process's CPU time (one torch thread): what other processes on a shared
    # machine take of the cores does not enter; on a GPU the wall time (logits come back synced).
    clock = time.perf_counter if bank.device.type == "cuda" else time.process_time
    out = {}
    for T in tasks:
        load = _load_average()
        rng = random.Random(T)
        stream = [rng.choice(names[:T]) for _ in range(batch * n_batches)]
        fifo = [stream[i:i + batch] for i in range(0, len(stream), batch)]  # as they come
        by_length = list(scheduled(stream, batch, key=bank.prompt_length))  # as the server batches
        runs = {"fifo_group": ("group", fifo), "fifo_pad": ("pad", fifo), "scheduled": ("group", by_length)}
        times = {**{k: [] for k in runs}, **{k: [] for k in first if k in {shape[n] for n in names[:T]}}}
        for r in range(rounds + 1):  # round 0 warms up
            for key in times:
                t0 = clock()
                if key in runs:
                    mode, batches = runs[key]
                    for tasks_ in batches:
                        banks[mode].logits(x[:len(tasks_)], tasks_)  # logits come back to the host: synced
                    per_image = (clock() - t0) / len(stream)
                else:  # as many batches as the mixed stream: timings of the same length compare
                    for _ in range(n_batches):
                        bank.logits(x, [first[key]] * batch)
                    per_image = (clock() - t0) / (batch * n_batches)
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
        row["passes_scheduled"] = sum(len({shape[t][0] for t in b}) for b in by_length)
        row["passes_fewest_possible"] = fewest_passes(stream, batch, bank.prompt_length)
        row["tasks_per_batch_scheduled"] = round(float(np.mean([len(set(b)) for b in by_length])), 2)
        row["load_average"] = [load, _load_average()]  # 1-minute load at the start and the end of the row
        out[f"T={T}"] = row
        print(f"  T={T}: {row}", flush=True)
    return {"clock": "wall time" if clock is time.perf_counter else "process CPU time", **out}


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory(backbone_file: str, packs: Dict[str, str], build_separate: bool, device: str = "cpu",
           tasks: tuple = TASKS) -> dict:
    """{"T=k": bank vs k separate models} for k in `tasks`, and the T = max figures at the top
    level (the resident-memory growth only there: measured first, in a process not yet grown)."""
    from spt_dist.engine.export import DTYPES, load_prompt_pack, read_prompt_pack
    from spt_dist.serve import PromptBank

    try:
        import psutil
        rss = psutil.Process().memory_info
    except ImportError:  # the figures in tensor bytes do not need it
        rss = None
    names = list(packs)
    cuda = device.startswith("cuda")
    rows, top = {}, {}
    for T in sorted(tasks, reverse=True):
        sub = {n: packs[n] for n in names[:T]}
        rss0 = rss().rss if rss else 0
        if cuda:
            torch.cuda.synchronize()
            alloc0 = torch.cuda.memory_allocated()
        bank = PromptBank.open(backbone_file, sub, device=device)
        row = {"tasks": T}
        if cuda:
            row["bank_cuda_allocated_bytes"] = torch.cuda.memory_allocated() - alloc0
        bank_rss = (rss().rss - rss0) if rss else None
        mem = bank.memory_bytes()  # the bank stays alive while the separate models are built
        row.update(bank_tensor_bytes=mem["backbone"] + mem["stack"], bank_backbone_bytes=mem["backbone"],
                   bank_stack_bytes=mem["stack"])
        dtype = DTYPES[bank.inputs["dtype"]]
        element = torch.empty(0, dtype=dtype).element_size()
        # A PromptedViT per pack: the backbone plus that pack's prompts and head, in the bank's dtype.
        computed = sum(mem["backbone"] + sum(t.numel() for t in read_prompt_pack(p)[0].values()) * element
                       for p in sub.values())
        if build_separate:
            rss1 = rss().rss if rss else 0
            models = [load_prompt_pack(p, backbone_file)[0] for p in sub.values()]
            row["separate_tensor_bytes"] = sum(_tensor_bytes(m.parameters()) for m in models)
            assert row["separate_tensor_bytes"] == computed, (row["separate_tensor_bytes"], computed)
            if rss and T == max(tasks):
                row["separate_rss_growth_bytes"] = rss().rss - rss1
                row["bank_rss_growth_bytes"] = bank_rss
            del models
        else:
            row["separate_tensor_bytes"] = computed  # T copies are not built
            row["separate_computed"] = True
        row["separate_over_bank"] = round(row["separate_tensor_bytes"] / row["bank_tensor_bytes"], 2)
        del bank
        rows[f"T={T}"] = row
        if T == max(tasks):
            top = dict(row)
    first = next(iter(packs.values()))
    top["one_model_tensor_bytes"] = _tensor_bytes(load_prompt_pack(first, backbone_file)[0].parameters())
    return {**top, "by_tasks": {k: rows[k] for k in sorted(rows, key=lambda k: int(k[2:]))}}


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
    ap.add_argument("--vitb", action="store_true", help="also the throughput of random ViT-B/16 weights (slow on a CPU)")
    ap.add_argument("--litserve", default="", help="folder holding the litserve package, for the comparison")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--sections", default="throughput,memory,http",
                    help="which parts to measure; the others keep their figures from --out")
    ap.add_argument("--device", default="cpu", help="the banks' device for throughput and memory (cpu, cuda, cuda:N)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the packs' precision (the bank's)")
    ap.add_argument("--tiny", action="store_true", help="small sizes: a check that the script runs end to end")
    ap.add_argument("--long-stream", type=int, default=0, metavar="BATCHES",
                    help="throughput of the demo backbone at T = 20 only, over a stream of this many batches "
                         "(-> throughput_vit_tiny_p7_28_long): what the end of a short stream costs")
    args = ap.parse_args()
    out, sections = Path(args.out), args.sections.split(",")
    result = json.loads(out.read_text()) if out.is_file() and len(sections) < 3 else {}
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "no GPU"
    result.update(machine=f"{os.cpu_count()} cores{'' if cuda else ' (shared)'}, torch threads "
                          f"{torch.get_num_threads()}, {where}, load average {os.getloadavg()[0]:.1f} at the start",
                  prompt_lengths=list(LENGTHS), torch=torch.__version__, device=args.device, dtype=args.dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    # (batch, batches in the stream, rounds): demo backbone, ViT-B/16
    demo_size, vitb_size = ((8, 2, 1), (8, 2, 1)) if args.tiny else ((64, 10, 5), (64, 8, 3) if cuda else (16, 2, 2))
    suffix = "" if (args.device, args.dtype) == ("cpu", "fp32") else f"_{args.device.split(':')[0]}_{args.dtype}"

    def save(key: str, value: dict) -> None:  # after each part: a crash keeps what is done
        result[key] = {"machine": result["machine"], **value}  # parts may come from different runs
        out.write_text(json.dumps(result, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = write_packs(tmp / "demo", [], str(DEMO), max(TASKS), dtype=dtype)
        if "throughput" in sections:
            print(f"throughput, demo backbone, {args.device}", flush=True)
            b, n, r = demo_size
            save(f"throughput_vit_tiny_p7_28{suffix}", {"batch": b, "batches": n, "rounds": r,
                                                         **throughput(str(DEMO), demo, b, n, r, args.device)})
        if args.long_stream:
            print(f"throughput, demo backbone, T=20, {args.long_stream} batches", flush=True)
            b, r = demo_size[0], 3
            save(f"throughput_vit_tiny_p7_28_long{suffix}", {
                "batch": b, "batches": args.long_stream, "rounds": r,
                **throughput(str(DEMO), demo, b, args.long_stream, r, args.device, tasks=(20,))})
        if "memory" in sections:
            save(f"memory_vit_tiny_p7_28{suffix}", memory(str(DEMO), demo, build_separate=True, device=args.device))
            print(f"  memory: {result[f'memory_vit_tiny_p7_28{suffix}']}", flush=True)
        if "http" in sections:
            print("serving over HTTP, demo backbone, 20 tasks", flush=True)
            loads = [(1, 20), (8, 40)] if args.tiny else [(1, 200), (8, 600), (32, 1200)]
            save("http_vit_tiny_p7_28_20_tasks", serving(demo, args.litserve, loads))
        if args.vitb:
            from spt_dist.model import build_backbone, save_backbone_weights

            name = "vit_micro_p4_16" if args.tiny else "vit_b16"  # --tiny: the same path, a backbone a CPU runs
            torch.manual_seed(0)
            vitb = save_backbone_weights(build_backbone(name), tmp / f"{name}_random.safetensors")
            packs = write_packs(tmp / name, [f"model.name={name}"], vitb, max(TASKS), dtype=dtype)
            if "throughput" in sections:
                print(f"throughput, {name}, {args.device}", flush=True)
                b, n, r = vitb_size
                save(f"throughput_{name}{suffix}", {"batch": b, "batches": n, "rounds": r,
                                                    **throughput(vitb, packs, b, n, r, args.device)})
            if "memory" in sections:
                save(f"memory_{name}{suffix}", memory(vitb, packs, build_separate=False, device=args.device))
                print(f"  memory: {result[f'memory_{name}{suffix}']}", flush=True)
    result["load_average_at_the_end"] = _load_average()
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
