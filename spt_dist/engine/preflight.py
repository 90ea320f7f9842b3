"""Everything about a run that can be known before any data or model is loaded, checked then.

Torch-free, but for the DeepSpeed JSON check, which imports DeepSpeed (and torch) only when
distributed.deepspeed_json is set: the launcher runs it on the login node (with the job's world
size) and the engine again at start (with the real one and this machine's memory). Every failure is a
ConfigError naming the key, the value and what would work:

- the weight file: a readable safetensors / torch / npz file (its header, not its tensors); an
  hf-hub name must be in the local Hugging Face cache;
- run.loggers: every tracker's package is installed;
- distributed.deepspeed_json: valid JSON, no optimizer or scheduler (the config owns them),
  no setting that contradicts the config's own (batch, accumulation, clipping, ZeRO
  stage, precision), and the merged config accepted by DeepSpeed's own config parser
  (DeepSpeedConfig: its typed sections reject a wrong type, an unknown key or value);
- optim.grad_accum against the micro-batches an epoch has per rank (from index.json, counted
  as the data stage counts them: data.drop_last), which with data.drop_last=false it must divide;
- data.drop_last=false against the world size (one rank only);
- data.shuffle=stream: the mixing check (data/mixing.py) of the reader's plan, from index.json
  (imports the data stage, and torch with it, only in stream mode), so that class-ordered
  shards are refused before a job is queued or a run folder claimed;
- the memory one training step needs against what the machine has (an absurd prompt
  length or image size never reaches a step it cannot finish).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

from spt_dist.config import Config, ConfigError
from spt_dist.config.hub import resolve_checkpoint
from spt_dist.config.registry import backbone_spec
from spt_dist.config.validate import drop_last_problem
from spt_dist.rundir.loggers import check_loggers

ABSURD_BYTES = 1 << 40  # no accelerator or node has a TiB for one rank's step


def check_weights_file(path: str, key: str = "model.checkpoint") -> None:
    """The file's header is that of a weight file, and it is complete."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise ConfigError(f"config key '{key}': file not found: {p}")
    size = p.stat().st_size
    bad = None
    if p.suffix == ".safetensors":
        with open(p, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= size - 8:
                bad = "its header length is out of range (truncated or not a safetensors file)"
            else:
                try:
                    header = json.loads(f.read(n))
                    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                    if 8 + n + end > size:
                        bad = f"it is {size} bytes but its tensors end at byte {8 + n + end} (truncated)"
                except (ValueError, KeyError, TypeError, IndexError):
                    bad = "its header is not valid safetensors JSON"
    elif zipfile.is_zipfile(p):  # torch's own format (.pth, .pt, .bin, .pth.tar) and .npz
        try:
            with zipfile.ZipFile(p) as z:
                if not z.namelist():
                    bad = "the archive is empty"
        except (zipfile.BadZipFile, OSError) as exc:
            bad = f"the archive is damaged ({exc})"
    else:
        with open(p, "rb") as f:
            first = f.read(2)
        if first[:1] != b"\x80":  # the legacy torch format starts with a pickle protocol mark
            bad = "it is neither a safetensors file, a PyTorch checkpoint nor an .npz archive (truncated?)"
    if bad:
        raise ConfigError(f"config key '{key}': {p} cannot be a weight file: {bad}")


def _ds_settings(cfg: Config, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed settings the typed config decides, by DeepSpeed's key."""
    return {"train_micro_batch_size_per_gpu": ("data.batch_size", cfg.data.batch_size),
            "gradient_accumulation_steps": ("optim.grad_accum", cfg.optim.grad_accum),
            "train_batch_size": ("data.batch_size x optim.grad_accum x world size",
                                 cfg.data.batch_size * cfg.optim.grad_accum * world_size),
            "gradient_clipping": ("optim.grad_clip", cfg.optim.grad_clip),
            "zero_optimization.stage": ("distributed.zero_stage", cfg.distributed.zero_stage),
            "bf16.enabled": ("precision.dtype", cfg.precision.dtype == "bf16"),
            "fp16.enabled": ("precision.dtype", False)}


def _get(tree: Dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def check_deepspeed_json(cfg: Config, world_size: int) -> Optional[Dict[str, Any]]:
    path = cfg.distributed.deepspeed_json
    if not path:
        return None
    p = Path(os.path.expanduser(path))
    key = "distributed.deepspeed_json"
    if not p.is_file():
        raise ConfigError(f"config key '{key}': file not found: {p}")
    try:
        raw = json.loads(p.read_text())
    except ValueError as exc:
        raise ConfigError(f"config key '{key}': {p} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}': {p} must hold a JSON object, not {type(raw).__name__}")
    for owned, by in (("optimizer", "optim.name / optim.lr"), ("scheduler", "optim.epochs / warmup_epochs")):
        if owned in raw:
            raise ConfigError(f"config key '{key}': {p} sets '{owned}', which the run's config decides ({by}); "
                              f"remove it from the file")
    for ds_key, (cfg_key, ours) in _ds_settings(cfg, world_size).items():
        theirs = _get(raw, ds_key)
        if theirs is not None and theirs != ours:
            raise ConfigError(f"config key '{key}': {p} sets {ds_key}={theirs!r} but the config has "
                              f"{cfg_key} = {ours!r}; set it in one place (the config's key)")
    from .ds_engine import deepspeed_config

    merged = deepspeed_config(cfg, world_size)
    merged.pop("train_batch_size", None)  # checked above for the job's world size; DeepSpeed sees one rank here
    problem = _deepspeed_rejects(json.dumps(merged, sort_keys=True))
    if problem:
        raise ConfigError(f"config key '{key}': DeepSpeed rejects {p}: {problem}")
    return raw


def _where(raw: Dict[str, Any], loc: tuple, value: Any) -> str:
    """The dotted key of the file a DeepSpeed section's error `loc` points at."""
    inner = ".".join(str(part) for part in loc)
    for section, body in raw.items():
        if isinstance(body, dict) and _get(body, inner) == value:
            return f"{section}.{inner}"
    return inner


@lru_cache(maxsize=16)
def _deepspeed_rejects(merged: str) -> Optional[str]:
    """Why DeepSpeed's own parser refuses this DeepSpeed config, or None."""
    from spt_dist.distributed import import_deepspeed

    import_deepspeed()
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    raw = json.loads(merged)
    try:
        DeepSpeedConfig(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return (f"{_where(raw, tuple(first['loc']), first.get('input'))}={first.get('input')!r}: "
                f"{first['msg']} ({exc.title}){more}")
    except Exception as exc:  # DeepSpeed's own assertions and DeepSpeedConfigError
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def check_accumulation(cfg: Config, num_samples: int, world_size: int) -> int:
    """Micro-batches per epoch per rank; optim.grad_accum must not exceed them, and with
    data.drop_last=false must divide them (an accumulation window never spans two epochs)."""
    need = world_size * cfg.data.batch_size
    if num_samples < need:
        raise ConfigError(f"config key 'data.batch_size' = {cfg.data.batch_size}: the training split has "
                          f"{num_samples} samples (data.fraction={cfg.data.fraction}) but {world_size} rank(s) x "
                          f"{cfg.data.batch_size} = {need} are needed for one batch per rank; allowed: at most "
                          f"{max(1, num_samples // world_size)}")
    from spt_dist.data.order import batches_per_epoch, kept_last_divisors, kept_last_problem

    per_epoch = batches_per_epoch(num_samples, world_size, cfg.data.batch_size, cfg.data.drop_last)  # A = 1
    if cfg.optim.grad_accum > per_epoch:
        allowed = f"at most {per_epoch}" if cfg.data.drop_last else \
            f"{kept_last_divisors(per_epoch)} (divisors of {per_epoch}: data.drop_last=false)"
        raise ConfigError(f"config key 'optim.grad_accum' = {cfg.optim.grad_accum}: an epoch has only "
                          f"{per_epoch} micro-batch(es) per rank ({num_samples} samples / ({world_size} ranks x "
                          f"{cfg.data.batch_size}), data.drop_last={cfg.data.drop_last}), so no optimizer step "
                          f"would ever happen; allowed: {allowed}")
    problem = None if cfg.data.drop_last else kept_last_problem(num_samples, cfg.data.batch_size, cfg.optim.grad_accum,
                                                                cfg.data.global_batch)
    if problem:
        raise ConfigError(problem)
    return per_epoch


def step_bytes(cfg: Config) -> int:
    """Activation memory of one training step of one rank (the largest term: what backward
    keeps per block, attention scores included), in bytes."""
    spec = backbone_spec(cfg.model.name)
    size = cfg.model.img_size or spec.img_size
    tokens = (size // spec.patch_size) ** 2 + int(spec.class_token) + spec.reg_tokens + cfg.method.prompt_length
    b, d, h = cfg.data.batch_size, spec.embed_dim, spec.num_heads
    elem = 2 if cfg.precision.dtype == "bf16" else 4
    block = elem * b * (16 * tokens * d + 2 * h * tokens * tokens)
    grads = cfg.method.prompt_length > 0 or cfg.method.name == "full"
    if not grads:
        return block  # a frozen backbone without prompts keeps nothing for backward
    if cfg.model.grad_checkpointing:
        return elem * b * tokens * d * spec.depth + block
    return block * spec.depth


def check_step_memory(cfg: Config, available: Optional[int]) -> None:
    need = step_bytes(cfg)
    limit = min(available or ABSURD_BYTES, ABSURD_BYTES)
    if need <= limit:
        return
    spec = backbone_spec(cfg.model.name)
    size = cfg.model.img_size or spec.img_size
    patches = (size // spec.patch_size) ** 2
    key, value = ("model.img_size", size) if patches > cfg.method.prompt_length else \
        ("method.prompt_length", cfg.method.prompt_length)
    where = f"this machine has {available / 2**30:.1f} GiB" if available else "more than any machine has"
    raise ConfigError(f"config key '{key}' = {value} (method.prompt_length={cfg.method.prompt_length}, "
                      f"model.img_size={size}: {patches} patches, data.batch_size={cfg.data.batch_size} on "
                      f"{cfg.model.name}): one training step needs about "
                      f"{need / 2**30:.1f} GiB of activations, {where}; lower method.prompt_length, "
                      f"model.img_size or data.batch_size, or set model.grad_checkpointing=true")


def check_run(cfg: Config, world_size: int, available_memory: Optional[int] = None,
              num_samples: Optional[int] = None) -> None:
    """All the checks above; `num_samples` (the selected training samples) when the index is at hand."""
    problem = drop_last_problem(cfg.data.drop_last, world_size)
    if problem:
        raise ConfigError(problem)
    if cfg.model.checkpoint:
        check_weights_file(resolve_checkpoint(cfg.model.checkpoint))
    check_loggers(cfg.run.loggers)
    check_deepspeed_json(cfg, world_size)
    if num_samples is not None:
        check_accumulation(cfg, num_samples, world_size)
        check_stream_mixing(cfg, world_size)
    check_step_memory(cfg, available_memory)


def check_stream_mixing(cfg: Config, world_size: int) -> None:
    """Stream mode under data.mixing_check=error: the plan TrainData would check, checked now
    (rank 0's TrainData; the plan is every rank's). Its warnings are left to the run itself."""
    d = cfg.data
    if d.shuffle != "stream" or d.mixing_check != "error":
        return
    import warnings

    from spt_dist.data import DataError, TrainData

    img_size = cfg.model.img_size or backbone_spec(cfg.model.name).img_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the normalisation does not enter the plan: any stands in for the backbone's
            TrainData(d, load_index(d.root), img_size, (0.5,) * 3, (0.5,) * 3, 0, world_size, seed=cfg.run.seed,
                      grad_accum=cfg.optim.grad_accum)
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def load_index(root: str):
    """ShardIndex.load, remembered while index.json is unchanged (a study checks hundreds of
    configs on the same data). Treat the result as read-only."""
    return _load_index(*_index_key(root))


def _index_key(root: str) -> tuple:
    from spt_dist.data.index import INDEX_NAME

    path = Path(os.path.expanduser(root))
    try:
        st = (path / INDEX_NAME).stat()
        return str(path.resolve()), st.st_mtime_ns, st.st_size
    except OSError:
        return str(path), 0, 0  # missing: load raises the clear error


@lru_cache(maxsize=8)
def _load_index(path: str, mtime_ns: int, size: int):
    from spt_dist.data import ShardIndex

    return ShardIndex.load(path)


def training_samples(cfg: Config) -> int:
    """How many samples the run trains on per epoch, from index.json alone."""
    d = cfg.data
    return _training_samples(_index_key(d.root), d.train_split, d.fraction, d.fraction_seed)


@lru_cache(maxsize=64)
def _training_samples(key: tuple, split: str, fraction: float, seed: int) -> int:
    from spt_dist.data import select_fraction

    index = _load_index(*key)
    if fraction >= 1.0:
        return index.split(split).num_samples
    return len(select_fraction(index, split, fraction, seed))


def machine_memory() -> Optional[int]:
    """Bytes a step may use here: the GPU's free memory, else the RAM the kernel calls available."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    except Exception:  # a broken driver: fall back to host memory
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

