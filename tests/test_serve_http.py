"""`spt serve` as a user runs it: a real server process on a loopback port, driven by a real
HTTP client with concurrent requests for several tasks. Answers are checked against each
pack run alone through PromptedViT (load_prompt_pack) in this process; batching across
requests and tasks is read from the metrics endpoint; bad requests are refused with their
4xx code while the good ones around them keep being answered; packs come and go while it
runs; SIGTERM ends it with exit code 0."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from engine_helpers import PYTHON, ROOT, env, run
from serve_helpers import make_assets, png, write_pack, write_packs
from spt_dist.engine.export import load_prompt_pack

TASKS = ("linear", "shallow3", "deep3", "deep5")  # shallow3 and deep3 can share a pass


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _start(cmd, timeout: float = 90):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while time.time() < deadline:
        url = next((l.split("listening on ")[1].split()[0] for l in lines if "listening on" in l), None)
        if url:
            return proc, url, lines
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"spt serve did not start:\n{''.join(lines)}")


def _reference(packs, backbone):
    """task -> function(png bytes) -> (label, softmax score) of the pack alone."""
    from spt_dist.data import build_transform

    refs = {}
    for name, path in packs.items():
        model, meta = load_prompt_pack(path, str(backbone))
        transform = build_transform(meta["preset"], meta["img_size"], meta["mean"], meta["std"], train=False)

        def top1(data, model=model, meta=meta, transform=transform):
            with torch.no_grad():
                probs = model(transform(data)[None])[0].softmax(0)
            return meta["classes"][int(probs.argmax())], float(probs.max())

        refs[name] = top1
    return refs


def test_server_answers_mixed_concurrent_requests_refuses_bad_ones_and_stops(assets, tmp_path):
    packs = write_packs(tmp_path / "packs", assets, [*TASKS, "deep8"])
    refs = _reference(packs, assets["backbone"])
    from spt_dist.model import build_backbone, save_backbone_weights

    torch.manual_seed(7)
    other = save_backbone_weights(build_backbone("vit_micro_p4_16"), tmp_path / "other.safetensors")
    alien = tmp_path / "alien" / "prompt_pack.safetensors"  # a pack of another backbone file
    write_pack(alien, {"backbone": other, "shards": assets["shards"]}, 2, False, "token", 3, 11)
    proc, url, log = _start([PYTHON, "-m", "spt_dist.cli", "serve", str(assets["backbone"]),
                             *(f"{t}={packs[t]}" for t in TASKS), "--host", "127.0.0.1", "--port", "0",
                             "--max-batch-size", "8", "--max-wait-ms", "50", "--max-image-bytes", "4096",
                             "--device", "cpu"])  # the references below are CPU models
    try:
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=16)) as client:
            assert client.get("/health").json()["tasks"] == 4
            good = [(TASKS[i % 4], png(i)) for i in range(48)]
            bad = ([("deep5", b"not an image at all", 400)] * 4 + [("nope", png(0), 404)] * 4
                   + [("shallow3", os.urandom(5000), 413)] * 2)
            jobs = [("good", t, d, 200) for t, d in good]
            for j, b in enumerate(bad):  # spread among the good ones
                jobs.insert(5 * j + 3, ("bad", *b))

            def send(job):
                _, task, data, _ = job
                return client.post(f"/v1/tasks/{task}/classify", params={"top_k": 2}, content=data)

            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(send, jobs))
            for (kind, task, data, code), r in zip(jobs, answers):
                assert r.status_code == code, (kind, task, r.text)
                if kind == "bad":
                    assert r.json()["error"]
                    continue
                body = r.json()
                label, score = refs[task](data)
                assert body["task"] == task and len(body["top_k"]) == 2
                assert body["top_k"][0]["label"] == label and body["top_k"][0]["score"] == pytest.approx(score, abs=1e-5)

            m = client.get("/metrics").json()
            assert m["requests"]["classified_by_task"] == {t: 12 for t in TASKS}
            assert {k: m["requests"]["by_status"][k] for k in ("400", "404", "413")} == {"400": 4, "404": 4, "413": 2}
            batches = m["batches"]
            assert batches["images"] == 48 and batches["max_size"] > 1 and batches["count"] < 48
            assert max(int(k) for k in batches["tasks_per_batch"]) > 1  # one pass answered several tasks
            assert m["latency_ms"]["count"] == 48 and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"] > 0

            # A streamed body (chunked, no Content-Length) is refused once it passes the limit;
            # one under the limit, streamed the same way, is answered.
            chunks = lambda data: iter([data[i:i + 1000] for i in range(0, len(data), 1000)])  # noqa: E731
            r = client.post("/v1/tasks/shallow3/classify", content=chunks(os.urandom(9000)))
            assert r.status_code == 413 and "over 4096 bytes" in r.json()["error"]
            r = client.post("/v1/tasks/deep3/classify", params={"top_k": 2}, content=chunks(png(5)))
            assert r.status_code == 200 and r.json()["top_k"][0]["label"] == refs["deep3"](png(5))[0]
            assert r.request.headers.get("transfer-encoding") == "chunked"

            r = client.post("/v1/tasks/deep5/classify", params={"top_k": 0}, content=png(0))
            assert r.status_code == 422 and "top_k" in r.json()["error"]
            # Packs come and go while it serves; a pack of another backbone is refused.
            r = client.put("/v1/tasks/deep8", content=open(packs["deep8"], "rb").read())
            assert r.status_code == 201 and r.json()["prompt_length"] == 8
            assert client.put("/v1/tasks/deep8", content=open(packs["deep8"], "rb").read()).status_code == 409
            r = client.put("/v1/tasks/alien", content=alien.read_bytes())
            assert r.status_code == 422 and "other backbone weights" in r.json()["error"]
            assert client.put("/v1/tasks/x", content=b"junk").status_code == 422
            assert client.delete("/v1/tasks/linear").status_code == 200
            assert client.post("/v1/tasks/linear/classify", content=png(1)).status_code == 404
            names = [t["name"] for t in client.get("/v1/tasks").json()["tasks"]]
            assert sorted(names) == ["deep3", "deep5", "deep8", "shallow3"]
            with ThreadPoolExecutor(4) as pool:
                late = list(pool.map(lambda i: client.post(f"/v1/tasks/{names[i % 4]}/classify", content=png(i)),
                                     range(8)))
            for i, r in enumerate(late):
                assert r.status_code == 200 and r.json()["top_k"][0]["label"] == refs[names[i % 4]](png(i))[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(log)
        time.sleep(0.2)
        assert any("stopped" in line for line in log)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_pack_of_another_backbone_at_start(assets, tmp_path):
    from spt_dist.model import build_backbone, save_backbone_weights

    good = write_packs(tmp_path / "packs", assets, ["deep5"])["deep5"]
    torch.manual_seed(7)
    other = save_backbone_weights(build_backbone("vit_micro_p4_16"), tmp_path / "other.safetensors")
    alien = write_pack(tmp_path / "alien.safetensors", {"backbone": other, "shards": assets["shards"]}, 2, False,
                       "token", 3, 11)
    proc = run([PYTHON, "-m", "spt_dist.cli", "serve", str(assets["backbone"]), good, f"alien={alien}",
                "--port", "0"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "spt: error:" in proc.stderr and "other backbone weights" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "listening" not in proc.stderr
