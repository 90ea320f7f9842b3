"""`initialize_prompts`: SPT's prototype init of a model's prompts, as one distributed step.

Flow: check inputs (every rank agrees before anything heavy) -> cache lookup (rank 0 reads,
broadcast) -> on a miss, one streaming un-prompted pass over this rank's share of the
selected training images -> global candidates -> prototypes -> cache write (rank 0) ->
prompts copied into `model.prompts` (dtype kept). With method.track_alignment the k-means
prototypes are also computed (from the same pass) as the reference of the alignment analysis.
Images pass through the evaluation transform (an image drawn k times: its tokens k times) or,
with method.init_transform=train, each draw through the training transform with its own
seeded augmentation (DrawnData): either way the result does not depend on the world size.
"""
from __future__ import annotations

import dataclasses
import sys
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import torch

from spt_dist.config.schema import Config
from spt_dist.distributed import Comm

from .cache import cache_path, keys_digest, load_prototypes, save_prototypes
from .draws import draw_with_replacement, draws_digest
from .errors import PromptInitError
from .extract import stream_candidates
from .pass_plan import STRATEGY_KINDS, InitPlan
from .prototypes import Prototypes, combine

if TYPE_CHECKING:
    from spt_dist.data import ShardIndex
    from spt_dist.model import InputSpec

REFERENCE_STRATEGY = "kmeans"


@dataclass
class InitResult:
    prompts: Optional[torch.Tensor]     # (layers, p, d) float32 as written into model.prompts; None for init=vpt
    reference: Optional[torch.Tensor]   # (layers, p, d) k-means prototypes for alignment_metrics, or None
    stats: List[Dict[str, float]] = field(default_factory=list)  # per layer, of prompts (else reference)
    cache_hit: bool = False             # True: nothing was computed, no forward pass ran
    seconds: float = 0.0
    images: int = 0                     # images the prototypes come from (all ranks; draws, with replacement)
    strategy: str = "vpt"


def select_init_draws(cfg: Config, index: "ShardIndex", train_keys: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Training key -> times it is drawn for the prototypes (index order). Without
    method.init_replacement every key of select_init_keys once; with it, method.init_images
    draws (0: as many as the run's training keys) with replacement from the run's training keys.
    `train_keys`: the run's training keys when the caller has selected them (TrainData.selected_keys)."""
    if not cfg.method.init_replacement:
        return dict.fromkeys(select_init_keys(cfg, index, train_keys), 1)
    keys = _training_keys(cfg, index, train_keys)
    return draw_with_replacement(keys, cfg.method.init_images or len(keys), cfg.run.seed)


def _training_keys(cfg: Config, index: "ShardIndex", given: Optional[Sequence[str]]) -> List[str]:
    """The run's training keys (data.fraction of the training split), as TrainData selects them."""
    from spt_dist.data import select_fraction

    if given is not None:
        return list(given)
    split, d = cfg.data.train_split, cfg.data
    return (select_fraction(index, split, d.fraction, d.fraction_seed) if d.fraction < 1.0
            else index.split(split).keys())


def select_init_keys(cfg: Config, index: "ShardIndex", train_keys: Optional[Sequence[str]] = None) -> List[str]:
    """The training keys prototypes come from: the run's fraction subset, then, with
    method.init_images = n > 0, n of them chosen deterministically (class-stratified when
    the whole split is used). With method.init_replacement: the distinct keys drawn."""
    from spt_dist.data import select_count
    from spt_dist.data.fraction import hashed_order

    if cfg.method.init_replacement:
        return list(select_init_draws(cfg, index, train_keys))
    split, d, n = cfg.data.train_split, cfg.data, cfg.method.init_images
    keys = _training_keys(cfg, index, train_keys)
    if 0 < n < len(keys):
        if d.fraction < 1.0:
            chosen = set(hashed_order(keys, d.fraction_seed)[:n])
            keys = [k for k in keys if k in chosen]
        else:
            keys = select_count(index, split, n, d.fraction_seed)
    return keys


def _check_model(model: torch.nn.Module, cfg: Config, plan: InitPlan, n_keys: int, world_size: int,
                 n_draws: int) -> None:
    m = cfg.method
    backbone = getattr(model, "backbone", None)
    if not (hasattr(model, "layer_tokens") and hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks")):
        raise ValueError("prototype init needs a PromptedViT (layer_tokens) around a timm VisionTransformer "
                         "backbone (patch_embed, blocks)")
    prompts = model.prompts
    if prompts is None:
        raise ValueError("the model has no prompts (method.prompt_length=0); nothing to initialise")
    # model.prompts is what the prototypes are computed for (the plan's layers and p come from
    # it); a method that describes other prompts is the caller's mistake, said before any pass.
    depth = len(backbone.blocks)
    layers = depth if m.deep else 1
    if tuple(prompts.shape) != (layers, m.prompt_length, model.embed_dim):
        raise ValueError(f"model.prompts has shape {tuple(prompts.shape)} but method.deep={m.deep}, "
                         f"method.prompt_length={m.prompt_length} on a {depth}-block, width-{model.embed_dim} "
                         f"backbone expect {(layers, m.prompt_length, model.embed_dim)}")
    if m.init_candidates < m.prompt_length:
        raise ValueError(f"method.init_candidates={m.init_candidates} is fewer than "
                         f"method.prompt_length={m.prompt_length} prompts")
    patches = int(backbone.patch_embed.num_patches)
    pooled = [s for s in plan.strategies if STRATEGY_KINDS[s] != "tokens"]
    if pooled and patches < m.prompt_length:
        raise ValueError(f"{pooled[0]} cuts each image's {patches} patch tokens into method.prompt_length="
                         f"{m.prompt_length} windows; use prompt_length <= {patches} or init=kmeans")
    if pooled and plan.window_layout == "spt" and m.prompt_length < 2:
        raise ValueError(f"method.window_layout=spt cuts the tokens into p-1 windows plus one: "
                         f"method.prompt_length must be at least 2 (got {m.prompt_length})")
    if n_keys < world_size:
        raise ValueError(f"{n_keys} image(s) selected for prototype init but {world_size} ranks: every rank "
                         f"needs at least one (raise method.init_images / data.fraction or use fewer ranks)")
    per_image = patches if not pooled else m.prompt_length
    if n_draws * per_image < m.prompt_length:
        raise ValueError(f"{n_draws} image(s) x {per_image} tokens give fewer candidate tokens than "
                         f"method.prompt_length={m.prompt_length}")


def _cache_fields(backbone_hash: str, cfg: Config, index: "ShardIndex", draws: Dict[str, int], plan: InitPlan,
                  inputs: "InputSpec") -> Dict[str, Dict[str, Any]]:
    """Per strategy, everything its prototypes depend on (the cache key)."""
    m = cfg.method
    keys = draws_digest(draws) if m.init_replacement else keys_digest(list(draws))
    common = {"backbone": backbone_hash, "data": index.content_hash, "replacement": m.init_replacement,
              "window_layout": plan.window_layout, "transform": m.init_transform,
              "split": cfg.data.train_split, "keys": keys, "fraction": cfg.data.fraction,
              "init_images": m.init_images, "preset": cfg.data.preset, "inputs": list(map(str, inputs)),
              "layers": plan.layers, "prompt_length": plan.prompt_length, "seed": plan.seed,
              "candidates": plan.capacity}
    kmeans = {"kmeans_iters": plan.kmeans_iters, "kmeans_tol": plan.kmeans_tol}
    return {s: dict(common, strategy=s, **(kmeans if s == "kmeans" else {})) for s in plan.strategies}


def _lookup(model: torch.nn.Module, backbone_hash: Optional[str], cfg: Config, index: "ShardIndex",
            draws: Dict[str, int], plan: InitPlan, inputs: "InputSpec", is_reader: bool) -> tuple:
    """(cache key fields, cached prototypes) per strategy; empty unless `is_reader` and a cache is set."""
    if not (is_reader and cfg.method.cache_dir):
        return {}, {}
    if backbone_hash is None:
        from spt_dist.model import weights_hash

        backbone_hash = weights_hash(model.backbone)
    fields = _cache_fields(backbone_hash, cfg, index, draws, plan, inputs)
    found: Dict[str, Prototypes] = {}
    for s, f in fields.items():
        hit = load_prototypes(cache_path(cfg.method.cache_dir, s, f), f)
        if hit is not None and tuple(hit.tensor.shape) == tuple(model.prompts.shape):
            found[s] = hit
    return fields, found


def _compute(model: torch.nn.Module, cfg: Config, index: "ShardIndex", draws: Dict[str, int], plan: InitPlan,
             comm: Comm, device: torch.device | str, inputs: "InputSpec") -> Dict[str, Prototypes]:
    from spt_dist.data import DrawnData, EvalData

    keys = list(draws)
    data_cfg = dataclasses.replace(cfg.data, eval_batch_size=cfg.method.init_batch_size)
    where = (data_cfg, index, cfg.data.train_split, *inputs, comm.rank, comm.world_size)
    if cfg.method.init_transform == "train":  # every draw its own augmented image, named per copy
        data, repeats = DrawnData(*where, draws=draws, seed=cfg.run.seed), None
    else:  # one deterministic image per key, its tokens repeated per draw
        data, repeats = EvalData(*where, keys=keys), (draws if cfg.method.init_replacement else None)
    total = math.ceil(data.num_samples / comm.world_size / cfg.method.init_batch_size)
    progress = comm.rank == 0 and cfg.run.progress and sys.stderr.isatty()
    pools, seen = comm.agreed(stream_candidates, model, data, plan, device, progress, total, repeats,
                              kind=PromptInitError)
    comm.agree(None if seen else f"no images reached rank {comm.rank} ({len(keys)} images over "
                                 f"{comm.world_size} ranks); use fewer ranks or more images", PromptInitError)
    return combine(pools, plan, comm)


def initialize_prompts(model: torch.nn.Module, cfg: Config, index: "ShardIndex", comm: Comm,
                       device: torch.device | str, backbone_hash: Optional[str] = None,
                       inputs: Optional["InputSpec"] = None,
                       train_keys: Optional[Sequence[str]] = None) -> InitResult:
    """Prototype-initialise `model.prompts` per cfg.method (every rank calls it with the job's
    `comm`, DistInfo.comm); returns identical results on every rank.

    What the caller has computed already is passed down, not redone: `backbone_hash`, the
    backbone's weights_hash (hashing a ViT-H reads 2.5 GB); `inputs`, its InputSpec (the
    weight file's format decides it); `train_keys`, the run's training keys
    (TrainData.selected_keys). Each is computed here when not given. The prompts' shape is
    model.prompts'."""
    start = time.perf_counter()
    m = cfg.method
    wanted = ([m.init] if m.init != "vpt" else []) + ([REFERENCE_STRATEGY] if m.track_alignment else [])
    wanted = list(dict.fromkeys(wanted))
    if not wanted:
        return InitResult(None, None, strategy=m.init, seconds=time.perf_counter() - start)

    def prepare():
        from spt_dist.model import input_spec

        draws = select_init_draws(cfg, index, train_keys)
        prompts = getattr(model, "prompts", None)
        layers, length = tuple(prompts.shape[:2]) if prompts is not None else (0, m.prompt_length)
        plan = InitPlan(tuple(wanted), layers, length, m.init_candidates, cfg.run.seed,
                        m.kmeans_iters, m.kmeans_tol, m.window_layout)
        _check_model(model, cfg, plan, len(draws), comm.world_size, sum(draws.values()))
        return draws, plan, inputs if inputs is not None else input_spec(cfg)

    draws, plan, inputs = comm.agreed(prepare, kind=PromptInitError)
    if comm.rank == 0 and not m.init_replacement and m.init_images > len(draws):
        print(f"spt: method.init_images={m.init_images} is more than the run's {len(draws)} training images: "
              f"the prototypes come from all {len(draws)}", file=sys.stderr, flush=True)

    # Cache: rank 0 hashes the weights, looks up and reads; everyone receives the same answer.
    fields, found = comm.agreed(_lookup, model, backbone_hash, cfg, index, draws, plan, inputs,
                                comm.rank == 0, kind=PromptInitError)
    found = comm.broadcast_object(found)
    misses = [s for s in wanted if s not in found]
    if misses:
        plan = dataclasses.replace(plan, strategies=tuple(misses))
        computed = _compute(model, cfg, index, draws, plan, comm, device, inputs)
        found.update(computed)
        if fields:
            for s in misses:
                try:
                    save_prototypes(cache_path(m.cache_dir, s, fields[s]), computed[s], fields[s])
                except OSError as exc:  # a read-only cache costs time, not correctness
                    warnings.warn(f"prototype cache not written ({exc})")

    prompts = found[m.init].tensor if m.init != "vpt" else None
    if prompts is not None:
        with torch.no_grad():
            model.prompts.copy_(prompts.to(device=model.prompts.device, dtype=model.prompts.dtype))
    reference = found[REFERENCE_STRATEGY].tensor.clone() if m.track_alignment else None
    return InitResult(prompts=prompts, reference=reference, stats=found[wanted[0]].stats, cache_hit=not misses,
                      seconds=time.perf_counter() - start, images=sum(draws.values()), strategy=m.init)
