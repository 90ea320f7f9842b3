"""Shared pieces of the engine tests: tiny shards + backbone file, configs, torchrun launching.
The multi-rank worker they launch is tests/engine_worker.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

CONFIG = """\
defaults: [base, model/vit_micro_p4_16, method/vpt_deep]
model: {{checkpoint: {backbone}}}
method: {{prompt_length: 4, prompt_dropout: 0.1, track_alignment: false}}
data: {{root: {shards}, batch_size: 8, eval_batch_size: 16, shuffle_buffer: 16}}
optim: {{name: adamw, lr: 0.01, lr_scaling: none, epochs: {epochs}, warmup_epochs: 0.5, weight_decay: 0.01}}
run: {{out_dir: {out}, checkpoint_every: {every}, log_every: 1, progress: false}}
distributed: {{timeout_s: 60}}
"""


def make_assets(folder: Path) -> Dict[str, Path]:
    """Tiny 16x16 shards (3 classes) and a vit_micro_p4_16 weights file; built once per folder."""
    shards, backbone = folder / "shards", folder / "vit_micro_p4_16.safetensors"
    if not (shards / "index.json").is_file():
        import torch

        from spt_dist.data.synthetic import tiny_shards
        from spt_dist.model import build_backbone, save_backbone_weights

        tiny_shards(shards, {"train": [64, 64], "val": [12, 12], "test": [15, 15]}, num_classes=3, size=16)
        torch.manual_seed(0)
        save_backbone_weights(build_backbone("vit_micro_p4_16"), backbone)
    return {"shards": shards, "backbone": backbone}


def write_config(path: Path, assets: Dict[str, Path], out: Path, epochs: int = 2, every: int = 5) -> Path:
    path.write_text(CONFIG.format(backbone=assets["backbone"], shards=assets["shards"], out=out,
                                  epochs=epochs, every=every))
    return path


# A rendezvous an in-process run or task of this test process left in os.environ (submitit's
# export sets them) must not reach the processes a test starts: they would join its port.
RENDEZVOUS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def env() -> Dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_ENV}
    e.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    e.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return e


def torchrun(args: List[str], nproc: int = 2) -> List[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), *args]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: List[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until metrics.jsonl shows a train event at `step` (fails if the process ends first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early (rc={proc.returncode}):\n{proc.stdout.read()[-4000:]}")
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                rec = json.loads(line)
                if rec["event"] == "train" and rec["step"] >= step:
                    return
        time.sleep(0.2)
    raise AssertionError(f"no train step {step} in {metrics} after {timeout} s")


def losses(run_dir: Path) -> List[float]:
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(l)["event"] == "train"]


def checkpoint_tensors(step_dir: Path) -> Dict[str, Dict[str, int]]:
    """Per file: tensor name -> element count, over everything DeepSpeed wrote (incl. optimizer)."""
    import torch

    out: Dict[str, Dict[str, int]] = {}

    def walk(obj, prefix: str, into: Dict[str, int]) -> None:
        if torch.is_tensor(obj):
            into[prefix] = obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k), into)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{prefix}.{i}", into)

    for f in sorted((step_dir / "ds").rglob("*.pt")):
        into: Dict[str, int] = {}
        walk(torch.load(f, map_location="cpu", weights_only=False), "", into)
        out[str(f.relative_to(step_dir))] = into
    return out


def corrupt_images(index: Any, split: str, keys: set) -> None:
    """Rewrite the split's tars with the images of `keys` replaced by bytes no decoder reads
    (and index them again: the index describes the tars as they now are). `index`: a ShardIndex."""
    import io
    import tarfile

    from spt_dist.data.tarscan import scan_shard

    shards = index.split(split).shards
    for i, shard in enumerate(shards):
        path = Path(index.root) / shard.name
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(path, "w") as tar:
            for member, data in members:
                if member.name.split(".")[0] in keys and member.name.endswith(".png"):
                    data = f"not an image: {member.name}".encode()  # unique bytes: no false overlap
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        shards[i] = scan_shard(path)
    index.save()


class FileWritingEngine:
    """What Checkpointer.save asks of DeepSpeed's engine: it writes a file into the step folder."""

    def save_checkpoint(self, save_dir, tag, save_latest, exclude_frozen_parameters):
        Path(save_dir, tag).mkdir(parents=True, exist_ok=True)
        Path(save_dir, tag, "model_states.pt").write_bytes(b"\0" * 4096)


def fill_disk(filler) -> None:
    """Write zeros through an already open, unbuffered file until its file system refuses, then
    close it (no buffered bytes are left for close to fail on)."""
    try:
        while True:
            filler.write(b"\0" * 65536)
    except OSError:
        pass
    filler.close()
