"""`spt init CONFIG [overrides]` (prototype init only) and `spt plot-alignment RUN_DIR ... -o PNG`."""
from __future__ import annotations

import argparse
import os

from spt_dist.config.cli import add_config_arguments


def _format_stats(result) -> str:
    lines = [f"prototype init: strategy={result.strategy} images={result.images} "
             f"cache_hit={result.cache_hit} seconds={result.seconds:.2f}"]
    for layer, stats in enumerate(result.stats):
        cells = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())
        lines.append(f"  layer {layer:2d}: {cells}")
    return "\n".join(lines)


def _save(result, path: str) -> str:
    from safetensors.torch import save_file

    from spt_dist.io import atomic_path

    tensors = {name: t.detach().cpu().contiguous() for name, t in
               (("prompts", result.prompts), ("reference", result.reference)) if t is not None}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"strategy": result.strategy, "images": str(result.images)})
    return path


def _init(args: argparse.Namespace) -> int:
    from spt_dist.config import load_config
    from spt_dist.data import ShardIndex
    from spt_dist.distributed import init_distributed, seed_everything
    from spt_dist.model import build_model, input_spec, read_weights

    from .alignment import alignment_metrics
    from .initialize import initialize_prompts

    cfg = load_config(args.config, list(args.overrides) + (["run.progress=false"] if args.no_progress else []))
    dist = init_distributed(cfg.distributed.backend, cfg.distributed.timeout_s, deepspeed=False)
    index = ShardIndex.load(os.path.expanduser(cfg.data.root))
    seed_everything(cfg.run.seed)  # as in training: the same model (random backbone included)
    weights = read_weights(cfg)  # the backbone file, read once: the model and its inputs both come from it
    model = build_model(cfg, index.num_classes, weights).to(dist.device)
    inputs = input_spec(cfg, weights.fmt if weights else None)
    result = initialize_prompts(model, cfg, index, dist.comm, dist.device, inputs=inputs)  # errors: alike on every rank
    if dist.rank == 0:
        print(_format_stats(result))
        if args.save:
            print(f"  saved: {_save(result, args.save)}")
        if result.prompts is not None and result.reference is not None:
            align = alignment_metrics(result.prompts, result.reference)
            print("  alignment of the initial prompts: " + " ".join(f"{k}={v:.3f}" for k, v in align.items()))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .alignment import plot_alignment

    print(plot_alignment(args.run_dirs, args.output))
    return 0


def register(sub) -> None:
    init = sub.add_parser("init", help="SPT prototype init only (single process or under torchrun)")
    add_config_arguments(init)
    init.add_argument("--save", metavar="FILE", help="also write prompts (and reference) as .safetensors")
    init.add_argument("--no-progress", action="store_true",
                      help="no progress bar, as run.progress=false (also off when stderr is not a terminal)")
    init.set_defaults(func=_init)
    plot = sub.add_parser("plot-alignment", help="plot prompt-to-prototype alignment over training")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders holding metrics.jsonl")
    plot.add_argument("-o", "--output", required=True, help="image file to write (.png)")
    plot.set_defaults(func=_plot)
