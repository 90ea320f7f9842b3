"""The HTTP interface of a PromptBank (FastAPI): classify, tasks, packs in and out, health, metrics.

Invariant: a request the server cannot use (not an image, unknown task, too large a body, a
pack for another backbone, a bad task name) gets a 4xx answer {"error": "..."} that says why,
and nothing else changes: the bank and the other requests, queued or running, go on as if it
had not come. Classifications go through one DynamicBatcher, whatever their task.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, Sequence

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from spt_dist.engine.export import PackMismatchError

from .bank import BadImageError, PromptBank, TaskExistsError, TaskNameError, UnknownTaskError
from .batcher import DynamicBatcher, ShuttingDown
from .metrics import ServeMetrics


class TooLargeError(ValueError):
    """A request body over the server's limit."""


class EmptyBodyError(ValueError):
    """A request without the body it needs."""


# Most specific first: TaskExistsError is a TaskNameError.
STATUS = ((TooLargeError, 413), (EmptyBodyError, 400), (BadImageError, 400), (UnknownTaskError, 404),
          (TaskExistsError, 409), (TaskNameError, 400), (PackMismatchError, 422), (ShuttingDown, 503))


def status_of(exc: BaseException) -> int:
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 500)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to pass `limit` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"body of {int(declared)} bytes; at most {limit} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"body over {limit} bytes; at most {limit} are accepted")
        chunks.append(chunk)
    if not size:
        raise EmptyBodyError("empty body: send the file's bytes as the request body")
    return b"".join(chunks)


def _run_batch(bank: PromptBank, metrics: ServeMetrics):
    import torch

    def run(payloads: Sequence[Any]) -> list:
        t = time.perf_counter()
        images, tasks, ks = zip(*payloads)
        out = bank.classify_each(torch.stack(images), list(tasks), list(ks))
        metrics.batch([task for task, r in zip(tasks, out) if not isinstance(r, Exception)], time.perf_counter() - t)
        return out

    return run


def create_app(bank: PromptBank, max_batch_size: int = 32, max_wait_ms: float = 5.0,
               max_image_bytes: int = 10 * 2**20, max_pack_bytes: int = 256 * 2**20) -> FastAPI:
    metrics = ServeMetrics()
    batcher = DynamicBatcher(_run_batch(bank, metrics), max_batch_size, max_wait_ms / 1000.0,
                             key=lambda payload: bank.prompt_length(payload[1]))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="spt serve", lifespan=lifespan)
    app.state.bank, app.state.metrics, app.state.batcher = bank, metrics, batcher

    def error(exc: BaseException, task: str = "") -> JSONResponse:
        code = status_of(exc)
        metrics.request(code, task)
        return JSONResponse({"error": str(exc)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.request(422)
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": why}, status_code=422)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        metrics.request(200)
        return {"status": "ok", "tasks": len(bank.tasks()), "backbone": bank.inputs["backbone"],
                "weights_hash": bank.weights_hash, "device": str(bank.device), "dtype": bank.inputs["dtype"]}

    @app.get("/metrics")
    async def get_metrics() -> Dict[str, Any]:
        return {**metrics.snapshot(batcher.queued), "tasks": len(bank.tasks()),
                "max_batch_size": batcher.max_batch_size, "max_wait_ms": batcher.max_wait_s * 1000.0}

    @app.get("/v1/tasks")
    async def list_tasks() -> Dict[str, Any]:
        metrics.request(200)
        return {"tasks": [t.describe() for t in bank.tasks()]}

    @app.get("/v1/tasks/{name}")
    async def get_task(name: str):
        try:
            task = bank.task(name)
        except UnknownTaskError as exc:
            return error(exc)
        metrics.request(200)
        return task.describe()

    @app.post("/v1/tasks/{name}/classify")
    async def classify(name: str, request: Request, top_k: int = Query(5, ge=1, le=1000)):
        t0 = time.monotonic()
        try:
            bank.task(name)  # unknown tasks are refused before the image is even read
            data = await read_body(request, max_image_bytes)
            # Large files decode off the event loop (PIL releases the GIL); small ones are
            # quicker decoded in place than handed to a thread.
            image = await asyncio.to_thread(bank.preprocess, data) if len(data) > 32768 else bank.preprocess(data)
            top = await batcher.submit((image, name, top_k))
        except (ValueError, LookupError, ShuttingDown) as exc:
            return error(exc, name)
        latency = time.monotonic() - t0
        metrics.request(200, name, latency)
        return {"task": name, "top_k": top, "latency_ms": round(latency * 1000.0, 3)}

    @app.put("/v1/tasks/{name}", status_code=201)
    async def put_task(name: str, request: Request, replace: bool = False):
        try:
            body = await read_body(request, max_pack_bytes)
            task = await asyncio.to_thread(_add_uploaded, bank, name, body, replace)
        except (ValueError, LookupError) as exc:
            return error(exc, name)
        metrics.request(201, name)
        return task.describe()

    @app.delete("/v1/tasks/{name}")
    async def delete_task(name: str):
        try:
            task = bank.remove(name)
        except UnknownTaskError as exc:
            return error(exc, name)
        metrics.request(200)
        return {"removed": task.describe()}

    return app


def _add_uploaded(bank: PromptBank, name: str, body: bytes, replace: bool):
    fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="spt_pack_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return bank.add(name, path, replace=replace, source=f"upload ({len(body)} bytes)")
    except PackMismatchError as exc:  # the temporary file's name means nothing to the client
        raise PackMismatchError(str(exc).replace(path, "the uploaded pack")) from None
    finally:
        os.unlink(path)
