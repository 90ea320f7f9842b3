"""The run folder contract, torch-free: its name and identity, config.yaml, results.json, the
lock that lets one job at a time train it, metrics.jsonl and the trackers fed next to it
(trackers.json keeps the ids of its tracked runs). Shared by the engine (which
writes a run folder) and the launcher (which names, checks and reads them)."""
from .identity import config_clash, config_hash, default_run_name, run_dir_for
from .files import RESULTS, finished_results, read_results
from .lock import RunFolderBusy, RunLock

__all__ = ["RESULTS", "RunFolderBusy", "RunLock", "config_clash", "config_hash", "default_run_name",
           "finished_results", "read_results", "run_dir_for"]
