"""model.checkpoint=hf-hub:<org>/<name> is read from the local Hugging Face cache by the hub's
own client, without a single name lookup or connection: the same tensors as the file itself,
checked wherever a config is checked with its files, and a name missing from the cache is one
line that says where it looked and how to fetch it.

The cache is laid out as the client lays it (blobs/<sha256>, snapshots/<commit>/<file> -> blob,
refs/main) and read back by the client's own scan_cache_dir; each check runs in a fresh process
(tests/hub_worker.py) with HF_HOME pointing at it and the network refused."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine_helpers import ROOT, env, make_assets, write_config
from spt_dist.model import build_backbone, weights_hash

REPO = "timm/vit_micro_p4_16.test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(hf_home: Path, repo: str, files: dict, commit: str = COMMIT) -> Path:
    """The cache folder of `repo` with `files` (name -> bytes) at `commit`, which refs/main names."""
    folder = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()  # LFS files are stored by their sha256
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    assets = make_assets(tmp_path_factory.getbasetemp() / "engine_assets")
    hub_cache(root / "hf", REPO, {"model.safetensors": assets["backbone"].read_bytes(), "config.json": b"{}"})
    config = write_config(root / "run.yaml", assets, root / "runs")
    text = config.read_text().replace(str(assets["backbone"]), f"hf-hub:{REPO}")
    config.write_text(text)
    return {"root": root, "hf_home": root / "hf", "config": config, "file": assets["backbone"]}


def worker(hub, *args: str, offline: bool = True) -> subprocess.CompletedProcess:
    e = dict(env(), HF_HOME=str(hub["hf_home"]), PYTHONPATH=str(ROOT))
    e.pop("HF_HUB_CACHE", None)
    if offline:
        e["HF_HUB_OFFLINE"] = "1"
    else:
        e.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "hub_worker.py"), *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120)
    return proc


def attempts(proc: subprocess.CompletedProcess) -> int:
    return int(proc.stderr.strip().splitlines()[-1].split()[2])


def test_the_cache_is_laid_out_as_the_client_reads_it(hub):
    from huggingface_hub import scan_cache_dir

    (repo,) = scan_cache_dir(hub["hf_home"] / "hub").repos
    (revision,) = repo.revisions
    assert (repo.repo_id, revision.commit_hash, revision.refs) == (REPO, COMMIT, frozenset({"main"}))
    assert sorted(f.file_name for f in revision.files) == ["config.json", "model.safetensors"]


def test_the_network_guard_counts_attempts(hub):
    assert attempts(worker(hub, "control", offline=False)) >= 1  # else a count of 0 below would prove nothing


def test_hub_name_loads_the_same_tensors_as_the_file(hub):
    proc = worker(hub, "hash", str(hub["config"]))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["path"] == str(hub["hf_home"] / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" /
                              COMMIT / "model.safetensors")
    assert got["hash"] == weights_hash(build_backbone("vit_micro_p4_16", checkpoint=hub["file"]))
    assert attempts(proc) == 0


def test_checked_where_configs_are_checked_with_their_files(hub):
    proc = worker(hub, "spt", "config", "show", str(hub["config"]), "--check-files", offline=False)
    assert proc.returncode == 0 and f"checkpoint: hf-hub:{REPO}" in proc.stdout, proc.stderr
    assert attempts(proc) == 0
    proc = worker(hub, "spt", "weights", "check", f"hf-hub:{REPO}@{COMMIT}")
    assert proc.returncode == 0, proc.stderr
    assert f"snapshots/{COMMIT}/model.safetensors" in proc.stdout and "model.name=vit_micro_p4_16" in proc.stdout
    assert attempts(proc) == 0


@pytest.mark.parametrize("command, name", [("train", "timm/not_in_the_cache"), ("config", f"{REPO}@v9")])
def test_a_name_not_in_the_cache_is_one_line_before_any_work(hub, command, name):
    # No HF_HUB_OFFLINE: the cache lookup alone keeps the client off the network.
    args = ["train", str(hub["config"])] if command == "train" else ["config", "show", str(hub["config"])]
    proc = worker(hub, "spt", *args, f"model.checkpoint=hf-hub:{name}", "--check-files" if command == "config"
                  else "run.progress=false", offline=False)
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("spt: error:")]
    assert len(error) == 1 and proc.stderr.count("Traceback") == 0, proc.stderr
    repo, _, revision = name.partition("@")
    assert f"not in the Hugging Face cache {hub['hf_home'] / 'hub'}" in error[0]
    assert f"hf download {repo} model.safetensors" in error[0] and f"revision {revision or 'main'}" in error[0]
    assert attempts(proc) == 0
    assert not (hub["root"] / "runs").exists()  # refused before a run folder was made
