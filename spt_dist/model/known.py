"""The backbone files the VPT and SPT papers used, as plain data: what `spt weights check` and
the check at run start compare a weight file with.

Every fact carries its source (repository and file:line, or document). Hashes are the md5
prefixes the publishers print (6 hex digits) and nothing else: where none is published the
entry has none, and a file is then recognised by its key layout, tensor shapes and kind of
position embedding only. `recipes` are the input normalisation and pooling each code base
used with the file; a run that matches none of them gets a warning, never an error.
Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from spt_dist.config.registry import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

# Key layouts a file can have (identify.py tells them apart from the keys alone).
LAYOUTS: Dict[str, str] = {
    "jax-vit": "Google's JAX ViT .npz: embedding/kernel, cls, Transformer/posembed_input/pos_embedding, "
               "Transformer/encoderblock_<i>/{LayerNorm_0,MultiHeadDotProductAttention_1,LayerNorm_2,MlpBlock_3}",
    "big_vision": "big_vision .npz: pos_embedding at the top, Transformer/encoderblock_<i>/"
                  "{MultiHeadDotProductAttention_0,LayerNorm_1,MlpBlock_0}",
    "timm": "timm state dict: patch_embed.proj, cls_token, pos_embed, blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,"
            "mlp.fc1,mlp.fc2}, norm; no wrapper",
    "mae-pretrain": "{'model': encoder in timm's names} without head, decoder or fc_norm (MAE's released "
                    "pretraining files)",
    "mae-with-decoder": "{'model': ...} with MAE's decoder_* and mask_token (an MAE pretraining checkpoint)",
    "mae-finetune": "{'model': ...} with fc_norm and head (MAE's fine-tuning)",
    "deit": "{'model': timm's names} with a classifier head (DeiT-style supervised file)",
    "mocov3-pretrain": "{'state_dict': module.base_encoder.*, module.momentum_encoder.*, module.predictor.*} "
                       "(MoCo v3 main_moco.py)",
    "mocov3-linear": "{'state_dict': module.*} with the linear classifier module.head (MoCo v3 main_lincls.py)",
    "wrapped": "a state dict in timm's names inside {'state_dict': ...} or with a module. prefix",
    "unknown": "no layout this table knows",
}

POS_EMBEDS = {"learned": "learned", "sincos-mae": "fixed 2-D sin-cos (MAE's)",
              "sincos-mocov3": "fixed 2-D sin-cos (MoCo v3's)", "sincos": "fixed 2-D sin-cos (another formula)"}

IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
HALF = (INCEPTION_MEAN, INCEPTION_STD)


@dataclass(frozen=True)
class Recipe:
    """How one code base fed and pooled a backbone. pool: "token" (class token after the final
    norm) or "mean" (mean over every token but the class token, prompts included); None when the
    recipe fixes only the normalisation. head_norm: MAE files only (model.mae_head_norm)."""
    name: str
    norm: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    pool: Optional[str]
    head_norm: Optional[str]
    source: str


@dataclass(frozen=True)
class Known:
    name: str
    title: str
    url: str
    layout: str
    patch: int
    width: int
    depth: int
    heads: int
    mlp: int
    tokens: int  # rows of the position embedding, class token included
    head_classes: Optional[int]  # rows of the classifier; None: the file has none
    pre_logits: bool  # the ImageNet-21k representation layer
    pos_embed: str
    md5: Optional[str]  # the published prefix; None: none published
    used_by: str
    sources: str
    recipes: Tuple[Recipe, ...]
    on_hub: bool = False  # `name` is a timm repository on the Hugging Face Hub (hf-hub:<name>)

    @property
    def img_size(self) -> int:
        return int(round((self.tokens - 1) ** 0.5)) * self.patch


VPT = "KMnP/vpt (commit 4410440)"
SPT = "WangYZ1608/Self-Prompt-Tuning (commit ce0754f)"
TIMM = "timm 1.0.31 timm/models/vision_transformer.py"

_PRE_21K = Recipe("pretraining", HALF, "token", None, f"inputs scaled to [-1, 1]: {TIMM}:2039 (_cfg mean = std = 0.5)")
_VPT_SUP = Recipe("VPT", IMAGENET, "token", None, f"{VPT} src/data/datasets/tf_dataset.py:75-76, "
                  "src/data/transforms.py:8-10 (ImageNet statistics for every backbone); CLS token: "
                  "src/models/vit_prompt/vit.py:163")
_SPT_SUP = Recipe("SPT", IMAGENET, "token", None, f"{SPT} Dataset/FGVC.py:51, 57; CLS token: Models/vpt.py:35-36")
_PRE_MAE = Recipe("pretraining", IMAGENET, None, None, f"{TIMM}:2710-2724 (mean=IMAGENET_DEFAULT_MEAN)")
_PRE_MOCO = Recipe("pretraining", IMAGENET, None, None, "facebookresearch/moco-v3 main_lincls.py (transforms."
                   "Normalize with torchvision's ImageNet statistics)")
_VPT_MAE = Recipe("VPT", IMAGENET, "mean", "new", f"{VPT} src/models/vit_prompt/vit_mae.py:122-124 (mean of "
                  "prompts + patches), src/models/vit_backbones/vit_mae.py:21-26 (a new fc_norm)")
_SPT_MAE = Recipe("SPT", IMAGENET, "mean", "pretrained", f"{SPT} Models/MAE_vpt.py:38-40 (mean of prompts + "
                  "patches), Models/MAE_vit.py:14-19, 33-35 (the pretrained norm on the pooled mean)")
_VPT_MOCO = Recipe("VPT", IMAGENET, "token", None, f"{VPT} src/models/vit_prompt/vit_moco.py:121-123 (CLS token)")
_SPT_MOCO = Recipe("SPT", IMAGENET, "token", None, f"{SPT} Dataset/FGVC.py:51, 57; Models/vpt.py:35-36")

_GOOGLE = ("google-research/vision_transformer README (gs://vit_models/imagenet21k; file = model name); "
           f"representation layer: timm <= 0.6 vit_*_in21k (representation_size = width), {TIMM}:2023-2025")
_MAE = "facebookresearch/mae README.md (pre-trained checkpoints, md5 row)"
_MAE_ARCH = "MAE's encoder in timm's names; fixed sin-cos pos_embed: facebookresearch/mae util/pos_embed.py"

KNOWN: Tuple[Known, ...] = (
    Known("imagenet21k_ViT-B_16.npz", "ViT-B/16, ImageNet-21k supervised (Google, original release)",
          "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz", "jax-vit",
          16, 768, 12, 12, 3072, 197, 21843, True, "learned", "d9715d",
          f"VPT: {VPT} README.md:89 (rename ViT-B_16.npz), :102-106 (md5), src/models/build_vit_backbone.py:35",
          _GOOGLE, (_PRE_21K, _VPT_SUP)),
    Known("imagenet21k_ViT-L_16.npz", "ViT-L/16, ImageNet-21k supervised (Google, original release)",
          "https://storage.googleapis.com/vit_models/imagenet21k/ViT-L_16.npz", "jax-vit",
          16, 1024, 24, 16, 4096, 197, 21843, True, "learned", None,
          f"VPT: {VPT} src/models/build_vit_backbone.py:36", _GOOGLE, (_PRE_21K, _VPT_SUP)),
    Known("imagenet21k_ViT-H_14.npz", "ViT-H/14, ImageNet-21k supervised (Google, original release)",
          "https://storage.googleapis.com/vit_models/imagenet21k/ViT-H_14.npz", "jax-vit",
          14, 1280, 32, 16, 5120, 257, 21843, True, "learned", None,
          f"VPT: {VPT} src/models/build_vit_backbone.py:38", _GOOGLE, (_PRE_21K, _VPT_SUP)),
    Known("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
          "ViT-B/16, ImageNet-21k supervised (Google, AugReg release)",
          "https://storage.googleapis.com/vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
          "jax-vit", 16, 768, 12, 12, 3072, 197, 21843, False, "learned", None,
          f"SPT: {SPT} README.md:124, train.py:224 (timm 'vit_base_patch16_224_in21k', which is this file: "
          f"{TIMM}:5292, 2191-2194)",
          f"{TIMM}:2191-2194; no representation layer, a valid 21k head (timm <= 0.6 docstring)",
          (_PRE_21K, _SPT_SUP)),
    Known("mae_pretrain_vit_base.pth", "MAE ViT-B/16, ImageNet-1k self-supervised",
          "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth", "mae-pretrain",
          16, 768, 12, 12, 3072, 197, None, False, "sincos-mae", "8cad7c",
          f"VPT: {VPT} README.md:112-116, src/models/build_vit_backbone.py:40, 58; SPT: {SPT} README.md:48, "
          "train_MAE.py:233, 604", f"{_MAE}; {_MAE_ARCH}", (_PRE_MAE, _VPT_MAE, _SPT_MAE)),
    Known("mae_pretrain_vit_large.pth", "MAE ViT-L/16, ImageNet-1k self-supervised",
          "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_large.pth", "mae-pretrain",
          16, 1024, 24, 16, 4096, 197, None, False, "sincos-mae", "b8b06e",
          f"VPT: {VPT} src/models/build_vit_backbone.py:41; SPT's code builds it: Models/MAE_vpt.py:54-58",
          f"{_MAE}; {_MAE_ARCH}", (_PRE_MAE, _VPT_MAE, _SPT_MAE)),
    Known("mae_pretrain_vit_huge.pth", "MAE ViT-H/14, ImageNet-1k self-supervised",
          "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_huge.pth", "mae-pretrain",
          14, 1280, 32, 16, 5120, 257, None, False, "sincos-mae", "9bdbb0",
          f"VPT: {VPT} src/models/build_vit_backbone.py:39; SPT's code builds it: Models/MAE_vpt.py:60-64",
          f"{_MAE}; {_MAE_ARCH}", (_PRE_MAE, _VPT_MAE, _SPT_MAE)),
    Known("linear-vit-b-300ep.pth.tar", "MoCo v3 ViT-B/16, 300 epochs, with its ImageNet-1k linear probe",
          "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar", "mocov3-linear",
          16, 768, 12, 12, 3072, 197, 1000, False, "sincos-mocov3", "8f39ce",
          f"VPT: {VPT} README.md:107-111 (md5), src/models/build_vit_backbone.py:77-85 (saved as "
          f"mocov3_linear-vit-b-300ep.pth.tar, 'module.' stripped); SPT's README links it: {SPT} README.md:51",
          "facebookresearch/moco-v3 CONFIG.md (ViT-Base, linear files), main_lincls.py (saves the "
          "DistributedDataParallel state_dict), vits.py (fixed sin-cos pos_embed)", (_PRE_MOCO, _VPT_MOCO)),
    Known("vit-b-300ep.pth.tar", "MoCo v3 ViT-B/16, 300 epochs, the pretraining checkpoint",
          "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar", "mocov3-pretrain",
          16, 768, 12, 12, 3072, 197, None, False, "sincos-mocov3", None,
          f"SPT: {SPT} train_MoCo.py:214-221 (keeps module.base_encoder.*, which only this file has)",
          "facebookresearch/moco-v3 CONFIG.md (ViT-Base, pretrain files), vits.py", (_PRE_MOCO, _SPT_MOCO)),
    # The same weights as published by timm on the Hugging Face Hub (hf-hub:<name>, its model.safetensors).
    Known("timm/vit_base_patch16_224.augreg_in21k", "ViT-B/16 ImageNet-21k AugReg (SPT's weights), timm's Hub copy",
          "https://huggingface.co/timm/vit_base_patch16_224.augreg_in21k", "timm",
          16, 768, 12, 12, 3072, 197, 21843, False, "learned", None,
          f"SPT: {SPT} train.py:224 (timm resolves 'vit_base_patch16_224_in21k' to it: {TIMM}:5292)",
          f"{TIMM}:2191-2194 (num_classes=21843)", (_PRE_21K, _SPT_SUP),
          on_hub=True),
    Known("timm/vit_base_patch16_224.orig_in21k", "ViT-B/16 ImageNet-21k original (VPT's weights without head), timm's Hub copy",
          "https://huggingface.co/timm/vit_base_patch16_224.orig_in21k", "timm",
          16, 768, 12, 12, 3072, 197, None, False, "learned", None, "the weights of imagenet21k_ViT-B_16.npz",
          f"{TIMM}:2158-2161 (num_classes=0), 2023-2025 (representation layer dropped)", (_PRE_21K, _VPT_SUP),
          on_hub=True),
    Known("timm/vit_large_patch16_224.orig_in21k", "ViT-L/16 ImageNet-21k original (VPT's weights without head), timm's Hub copy",
          "https://huggingface.co/timm/vit_large_patch16_224.orig_in21k", "timm",
          16, 1024, 24, 16, 4096, 197, None, False, "learned", None, "the weights of imagenet21k_ViT-L_16.npz",
          f"{TIMM}:2166-2169 (num_classes=0)", (_PRE_21K, _VPT_SUP), on_hub=True),
    Known("timm/vit_huge_patch14_224.orig_in21k", "ViT-H/14 ImageNet-21k original (VPT's weights without head), timm's Hub copy",
          "https://huggingface.co/timm/vit_huge_patch14_224.orig_in21k", "timm",
          14, 1280, 32, 16, 5120, 257, None, False, "learned", None, "the weights of imagenet21k_ViT-H_14.npz",
          f"{TIMM}:2170-2172 (num_classes=0)", (_PRE_21K, _VPT_SUP), on_hub=True),
    Known("timm/vit_base_patch16_224.mae", "MAE ViT-B/16, timm's Hub copy of mae_pretrain_vit_base.pth",
          "https://huggingface.co/timm/vit_base_patch16_224.mae", "timm",
          16, 768, 12, 12, 3072, 197, None, False, "sincos-mae", None, "the weights of mae_pretrain_vit_base.pth",
          f"{TIMM}:2710-2714 (url: mae_pretrain_vit_base.pth)", (_PRE_MAE, _VPT_MAE, _SPT_MAE),
          on_hub=True),
    Known("timm/vit_large_patch16_224.mae", "MAE ViT-L/16, timm's Hub copy of mae_pretrain_vit_large.pth",
          "https://huggingface.co/timm/vit_large_patch16_224.mae", "timm",
          16, 1024, 24, 16, 4096, 197, None, False, "sincos-mae", None, "the weights of mae_pretrain_vit_large.pth",
          f"{TIMM}:2715-2719", (_PRE_MAE, _VPT_MAE, _SPT_MAE), on_hub=True),
    Known("timm/vit_huge_patch14_224.mae", "MAE ViT-H/14, timm's Hub copy of mae_pretrain_vit_huge.pth",
          "https://huggingface.co/timm/vit_huge_patch14_224.mae", "timm",
          14, 1280, 32, 16, 5120, 257, None, False, "sincos-mae", None, "the weights of mae_pretrain_vit_huge.pth",
          f"{TIMM}:2720-2724", (_PRE_MAE, _VPT_MAE, _SPT_MAE), on_hub=True),
)
