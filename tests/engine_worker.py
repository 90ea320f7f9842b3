"""The multi-rank worker of the engine tests, run under torchrun:

    python -m torch.distributed.run --nproc_per_node 2 tests/engine_worker.py MODE OUT CONFIG [EXTRA...]

MODE: matrix (every ZeRO stage x precision), resume (an uninterrupted run next to a cut and
resumed one, compared tensor by tensor), signal (one process; a signal raised at a chosen
moment of setup or of the final writes), finished_meanwhile (rank 1 puts a finished run's
results.json back, as another job finishing it would, while rank 0 has already started
train()), finished_unchecked (train() on a finished run with the input checks made to fail).
Rank 0 writes OUT/MODE.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load_pack(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _worker(mode: str, out: Path, config: Path, extra: List[str]) -> None:
    import torch
    import torch.distributed as dist

    from spt_dist.config import load_config
    from spt_dist.engine.train import train

    report: Dict[str, object] = {}
    if mode == "matrix":
        for zero in (0, 1, 2, 3):
            for dtype in ("fp32", "bf16"):
                name = f"z{zero}_{dtype}"
                cfg = load_config(str(config), [f"distributed.zero_stage={zero}", f"precision.dtype={dtype}",
                                                f"run.name={name}", *extra])
                report[name] = train(cfg)
    elif mode == "run":  # one train() call: max_steps (0 = to the end), then overrides
        stop_at, overrides = int(extra[0]), extra[1:]
        report = train(load_config(str(config), overrides), max_steps=stop_at or None)
    elif mode == "finished_meanwhile":  # extra: the hidden results.json, then overrides
        import time

        hidden, overrides, started = Path(extra[0]), extra[1:], out / "rank0_started"
        if os.environ["RANK"] == "0":
            started.write_text("")
        else:
            while not started.exists():
                time.sleep(0.05)
            time.sleep(2)  # rank 0 is past the start of train(), waiting for this rank to meet
            hidden.rename(hidden.with_name("results.json"))
        report = train(load_config(str(config), overrides))
    elif mode == "finished_unchecked":  # a finished run read back before its inputs are checked
        import spt_dist.engine.train as engine_train

        def refuse(*_):
            raise AssertionError("a finished run's inputs were checked again (a moved weights file would fail it)")

        engine_train.preflight_run = refuse
        report = train(load_config(str(config), extra))
    elif mode == "resume":
        stop_at = int(extra[0])
        overrides = extra[1:]
        full = train(load_config(str(config), ["run.name=full", *overrides]))
        cut_cfg = load_config(str(config), ["run.name=cut", *overrides])
        first = train(cut_cfg, max_steps=stop_at)
        resumed = train(cut_cfg)
        report = {"full": full, "first": first, "resumed": resumed}
        if dist.get_rank() == 0:
            a = _load_pack(out / "full" / "prompt_pack.safetensors")
            b = _load_pack(out / "cut" / "prompt_pack.safetensors")
            report["identical"] = {k: bool((a[k] == b[k]).all()) and a[k].dtype == b[k].dtype for k in a}
            report["max_abs_diff"] = {k: float((a[k] - b[k]).abs().max()) for k in a}
    elif mode == "features":
        # A linear probe with and without the feature cache, and the cached one cut and resumed.
        stop_at, overrides = int(extra[0]), ["method.name=linear", *extra[1:]]
        plain = train(load_config(str(config), ["run.name=plain", "method.feature_cache=never", *overrides]))
        cached = train(load_config(str(config), ["run.name=cached", *overrides]))
        cut_cfg = load_config(str(config), ["run.name=cut", *overrides])
        report = {"plain": plain, "cached": cached, "first": train(cut_cfg, max_steps=stop_at),
                  "resumed": train(cut_cfg)}
        if dist.get_rank() == 0:
            packs = {name: _load_pack(out / name / "prompt_pack.safetensors") for name in ("plain", "cached", "cut")}
            report["max_abs_diff"] = {k: float((packs["plain"][k] - packs["cached"][k]).abs().max())
                                      for k in packs["plain"]}
            report["resume_identical"] = all(torch.equal(packs["cached"][k], packs["cut"][k]) for k in packs["cut"])
    elif mode == "signal":
        # One process, no launcher: the signal is raised on this process at a chosen moment
        # (phase setup: inside build_parts; phase final: inside the prompt pack export).
        import signal

        import spt_dist.engine.train as engine_train

        phase, overrides = extra[0], extra[1:]
        sig, target = {"setup": (signal.SIGUSR2, "build_parts"),
                       "final": (signal.SIGTERM, "export_prompt_pack")}[phase]
        original, fired = getattr(engine_train, target), []

        def hooked(*args, **kwargs):
            if not fired:
                fired.append(sig)
                os.kill(os.getpid(), sig)
            return original(*args, **kwargs)

        setattr(engine_train, target, hooked)
        outer_calls: List[int] = []

        def outer(signum, frame):  # stands in for submitit's handler
            outer_calls.append(signum)

        signal.signal(signal.SIGUSR2, outer)
        cfg = load_config(str(config), ["run.name=sig", *overrides])
        report["first"] = train(cfg)
        report["handler_restored"] = signal.getsignal(signal.SIGUSR2) is outer
        report["resumed"] = train(cfg)
        report["outer_calls"] = outer_calls
        (out / f"{mode}.json").write_text(json.dumps(report, indent=1, default=str))
        return
    else:
        raise SystemExit(f"unknown mode {mode}")
    if dist.get_rank() == 0:
        (out / f"{mode}.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
