"""The worker of tests/test_engine_packed.py, one process:

    python tests/pack_worker.py OUT CONFIG PACK_FILE          (one process)
    torchrun --nproc_per_node 2 tests/pack_worker.py OUT CONFIG PACK_FILE ranks

Continues member 0 of the pack stopped in OUT/killed alone (a copy of its folder, in
OUT/continued), resumes the pack in OUT/killed, trains the same pack uninterrupted in OUT/full and
every member alone (`train`, what `spt train` runs) in OUT/alone; writes OUT/report.json:
results, run folder names and files, and per member and tensor the largest difference of the
packed prompt pack to the lone one (`vs_alone`) and whether the resumed pack equals the
uninterrupted one bit for bit (`resumed_identical`).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path


def _at(cfg, out: Path):
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(out)))


def main(out: Path, config: str, pack_file: str) -> None:
    import torch
    from safetensors.torch import load_file

    from spt_dist.config import load_config
    from spt_dist.config.pack import load_pack
    from spt_dist.engine.pack import train_pack
    from spt_dist.engine.train import train
    from spt_dist.rundir import run_dir_for

    cfgs = [m.cfg for m in load_pack(config, pack_file, ["run.progress=false"])]
    # A member of the stopped pack continued alone (`spt train RUN_DIR` runs train on its config).
    lone_dir = run_dir_for(_at(cfgs[0], out / "continued"))
    shutil.copytree(run_dir_for(_at(cfgs[0], out / "killed")), lone_dir)
    continued = train(load_config(str(lone_dir / "config.yaml")), run_dir=str(lone_dir))
    report = {"continued": continued, "resumed": train_pack([_at(c, out / "killed") for c in cfgs]),
              "full": train_pack([_at(c, out / "full") for c in cfgs]),
              "alone": [train(_at(c, out / "alone")) for c in cfgs], "members": []}
    for cfg in cfgs:
        dirs = {k: run_dir_for(_at(cfg, out / k)) for k in ("killed", "full", "alone")}
        packs = {k: load_file(str(d / "prompt_pack.safetensors")) for k, d in dirs.items()}
        full, alone, resumed = packs["full"], packs["alone"], packs["killed"]
        report["members"].append({
            "names": {k: d.name for k, d in dirs.items()},
            "files": sorted(p.name for p in dirs["full"].iterdir()),
            "checkpoints": sorted(p.name for p in (dirs["full"] / "checkpoints").iterdir()),
            "vs_alone": {k: [float((full[k] - alone[k]).abs().max()), float(alone[k].abs().max())] for k in alone},
            "resumed_identical": all(torch.equal(full[k], resumed[k]) for k in full) and set(full) == set(resumed),
            "events": [json.loads(line)["event"] for line in (dirs["killed"] / "metrics.jsonl").read_text().splitlines()],
        })
    full = load_file(str(run_dir_for(_at(cfgs[0], out / "full")) / "prompt_pack.safetensors"))
    alone = load_file(str(lone_dir / "prompt_pack.safetensors"))
    report["continued_vs_full"] = {k: [float((full[k] - alone[k]).abs().max()), float(full[k].abs().max())]
                                   for k in full}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))


def ranks(out: Path, config: str, pack_file: str) -> None:
    """Under torchrun: the pack and every member alone on the same ranks; OUT/ranks.json (rank 0)."""
    import torch.distributed as dist
    from safetensors.torch import load_file

    from spt_dist.config.pack import load_pack
    from spt_dist.engine.pack import train_pack
    from spt_dist.engine.train import train
    from spt_dist.rundir import run_dir_for

    cfgs = [m.cfg for m in load_pack(config, pack_file, ["run.progress=false"])]
    report = {"pack": train_pack([_at(c, out / "pack") for c in cfgs]),
              "alone": [train(_at(c, out / "alone")) for c in cfgs], "vs_alone": []}
    # Finished: read back by rank 0 for every rank before any input check (made to fail here).
    import spt_dist.engine.pack as engine_pack

    def refuse(*_):
        raise AssertionError("a finished member's inputs were checked again")

    engine_pack.preflight_run = refuse
    report["again"] = train_pack([_at(c, out / "pack") for c in cfgs])
    if dist.get_rank() == 0:
        for cfg in cfgs:
            a = load_file(str(run_dir_for(_at(cfg, out / "pack")) / "prompt_pack.safetensors"))
            b = load_file(str(run_dir_for(_at(cfg, out / "alone")) / "prompt_pack.safetensors"))
            report["vs_alone"].append({k: [float((a[k] - b[k]).abs().max()), float(b[k].abs().max())] for k in b})
        (out / "ranks.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    (ranks if sys.argv[4:] == ["ranks"] else main)(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
