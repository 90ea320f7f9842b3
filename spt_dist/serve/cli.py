"""`spt serve` (HTTP server of a prompt bank) and `spt predict` (offline, through the same bank).

Building the parser imports neither torch nor the web framework: each command imports them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List


def _named_packs(specs: List[str]) -> Dict[str, str]:
    """PATH or NAME=PATH per pack; a bare PATH is named after its run folder (or file stem)."""
    from spt_dist.errors import SptError

    from .bank import task_name_for

    named: Dict[str, str] = {}
    for spec in specs:
        name, path = spec.split("=", 1) if "=" in spec and not Path(spec).exists() else (task_name_for(spec), spec)
        if not Path(path).is_file():
            raise SptError(f"spt serve: no prompt pack at {path}")
        if name in named:
            raise SptError(f"spt serve: two packs named {name!r} ({named[name]}, {path}); name them NAME=PATH")
        named[name] = path
    return named


def _serve(args: argparse.Namespace) -> int:
    from spt_dist.config.hub import resolve_checkpoint
    from spt_dist.errors import SptError

    from .bank import PromptBank
    from .server import serve_forever

    backbone = resolve_checkpoint(args.backbone, key="BACKBONE")
    if not Path(backbone).is_file():
        raise SptError(f"spt serve: no backbone weights at {backbone}")
    bank = PromptBank.open(backbone, _named_packs(args.packs), lengths=args.lengths, device=args.device)
    try:
        serve_forever(bank, args.host, args.port, max_batch_size=args.max_batch_size,
                      max_wait_ms=args.max_wait_ms, max_image_bytes=args.max_image_bytes,
                      max_pack_bytes=args.max_pack_bytes)
    except OSError as exc:
        raise SptError(f"spt serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def _predict(args: argparse.Namespace) -> int:
    from spt_dist.config.hub import resolve_checkpoint
    from spt_dist.errors import SptError

    from .bank import PromptBank
    from .offline import classify_files, score_shards

    backbone = resolve_checkpoint(args.backbone_checkpoint, key="--backbone-checkpoint")
    missing = [p for p in (args.pack, backbone, *args.inputs) if not Path(p).exists()]
    if missing:
        raise SptError(f"spt predict: not found: {', '.join(missing)}")
    bank = PromptBank.open(backbone, {"pack": args.pack}, device=args.device)
    inputs = args.inputs
    if len(inputs) == 1 and (Path(inputs[0]) / "index.json").is_file():
        res = score_shards(bank, {"pack": inputs[0]}, args.split)["pack"]
        print(json.dumps({"split": args.split, **res}, sort_keys=True))
        return 0
    for path, (top,) in zip(inputs, classify_files(bank, inputs, "pack", top_k=1)):
        print(f"{path}\t{top['index']}\t{top['label']}")
    return 0


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where the backbone, prompts and heads run (default auto: the GPU when CUDA is "
                        "available, else the CPU); images are decoded on the host")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve prompt packs of one backbone over HTTP (mixed-task batches)")
    p.add_argument("backbone", help="the backbone weights every pack was trained on (a file, or hf-hub:<org>/<name> in the local cache)")
    p.add_argument("packs", nargs="+", metavar="PACK", help="prompt_pack.safetensors files, as PATH or NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--max-batch-size", type=int, default=32, help="most images per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest a request waits for others to share its pass")
    p.add_argument("--max-image-bytes", type=int, default=10 * 2**20, help="largest image upload")
    p.add_argument("--max-pack-bytes", type=int, default=256 * 2**20, help="largest pack upload (PUT)")
    p.add_argument("--lengths", choices=("group", "pad"), default="group",
                   help="packs of different prompt lengths: one pass per length, or padded and masked")
    _device_option(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("predict", help="apply a prompt pack to images or a shard folder")
    p.add_argument("pack", help="prompt_pack.safetensors of a run")
    p.add_argument("--backbone-checkpoint", required=True,
                   help="the backbone weights the run used (a file, or hf-hub:<org>/<name> in the local cache)")
    p.add_argument("--split", default="test", help="split to score when INPUT is a shard folder")
    p.add_argument("inputs", nargs="+", help="image files, or one shard folder (with index.json)")
    _device_option(p)
    p.set_defaults(func=_predict)
