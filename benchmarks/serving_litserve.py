"""The same PromptBank behind LitServe, for bench_serving.py's framework comparison only.

POST /predict with JSON {"task": NAME, "image": base64 bytes, "top_k": k}: LitServe's request
bodies are JSON or forms, so the image travels as base64. Batch sizes the worker saw are
written to $SPT_BATCH_LOG (one line per batch) so that the benchmark can compare batching.

Run: PYTHONPATH=<litserve install> python benchmarks/serving_litserve.py PORT BACKBONE NAME=PACK...
(SPT_MAX_BATCH, SPT_MAX_WAIT_MS: batching; SPT_FAST_QUEUE=1: LitServe's ZeroMQ queues)
"""
from __future__ import annotations

import base64
import os
import sys

import litserve as ls


class BankAPI(ls.LitAPI):
    def __init__(self, backbone: str, packs: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone_file, self.packs = backbone, packs

    def setup(self, device) -> None:
        from spt_dist.serve import PromptBank

        self.bank = PromptBank.open(self.backbone_file, self.packs)
        self.log = open(os.environ["SPT_BATCH_LOG"], "a", buffering=1)

    def decode_request(self, request: dict):
        from fastapi import HTTPException

        from spt_dist.serve import BadImageError

        if request.get("task") not in {t.name for t in self.bank.tasks()}:
            raise HTTPException(404, f"no task {request.get('task')!r}")
        try:
            image = self.bank.preprocess(base64.b64decode(request["image"]))
        except BadImageError as exc:
            raise HTTPException(400, str(exc))
        return image, request["task"], int(request.get("top_k", 5))

    def batch(self, inputs):
        return inputs

    def predict(self, items):
        import torch

        images, tasks, ks = zip(*items)
        self.log.write(f"{len(items)} {len(set(tasks))}\n")
        return self.bank.classify(torch.stack(images), list(tasks), list(ks))

    def unbatch(self, output):
        return output

    def encode_response(self, output) -> dict:
        return {"top_k": output}


if __name__ == "__main__":
    port, backbone, specs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    packs = dict(s.split("=", 1) for s in specs)
    api = BankAPI(backbone, packs, max_batch_size=int(os.environ.get("SPT_MAX_BATCH", "32")),
                  batch_timeout=float(os.environ.get("SPT_MAX_WAIT_MS", "5")) / 1000.0)
    fast_queue = os.environ.get("SPT_FAST_QUEUE", "0") == "1"  # ZeroMQ instead of multiprocessing queues
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60, fast_queue=fast_queue).run(
        host="127.0.0.1", port=port, generate_client_file=False, num_api_servers=1, log_level="warning")
