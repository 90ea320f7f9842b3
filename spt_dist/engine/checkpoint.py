"""Checkpoints of the trainable state only, written atomically and verified before use.

Layout of `checkpoints/step_<N>/`:
  ds/state/...         DeepSpeed's files (trainable tensors, optimizer incl. ZeRO partitions,
                       lr scheduler), saved with exclude_frozen_parameters=True
  rng_rank<r>.pt       torch / numpy / python RNG states of rank r
  meta.json            training position and the identity of what was trained
  manifest.json        size and sha256 of every file above; written last

All ranks write into `.tmp_step_<N>/`, rank 0 writes the manifest and renames the folder, so
a crash mid-write leaves the previous checkpoint as the newest complete one. On load the
manifest is checked: a truncated or corrupt newest checkpoint is reported, renamed aside to
`.corrupt_step_<N>/` (kept for inspection, never loaded) and the one before it is used, so
rotation (the newest `keep` step folders) counts only valid checkpoints.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from spt_dist.distributed import DistInfo
from spt_dist.io import DiskFullError, file_sha256, is_disk_full

from .errors import CheckpointMismatchError, CheckpointReadError

if TYPE_CHECKING:
    from spt_dist.config import Config

    from .state import TrainState

TAG = "state"
PREFIX = "step_"
CORRUPT = ".corrupt_"
REPLACED = ".replaced_"  # a step folder kept aside while the same step is saved again


def _files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


class TrainRng:
    """The RNG streams of the training forward passes (prompt dropout), kept apart from the
    global ones: DataLoader iterators draw a seed from the global RNG when they are created,
    which would shift every later dropout mask after a mid-epoch resume. On a GPU the masks come
    from the CUDA generator, so its state is swapped in and out too; each pack member then
    draws its own masks there as on the CPU."""

    def __init__(self) -> None:
        self.state = torch.get_rng_state()
        self.cuda: Optional[torch.Tensor] = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    @contextmanager
    def active(self) -> Iterator[None]:
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state() if self.cuda is not None else None
        torch.set_rng_state(self.state)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)
        try:
            yield
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(outer)
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state()
                torch.cuda.set_rng_state(outer_cuda)


def _states(torch_state: torch.Tensor, numpy_state: Tuple, python_state: Tuple) -> Dict[str, Any]:
    """torch, numpy and python RNG states as tensors and plain containers (weights_only loadable)."""
    name, keys, pos, has_gauss, cached = numpy_state
    version, internal, gauss = python_state
    return {"torch": torch_state, "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": [version, torch.tensor(internal, dtype=torch.int64), gauss]}


def rng_state(train_rng: Optional[TrainRng] = None) -> Dict[str, Any]:
    """RNG states as tensors and plain containers (loadable with weights_only=True); with
    `train_rng`, its streams stand for torch's."""
    state = _states(torch.get_rng_state() if train_rng is None else train_rng.state, np.random.get_state(),
                    random.getstate())
    if torch.cuda.is_available():  # this rank's own device: a resume may see fewer or other GPUs
        state["cuda_device"] = torch.cuda.get_rng_state()
        if train_rng is not None and train_rng.cuda is not None:
            state["train_cuda"] = train_rng.cuda
    return state


def added_rank_rng(state: Dict[str, Any], rank: int) -> Dict[str, Any]:
    """RNG states for a rank that did not write the checkpoint (an elastic resume onto more
    ranks), from the state of the rank it borrows: a stream of its own, derived from every saved
    stream of that rank and this rank, so that two ranks never draw the same prompt-dropout
    masks and a later resume does not replay an earlier one's."""
    import hashlib

    h = hashlib.sha256(b"rank%d" % rank)
    for key in ("torch", "train_cuda", "cuda_device"):
        if torch.is_tensor(state.get(key)):
            h.update(state[key].numpy().tobytes())
    seed = int.from_bytes(h.digest()[:8], "little") & (2 ** 63 - 1)
    out = _states(torch.Generator().manual_seed(seed).get_state(), np.random.RandomState(seed % 2 ** 32).get_state(),
                  random.Random(seed).getstate())
    if any(k in state for k in ("cuda_device", "train_cuda", "cuda")):
        out["cuda_seed"] = seed + 1  # CUDA's generator is seeded in place (its state has another layout)
    return out


def _cuda_state_of_seed(seed: int) -> torch.Tensor:
    outer = torch.cuda.get_rng_state()
    torch.cuda.manual_seed(seed)
    try:
        return torch.cuda.get_rng_state()
    finally:
        torch.cuda.set_rng_state(outer)


def set_rng_state(state: Dict[str, Any], train_rng: Optional[TrainRng] = None) -> None:
    if train_rng is not None:
        train_rng.state = state["torch"]
    else:
        torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))
    if not torch.cuda.is_available():
        return
    if "cuda_seed" in state:  # a rank added by an elastic resume
        torch.cuda.manual_seed(int(state["cuda_seed"]))
        if train_rng is not None and train_rng.cuda is not None:
            train_rng.cuda = _cuda_state_of_seed(int(state["cuda_seed"]) + 1)
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif "cuda" in state and torch.cuda.current_device() < len(state["cuda"]):
        # older checkpoints: every visible GPU's state; with another device layout this may be a
        # valid but other device's stream
        torch.cuda.set_rng_state(state["cuda"][torch.cuda.current_device()])
    if train_rng is not None and train_rng.cuda is not None and "train_cuda" in state:
        train_rng.cuda = state["train_cuda"]


def verify(folder: Path) -> Optional[str]:
    """None if every file the manifest lists is there with its size and hash; else why not.
    Only content is evidence: a read that fails for another reason than a missing file is a
    CheckpointReadError (the folder is not corrupt for it)."""
    try:
        return _mismatch(folder)
    except (FileNotFoundError, NotADirectoryError) as exc:
        return f"missing file {exc.filename}"
    except OSError as exc:
        raise CheckpointReadError(
            f"could not read {exc.filename or folder} while verifying checkpoint {folder} ({exc.strerror or exc}); "
            f"it is left in place, not taken for corrupt: run again once the file system answers") from exc


def _mismatch(folder: Path) -> Optional[str]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = [(str(rel), int(size), str(digest)) for rel, (size, digest) in manifest["files"].items()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, or entries of another shape
        return f"unreadable manifest ({exc})"
    for rel, size, digest in files:
        path = folder / rel
        if not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {size}"
        if file_sha256(path) != digest:
            return f"{rel} does not match its sha256"
    return None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _step_folders(root: Path) -> List[Tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            found.append((int(p.name[len(PREFIX):]), p))
    return sorted(found)


def held_shape(cfg: "Config", path: Optional[Path]) -> Optional[Dict[str, int]]:
    """The shape (world size, micro-batch, accumulation) the checkpoint at `path` was written
    with; older checkpoints recorded only the world size (with the config's batch and accumulation)."""
    if path is None:
        return None
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("shape"):
        return meta["shape"]
    world = meta.get("identity", {}).get("world_size")
    if world is None:
        return None
    return {"world_size": int(world), "batch_size": cfg.data.batch_size, "grad_accum": cfg.optim.grad_accum}


def _nvme_offload(engine: Any) -> Optional[str]:
    """Why a ZeRO-3 state swapped to NVMe is not re-partitioned (None: it is not): its partitions
    are placeholders in memory while swapped out, and the whole-state setters would write into them."""
    for name, cfg in (("offload_param", engine.zero_offload_param()), ("offload_optimizer", engine.zero_offload_optimizer())):
        if cfg is not None and getattr(cfg, "device", None) == "nvme":  # OffloadDeviceEnum is a str enum
            return f"zero_optimization.{name}.device=nvme (distributed.deepspeed_json) swaps partitions out of memory"
    return None


def _position(state: Dict[str, Any]) -> Tuple[int, int, int]:
    """(step, epoch, batch) of a TrainState's state_dict."""
    return int(state["step"]), int(state["epoch"]), int(state["batch"])


class Checkpointer:
    """Save / find / load the trainable state of a DeepSpeed engine in `root`, and decide when.

    `identity` is what a checkpoint must match to be resumed (backbone weights, prompt shape,
    classes, global batch, the config hash); `config_yaml` is stored beside it for people.
    """

    def __init__(self, root: Path, keep: int, every: int, dist: DistInfo, identity: Dict[str, Any],
                 config_yaml: str) -> None:
        self.root, self.keep, self.every, self.dist = Path(root), keep, every, dist
        self.identity, self.config_yaml = identity, config_yaml
        # The run's shape (engine/shape.py), recorded in every checkpoint; full_optimizer: the
        # ZeRO 1-3 optimizer state is saved whole too (engine/zero_state.py).
        self.shape: Dict[str, Any] = {}
        self.saved: Tuple[int, int, int] = (-1, -1, -1)  # the position (step, epoch, batch) saved or loaded last
        self.lost: List[str] = []  # checkpoints found corrupt when looking for the newest

    def _steps(self) -> List[Tuple[int, Path]]:
        return _step_folders(self.root)

    @staticmethod
    def newest_unverified(root: Path) -> Optional[Path]:
        """The newest step folder, unchecked (a peek before the run folder is claimed)."""
        steps = _step_folders(Path(root))
        return steps[-1][1] if steps else None

    def maybe_save(self, engine: Any, state: "TrainState", rng: TrainRng, last: bool = False) -> bool:
        """Save when `last` (a stop or the end) or every `every` steps, never twice for one
        position: the end of the last epoch saves again a step saved before its evaluation, so
        that the step's folder holds the final state. Collective: every rank calls it at the
        same point."""
        if not (last or state.step % self.every == 0) or state.step == 0:
            return False
        held = state.state_dict()  # only when a save is due: not on every step
        if _position(held) == self.saved:
            return False
        self.save(engine, state.step, {"state": held, "identity": self.identity, "shape": self.shape,
                                       "config": self.config_yaml}, rng)
        self.saved = _position(held)
        return True

    def save(self, engine: Any, step: int, meta: Dict[str, Any], train_rng: Optional[TrainRng] = None) -> Path:
        """Collective: every rank must call it at the same step. A full disk is reported on
        every rank as DiskFullError naming the folder; the partial step folder is removed."""
        comm = self.dist.comm
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f".tmp_{PREFIX}{step:08d}"
        failure = None
        if self.dist.is_main:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash mid-write
                # DeepSpeed's own save starts with this folder and a barrier: a disk already full
                # is found here, before any rank enters DeepSpeed's collectives.
                (tmp / "ds").mkdir(parents=True)
            except OSError as exc:
                if not is_disk_full(exc, self.root):
                    raise
                failure = f"no space left on {self.root} while saving checkpoint step {step} ({type(exc).__name__})"
        try:
            comm.agree(failure, DiskFullError)  # the barrier before the save, with the main rank's news
        except DiskFullError:
            if self.dist.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        def ds_save() -> None:
            try:
                engine.save_checkpoint(str(tmp / "ds"), tag=TAG, save_latest=False, exclude_frozen_parameters=True)
            except (OSError, RuntimeError) as exc:
                if is_disk_full(exc, self.root):
                    # DeepSpeed's save ends in a barrier the ranks whose writes succeeded now wait
                    # in; join it, so that every rank reaches the agreement below.
                    comm.barrier()
                raise

        def own_files() -> None:
            if self.shape.get("full_optimizer"):  # elastic ZeRO 1-3: the state whole as well
                from .zero_state import save_full

                save_full(engine, tmp, self.dist.is_main)  # collective: after every rank's DeepSpeed save agreed
            torch.save(rng_state(train_rng), tmp / f"rng_rank{self.dist.rank}.pt")

        for part in (ds_save, own_files):  # each ends in an agreement, so no rank enters the next alone
            try:
                part()
            except (OSError, RuntimeError) as exc:
                if not is_disk_full(exc, self.root):
                    raise
                failure = f"no space left on {self.root} while saving checkpoint step {step} ({type(exc).__name__})"
            try:
                comm.agree(failure, DiskFullError)
            except DiskFullError:
                if self.dist.is_main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
        comm.on_main(self._publish, tmp, final, step, meta, same=(DiskFullError,))  # rank 0 fails not alone
        return final

    def _publish(self, tmp: Path, final: Path, step: int, meta: Dict[str, Any]) -> None:
        """Rank 0, every rank's files written: meta.json and the manifest last, then the rename
        and the rotation."""
        try:
            _write_json(tmp / "meta.json", meta)
            files = {str(p.relative_to(tmp)): [p.stat().st_size, file_sha256(p)] for p in _files(tmp)}
            _write_json(tmp / "manifest.json", {"step": step, "files": files})
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(exc):
                raise DiskFullError(f"no space left on {self.root} while saving checkpoint step {step}") from None
            raise
        if final.exists():  # the same step saved again (its state before the final evaluation, then after)
            replaced = final.with_name(REPLACED + final.name)  # kept until the new one is in place:
            shutil.rmtree(replaced, ignore_errors=True)  # a kill in between leaves it, put back on resume
            os.replace(final, replaced)
            os.replace(tmp, final)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(tmp, final)
        for _, old in self._steps()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def newest_valid(self) -> Optional[Path]:
        """Rank 0 checks manifests newest first, moves bad ones aside and reports them; all
        ranks get its choice. `lost` names the corrupt ones."""
        # a read error on rank 0 (CheckpointReadError) is raised on every rank
        chosen = self.dist.comm.agreed(self._newest_valid_on_main if self.dist.is_main else lambda: -1)
        chosen = self.dist.comm.broadcast_int(chosen)
        return None if chosen < 0 else self.root / f"{PREFIX}{chosen:08d}"

    def _newest_valid_on_main(self) -> int:
        self._put_back_replaced()
        chosen = -1
        for step, path in reversed(self._steps()):
            problem = verify(path)
            if problem is None:
                chosen = step
                break
            aside = path.with_name(CORRUPT + path.name)
            shutil.rmtree(aside, ignore_errors=True)  # an older copy of the same step
            os.replace(path, aside)
            self.lost.append(path.name)
            print(f"spt: checkpoint {path} is corrupt or incomplete ({problem}); moved to {aside.name}",
                  file=sys.stderr, flush=True)
        if self.lost and chosen < 0:
            print(f"spt: no valid checkpoint is left in {self.root} ({len(self.lost)} corrupt, kept as "
                  f"{CORRUPT}*): the run starts again from step 0", file=sys.stderr, flush=True)
        return chosen

    def _put_back_replaced(self) -> None:
        """A step folder a kill left aside while the same step was saved again, the new one not
        yet in place: it is that step's checkpoint still."""
        if not self.root.is_dir():
            return
        for replaced in self.root.glob(f"{REPLACED}{PREFIX}*"):
            final = replaced.with_name(replaced.name[len(REPLACED):])
            if final.exists():
                shutil.rmtree(replaced, ignore_errors=True)  # the new one made it
            else:
                os.replace(replaced, final)

    def load(self, engine: Any, path: Path, train_rng: Optional[TrainRng] = None) -> Dict[str, Any]:
        """Refuse a checkpoint of something else, then restore engine state and RNG; returns meta.

        Identity keys the checkpoint does not record (written by an older version) are not compared.
        """
        meta = json.loads((path / "meta.json").read_text())
        held = meta.get("identity", {})
        for key, want in self.identity.items():
            if key in held and held[key] != want:
                raise CheckpointMismatchError(
                    f"checkpoint {path} was written for {key}={held[key]!r}, but this run has {key}={want!r}; "
                    f"it cannot be resumed with this config (use a new run.name or the original config)")
        # Another world size under ZeRO 1-3 (engine/shape.py allowed it: the state is saved whole):
        # DeepSpeed's module file without its per-rank optimizer partitions (ZeRO 3: only the
        # scheduler and counters, engine/zero_state.py), then the whole state re-partitioned over
        # this job's ranks.
        written_by = int((meta.get("shape") or {}).get("world_size", self.dist.world_size))
        repartition = written_by != self.dist.world_size and engine.zero_optimization_stage() > 0
        if repartition:  # the engine's stage (a deepspeed_json may set it), not only the config's
            why = (_nvme_offload(engine) or "fp16's loss-scaler state is not carried over" if engine.fp16_enabled() else
                   None if (path / "optimizer_full.pt").is_file() else
                   "it holds the optimizer state only in per-rank partitions (saved without launch.elastic)")
            if why:
                raise CheckpointMismatchError(
                    f"checkpoint {path} was written by {written_by} rank(s) under ZeRO stage "
                    f"{engine.zero_optimization_stage()} and cannot be re-partitioned over {self.dist.world_size}: "
                    f"{why}; continue the run on {written_by} rank(s)")
        if repartition and engine.zero_optimization_stage() == 3:
            from .zero_state import load_full, load_z3_counters

            load_z3_counters(engine, path / "ds" / TAG)
            load_full(engine, path)
        else:
            load_path, _ = engine.load_checkpoint(str(path / "ds"), tag=TAG, load_module_strict=False,
                                                  load_optimizer_states=not repartition,
                                                  load_lr_scheduler_states=True)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path / 'ds'}")
            if repartition:
                from .zero_state import load_full

                load_full(engine, path)
        rng_file = path / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
        else:  # more ranks than wrote the checkpoint (an elastic resume): a stream of its own
            saved = len(list(path.glob("rng_rank*.pt")))
            borrowed = torch.load(path / f"rng_rank{self.dist.rank % max(1, saved)}.pt", weights_only=True)
            rng = added_rank_rng(borrowed, self.dist.rank)
        set_rng_state(rng, train_rng)
        self.saved = _position(meta["state"])
        return meta
