"""The one config schema of a run.

Every field carries its constraint in ``metadata``: ``choices`` (allowed values), ``subset``
(a list of allowed values, each at most once) or ``range`` (lo, hi, lo_open, hi_open).
:func:`spt_dist.config.validate.validate` walks them, so adding a setting here is the only
place its rule is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

INF = float("inf")


def choice(default: Any, *choices: Any, help: str = "") -> Any:
    return field(default=default, metadata={"choices": list(choices), "help": help})


def subset(default: List[Any], *choices: Any, help: str = "") -> Any:
    return field(default_factory=lambda: list(default), metadata={"subset": list(choices), "help": help})


def bounded(default: Any, lo: float = -INF, hi: float = INF, lo_open: bool = False,
            hi_open: bool = False, help: str = "") -> Any:
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open), "help": help})


METHODS = ("linear", "full", "vpt", "spt")
INITS = ("vpt", "random_sample", "mean_pool", "max_pool", "kmeans")
POOLS = ("auto", "token", "mean", "mean_with_prompts")
CHECKPOINT_FORMATS = ("auto", "timm", "npz", "mae", "mocov3")
PRESETS = ("vtab", "fgvc", "spt_vtab", "spt_fgvc", "small")
HEAD_INITS = ("trunc_normal", "kaiming")
MAE_HEAD_NORMS = ("new", "pretrained")
WINDOW_LAYOUTS = ("even", "spt")
INIT_TRANSFORMS = ("eval", "train")
STAGES = ("custom", "tune", "final")
LR_SCHEDULES = ("per_iteration", "per_epoch")
LOCK_REFRESH_MAX_S = 5.0  # the longest interval between two refreshes of a run folder's lock (engine/watchdog.py)
SGD_NO_DECAY = ("head_bias", "none")
LOGGERS = ("tensorboard", "wandb", "mlflow")
WANDB_MODES = ("offline", "online")
FEATURE_CACHE = ("auto", "never")


@dataclass
class ModelConfig:
    name: str = field(default="vit_tiny_p7_28", metadata={"help": "backbone registry name (spt backbones)"})
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "local weights file, or hf-hub:<org>/<name>[@revision] from the local Hugging Face cache; "
                "never downloaded"})
    checkpoint_format: str = choice("auto", *CHECKPOINT_FORMATS)
    img_size: Optional[int] = bounded(None, 1, help="input size; default: the registry's")
    in_chans: Optional[int] = choice(None, None, 3, help="the data stage feeds RGB images")
    mean: Optional[List[float]] = field(default=None, metadata={
        "help": "input normalisation mean (3 values); default: what the checkpoint's recipe used"})
    std: Optional[List[float]] = field(default=None, metadata={"help": "input normalisation std (3 values)"})
    pool: str = choice("auto", *POOLS, help="auto: token for cls backbones; for MAE or without a class token the mean over tokens (prompts included when there are any)")
    grad_checkpointing: bool = False
    head_init: str = choice("trunc_normal", *HEAD_INITS, help="trunc_normal: weights N(0, head_init_std) "
                            "truncated, bias 0 (timm, SPT); kaiming: kaiming-normal fan_out, bias -log(99) (VPT)")
    head_init_std: float = bounded(0.02, 0.0, lo_open=True, help="std of head_init=trunc_normal")
    mae_head_norm: str = choice("new", *MAE_HEAD_NORMS, help="MAE pretraining files: the LayerNorm after mean "
                                "pooling is new (weight 1, bias 0: MAE fine-tuning, VPT) or the pretrained `norm` (SPT)")


@dataclass
class MethodConfig:
    name: str = choice("spt", *METHODS, help="linear probe, full fine-tuning, VPT or SPT")
    prompt_length: int = bounded(10, 0)
    deep: bool = False
    prompt_dropout: float = bounded(0.0, 0.0, 1.0, hi_open=True)
    init: str = choice("kmeans", *INITS, help="prompt initialisation; vpt = uniform")
    init_images: int = bounded(0, 0, help="images used for prototypes; 0 = whole training split")
    init_candidates: int = bounded(4096, 1, help="per-layer candidate tokens kept per rank")
    init_batch_size: int = bounded(64, 1)
    kmeans_iters: int = bounded(30, 1)
    kmeans_tol: float = bounded(1e-4, 0.0)
    cache_dir: Optional[str] = field(default="~/.cache/spt_dist/prototypes",
                                     metadata={"help": "prototype cache; null or empty = no cache"})
    track_alignment: bool = True
    window_layout: str = choice("even", *WINDOW_LAYOUTS, help="mean_pool / max_pool windows: even = p near-equal "
                                "windows; spt = SPT's code: p-1 windows of L//(p-1), the last of the remainder")
    init_replacement: bool = field(default=False, metadata={
        "help": "draw the prototype images with replacement (SPT's code); false: each image once"})
    init_transform: str = choice("eval", *INIT_TRANSFORMS, help="the data.preset pipeline prototype images "
                                 "pass through: eval, or train (SPT's code: augmented, seeded per draw)")
    feature_cache: str = choice("auto", *FEATURE_CACHE, help="a linear probe whose training transform draws "
                                "nothing: auto = the frozen backbone's pooled features of the training and "
                                "validation samples are computed once and every epoch trains the head on them "
                                "(within data.cache_mb); never = the backbone runs at every step")


@dataclass
class StageSplits:
    train: str = "train"
    val: Optional[str] = "val"
    test: Optional[str] = None


@dataclass
class DataConfig:
    root: str = field(default="data/fmnist_tune", metadata={"help": "shard folder holding index.json"})
    train_split: str = "train"
    val_split: Optional[str] = "val"
    test_split: Optional[str] = field(default="test", metadata={"help": "null: no test pass (tuning)"})
    fraction: float = bounded(1.0, 0.0, 1.0, lo_open=True, help="class-stratified, nested subset")
    fraction_seed: int = 0
    preset: str = choice("small", *PRESETS, help="transform protocol")
    stage: str = choice("custom", *STAGES, help="tune / final: the *_split keys come from data.tune / data.final; "
                        "custom: as given")
    tune: StageSplits = field(default_factory=StageSplits)
    final: StageSplits = field(default_factory=lambda: StageSplits(train="train", val=None, test="test"))
    batch_size: int = bounded(32, 1, help="per-rank micro batch")
    global_batch: int = bounded(0, 0, help="samples per optimizer step over all ranks, the same on every world "
                                "size (micro-batch data.batch_size or less, accumulation to fill); 0 = "
                                "data.batch_size x optim.grad_accum x the first world size")
    drop_last: bool = field(default=True, metadata={
        "help": "drop each epoch's last partial global batch (equal full batches on every rank); false "
                "trains it as a short batch, on one rank only (VPT's code on one GPU)"})
    eval_batch_size: int = bounded(128, 1)
    num_workers: int = bounded(0, 0)
    cache_mb: int = bounded(2048, 0, help="MiB per rank for training data kept between epochs: the samples "
                            "this rank decoded (crop, flip and normalisation still run every epoch), or a "
                            "linear probe's cached features (method.feature_cache); 0 = keep nothing")
    shuffle_buffer: int = bounded(1000, 0, help="stream mode: samples in each worker's shuffle buffer")
    shuffle: str = choice("exact", "exact", "stream", help="exact: a uniform permutation of the whole split "
                          "every epoch (random access); stream: sequential shard reads + buffer")
    stream_shards: int = bounded(4, 1, help="stream mode: shards each worker reads at once, interleaved")
    mixing_check: str = choice("error", "error", "warn", "ignore", help="when batches mix classes far worse "
                               "than a uniform shuffle (see data.min_mixing)")
    min_mixing: float = bounded(0.9, 0.0, 1.0, help="lowest allowed ratio of distinct classes per batch, "
                                "planned vs uniform")
    duplicate_images: int = bounded(0, 0, help="byte-identical images under other keys that a validation "
                                    "or test split may share with the training split (each): that many "
                                    "train with a warning, more are an error; the same sample (same key) "
                                    "in both is always an error")
    on_bad_sample: str = choice("error", "error", "skip")
    verify: str = choice("headers", "headers", "full", "none", help="read checks before training (error mode): "
                         "headers = every val/test sample and 256 training ones; full = every sample and "
                         "shard sha256")


@dataclass
class OptimConfig:
    name: str = choice("adamw", "sgd", "adamw")
    lr: float = bounded(1e-3, 0.0, lo_open=True, help="base lr; see lr_scaling")
    lr_scaling: str = choice("none", "none", "linear", help="linear: lr * global_batch / 256 (VPT)")
    momentum: float = bounded(0.9, 0.0, 1.0, hi_open=True)
    weight_decay: float = bounded(0.0, 0.0, help="sgd: every trainable tensor; adamw: head (and backbone) weights")
    prompt_weight_decay: float = bounded(0.0, 0.0, help="adamw only: the prompts")
    sgd_no_decay: str = choice("head_bias", *SGD_NO_DECAY, help="sgd: tensors kept out of weight decay "
                               "(head_bias: VPT's code)")
    epochs: int = bounded(100, 1)
    warmup_epochs: float = bounded(10.0, 0.0)
    lr_schedule: str = choice("per_iteration", *LR_SCHEDULES, help="warmup + cosine stepped every optimizer "
                              "step, or constant within an epoch (VPT)")
    warmup_from_zero: bool = field(default=False, metadata={
        "help": "the first warmup step (or epoch) runs at lr 0, as both official codes do"})
    min_lr: float = bounded(0.0, 0.0)
    grad_clip: float = bounded(0.0, 0.0, help="0 = off")
    grad_accum: int = bounded(1, 1)
    label_smoothing: float = bounded(0.0, 0.0, 1.0, hi_open=True)


@dataclass
class PrecisionConfig:
    dtype: str = choice("fp32", "fp32", "bf16")


@dataclass
class DistributedConfig:
    zero_stage: int = choice(0, 0, 1, 2, 3)
    backend: str = choice("auto", "auto", "gloo", "nccl")
    timeout_s: int = bounded(300, 1, help="collective timeout: a dead rank ends the run after this")
    deepspeed_json: Optional[str] = field(default=None, metadata={"help": "raw DeepSpeed JSON merged last"})


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str = field(default="", metadata={"help": "run folder name; default: derived from the config"})
    seed: int = 0
    checkpoint_every: int = bounded(50, 1, help="steps between checkpoints")
    keep_checkpoints: int = bounded(2, 1)
    eval_every: int = bounded(1, 1, help="epochs between validation passes")
    log_every: int = bounded(10, 1, help="steps between metric lines")
    progress: bool = True
    loggers: List[str] = subset(["tensorboard"], *LOGGERS, help="trackers fed next to metrics.jsonl (rank 0); "
                                "[] = metrics.jsonl only")
    wandb_project: str = "spt_dist"
    wandb_entity: Optional[str] = None
    wandb_mode: str = choice("offline", *WANDB_MODES, help="offline: written under the run folder, uploaded later "
                             "with `wandb sync`; online: needs network access and a W&B login")
    mlflow_tracking_uri: Optional[str] = field(default=None, metadata={
        "help": "MLflow tracking URI; default: a file store in <run.out_dir>/mlruns"})
    mlflow_experiment: str = "spt_dist"
    lock_stale_s: int = bounded(120, int(3 * LOCK_REFRESH_MAX_S), help="a run folder lock from another host whose "
                                "heartbeat is older, or stands still this long while watched, is taken over (an old "
                                "one once it stood still for two refresh intervals); at least 3x the lock's refresh "
                                "interval (5 s)")


@dataclass
class LaunchConfig:
    cluster: str = choice("auto", "auto", "slurm", "local", "debug")
    folder: str = "jobs"
    nodes: int = bounded(1, 1)
    gpus_per_node: int = bounded(0, 0)
    tasks_per_node: int = bounded(1, 1)
    cpus_per_task: int = bounded(2, 1)
    mem_gb: int = bounded(0, 0, help="0 = cluster default")
    timeout_min: int = bounded(60, 1)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    max_requeues: int = bounded(3, 0)
    signal_delay_s: int = bounded(120, 0)
    array_parallelism: int = bounded(16, 1)
    sbatch_extra: Dict[str, str] = field(default_factory=dict)
    elastic: bool = field(default=False, metadata={
        "help": "a resumed run may continue on another world size, keeping its global batch"})
    min_nodes: int = bounded(0, 0, help="elastic SLURM jobs: take from min_nodes to nodes nodes (0 = nodes)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    run: RunConfig = field(default_factory=RunConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    defaults: List[str] = field(default_factory=list, metadata={"help": "files composed before this one"})
