"""The trackers `run.loggers` names (TensorBoard, Weights & Biases, MLflow), fed next to metrics.jsonl.

metrics.jsonl stays the record every tool reads; a tracker is a view of it, on rank 0 only.
Every tracker starts before training, and one that cannot start is a LoggerError naming
run.loggers and what failed. A tracked run belongs to its run folder: the W&B run id and the
MLflow run id are recorded in the folder's trackers.json when it first starts, so a resumed run
continues the same tracked run, and a folder made anew under the same path starts a new one.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from spt_dist.config import Config, ConfigError
from spt_dist.config.dotted import flatten
from spt_dist.io import write_json_atomic

# logger -> (the package it imports, the setup.py extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", None), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
IDS = "trackers.json"
# An MLflow run's end status for each end of a training job.
MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}


class LoggerError(ConfigError):
    """A tracker in run.loggers that is not installed or cannot start."""


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def check_loggers(names: Sequence[str]) -> None:
    """Every listed tracker's package is importable (torch-free; the login node runs it too)."""
    for name in names:
        package, extra = PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            how = f'pip install -e ".[{extra}]" (or pip install {package})' if extra else f"pip install {package}"
            raise LoggerError(f"config key 'run.loggers' lists {name}, but the {package} package is not "
                              f"installed; install it with {how}, or remove {name} from run.loggers")


class TensorBoard:
    name = "tensorboard"

    def __init__(self, cfg: Config, run_dir: Path, ids: Dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, event: str, step: int, scalars: Dict[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)

    def close(self, status: str) -> None:
        self._writer.close()


class WandB:
    """Offline mode writes under <run folder>/wandb/ and opens no connection (`wandb sync` uploads)."""
    name = "wandb"

    def __init__(self, cfg: Config, run_dir: Path, ids: Dict[str, Any]) -> None:
        import wandb
        from omegaconf import OmegaConf

        r = cfg.run
        run_id = ids.setdefault("wandb_id", secrets.token_hex(8))
        _save_ids(run_dir, ids)  # before init: a crash during it must not lose the id
        self._run = wandb.init(project=r.wandb_project, entity=r.wandb_entity, id=run_id, name=run_dir.name,
                               dir=str(run_dir), mode=r.wandb_mode, resume="allow",
                               config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                               settings=wandb.Settings(console="off"))  # the job's own streams stay as they are

    def log(self, event: str, step: int, scalars: Dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self, status: str) -> None:
        self._run.finish(exit_code=0 if status in MLFLOW_STATUS else 1)


class MLflow:
    """Default store: a file store in <run.out_dir>/mlruns, one folder per run (safe for a job
    array on a shared file system, where one SQLite file would not be)."""
    name = "mlflow"

    def __init__(self, cfg: Config, run_dir: Path, ids: Dict[str, Any]) -> None:
        uri = cfg.run.mlflow_tracking_uri or (run_dir.parent / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # recent MLflow 3 refuses it otherwise
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._client = client = MlflowClient(tracking_uri=uri)
        held = ids.get("mlflow", {})
        run_id = held.get("run_id") if held.get("tracking_uri") == uri else None
        if run_id is not None:
            try:
                client.update_run(run_id, status="RUNNING")  # resumed: the same MLflow run
            except MlflowException:
                run_id = None  # deleted from the store: start a new one
        if run_id is None:
            run_id = self._create(cfg, run_dir)
            ids["mlflow"] = {"tracking_uri": uri, "run_id": run_id}
            _save_ids(run_dir, ids)
        self._run_id = run_id

    def _create(self, cfg: Config, run_dir: Path) -> str:
        from mlflow.entities import Param
        from omegaconf import OmegaConf

        client, name = self._client, cfg.run.mlflow_experiment
        experiment = client.get_experiment_by_name(name)
        try:
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        except Exception:  # another job of the sweep created it first
            experiment_id = client.get_experiment_by_name(name).experiment_id
        run = client.create_run(experiment_id, run_name=run_dir.name, tags={"spt.run_dir": str(run_dir.resolve())})
        flat = OmegaConf.to_container(OmegaConf.structured(cfg))
        params = [Param(k, str(v)[:500]) for k, v in flatten(flat).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id

    def log(self, event: str, step: int, scalars: Dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def close(self, status: str) -> None:
        self._client.set_terminated(self._run_id, MLFLOW_STATUS.get(status, "FAILED"))


TRACKERS = {t.name: t for t in (TensorBoard, WandB, MLflow)}




def _load_ids(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / IDS
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise LoggerError(f"config key 'run.loggers': {path} is not valid JSON ({exc}); it holds the ids of "
                          f"this run's tracked runs: repair it, or delete it to start new ones") from None


def _save_ids(run_dir: Path, ids: Dict[str, Any]) -> None:
    write_json_atomic(run_dir / IDS, ids)


def start_trackers(cfg: Config, run_dir: Path, enabled: bool) -> List[Any]:
    """The started trackers of run.loggers (none where not `enabled`, i.e. off rank 0)."""
    if not enabled or not cfg.run.loggers:
        return []
    check_loggers(cfg.run.loggers)
    run_dir, ids, started = Path(run_dir), _load_ids(Path(run_dir)), []
    for name in cfg.run.loggers:
        try:
            started.append(TRACKERS[name](cfg, run_dir, ids))
        except Exception as exc:  # noqa: BLE001 - any failure to start is the user's to see before training
            for tracker in started:
                tracker.close("failed")
            raise LoggerError(f"config key 'run.loggers': {name} failed to start: {_first_line(exc)}") from None
    return started
