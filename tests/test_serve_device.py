"""Where the bank runs: `--device` of `spt serve` and `spt predict`, and the bank on a CUDA GPU.

On a machine without CUDA the GPU test is skipped (with its reason) and the refusals are
checked: `--device cuda` stops the command with a one-line `spt: error:` (exit code 2) before
any work, as does a device name that is none. With CUDA, a bank on the GPU answers a mixed
batch, offline shard scoring and the top-k labels as the same bank on the CPU does
(tolerance 1e-4 on fp32 logits: other kernels, other summation order; a wrong prompt or head
moves logits by > 0.1, see test_serve_bank.py).
"""
from __future__ import annotations

import pytest
import torch

from engine_helpers import PYTHON, run
from serve_helpers import PACKS, make_assets, png, write_pack, write_packs
from spt_dist.errors import SptError
from spt_dist.serve import PromptBank
from spt_dist.serve.bank import resolve_device
from spt_dist.serve.offline import score_shards

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def test_device_names_are_resolved_or_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(SptError, match="allowed: auto, cpu, cuda, cuda:N"):
            resolve_device(bad)
    with pytest.raises(SptError, match="no CUDA GPU" if not CUDA else "CUDA GPU\\(s\\), cuda:0 to"):
        resolve_device("cuda:99")


def test_serve_and_predict_refuse_a_device_this_machine_lacks(assets, tmp_path):
    pack = write_packs(tmp_path, assets, ["deep5"])["deep5"]
    want = "no CUDA GPU" if not CUDA else "cuda:0 to"
    for cmd in (["serve", str(assets["backbone"]), pack, "--port", "0", "--device", "cuda:99"],
                ["predict", pack, "--backbone-checkpoint", str(assets["backbone"]), str(assets["shards"]),
                 "--device", "cuda:99"]):
        proc = run([PYTHON, "-m", "spt_dist.cli", *cmd], timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "spt: error: --device cuda:99: " in proc.stderr and want in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "listening" not in proc.stderr


@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine: the bank on a GPU cannot run here")
def test_bank_on_cuda_answers_as_on_cpu(assets, tmp_path, monkeypatch):
    from spt_dist.data import ShardIndex

    # fp32 on both sides: TF32 convolutions and matmuls (cuDNN's default) would move logits by ~1e-3
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    packs = write_packs(tmp_path / "packs", assets)
    gpu, cpu = (PromptBank.open(str(assets["backbone"]), packs, device=d) for d in ("cuda", "cpu"))
    assert gpu.device.type == "cuda" and cpu.device == torch.device("cpu")
    assert all(p.device.type == "cuda" for p in gpu.backbone.parameters())
    names = list(packs)
    tasks = [names[(i * 5) % len(names)] for i in range(24)]
    images = torch.stack([cpu.preprocess(png(i)) for i in range(24)])
    got, want = gpu.logits(images, tasks), cpu.logits(images, tasks)
    for g, w in zip(got, want):
        assert g.device.type == "cpu" and g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert [r[0]["label"] for r in gpu.classify(images, tasks, 1)] == [r[0]["label"] for r in cpu.classify(images, tasks, 1)]
    index = ShardIndex.load(str(assets["shards"]))
    three = {k: str(write_pack(tmp_path / f"{k}.safetensors", assets, *PACKS[k][:3], 3, seed, classes=index.classes))
             for seed, k in enumerate(("deep5", "shallow2"))}
    roots = {k: str(assets["shards"]) for k in three}
    on_gpu = score_shards(PromptBank.open(str(assets["backbone"]), three, device="cuda"), roots, "test", 7)
    on_cpu = score_shards(PromptBank.open(str(assets["backbone"]), three, device="cpu"), roots, "test", 7)
    for k in three:
        assert on_gpu[k]["total"] == on_cpu[k]["total"] == 30
        assert on_gpu[k]["correct"] == on_cpu[k]["correct"]
        assert on_gpu[k]["loss"] == pytest.approx(on_cpu[k]["loss"], rel=1e-4)
