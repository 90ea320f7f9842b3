"""Which of the papers' backbone files (known.KNOWN) a weight file is, which registry backbone
(config/registry.py, the project's own demo sizes included) has its shapes, and whether a run
feeds and pools it as the paper's code did.

A file matches an entry when its key layout, architecture, classifier rows, representation
layer and kind of position embedding all agree; the md5 is compared where a prefix is
published. A file that matches no entry and has no registry backbone's shapes is given the
nearest papers' file or registry backbone by shape: the sum over patch, width, depth, MLP width
and position rows of |log2(file / entry)| (0 for the same shapes, 1 for one size doubled).
Findings about a run are warnings: they never stop it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from spt_dist.config.registry import BACKBONES, BackboneSpec

from .known import KNOWN, LAYOUTS, POS_EMBEDS, Known
from .summary import Summary

_FIELDS = ("layout", "patch", "width", "depth", "mlp", "tokens", "head_classes", "pre_logits", "pos_embed")
SHAPE_FIELDS = ("patch", "width", "depth", "mlp", "tokens")
DISTANCE = "sum of |log2(file / entry)| over patch, width, depth, mlp and position rows"


@dataclass
class Near:
    """The nearest entry by shape to a file that matches none: a papers' file or a registry backbone."""
    name: str
    what: str  # the papers' file's title, or "registry backbone"
    differs: List[str]  # 'field file-value (entry-value)'
    distance: float  # shape_distance


@dataclass
class Match:
    entry: Optional[Known]
    also: List[Known] = field(default_factory=list)  # other entries the file is equally consistent with
    backbone: Optional[str] = None  # the registry backbone with the file's shapes (its model.name)
    closest: Optional[Near] = None  # without an entry: the nearest by shape (see identify)


def _pos_rows(b: BackboneSpec) -> int:
    """Position-embedding rows of a registry backbone (timm: prefix tokens get none with no_embed_class)."""
    prefix = 0 if b.no_embed_class else int(b.class_token) + b.reg_tokens
    return (b.img_size // b.patch_size) ** 2 + prefix


def _registry_shape(b: BackboneSpec) -> Dict[str, int]:
    return {"patch": b.patch_size, "width": b.embed_dim, "depth": b.depth, "mlp": int(b.embed_dim * b.mlp_ratio),
            "tokens": _pos_rows(b)}


def registry_backbones(s: Summary) -> List[str]:
    """The registry backbones (model.name) whose shapes the file has."""
    return [n for n, b in sorted(BACKBONES.items())
            if all(getattr(s, f) == v for f, v in _registry_shape(b).items()) and b.class_token == s.class_token
            and (s.heads is None or s.heads == b.num_heads)]


def shape_distance(s: Summary, shape: Dict[str, int]) -> float:
    """Sum over SHAPE_FIELDS of |log2(file / entry)|; infinite when the file does not give them."""
    if any(getattr(s, f) is None for f in SHAPE_FIELDS):
        return math.inf
    return sum(abs(math.log2(getattr(s, f) / shape[f])) for f in SHAPE_FIELDS)


def _near_registry(s: Summary, name: str) -> Near:
    b = BACKBONES[name]
    shape = _registry_shape(b)
    differs = [f"{f} {getattr(s, f)} ({v})" for f, v in shape.items() if getattr(s, f) != v]
    if s.heads is not None and s.heads != b.num_heads:
        differs.append(f"heads {s.heads} ({b.num_heads})")
    return Near(name, "registry backbone", differs, shape_distance(s, shape))


def _near_known(s: Summary, k: Known) -> Near:
    return Near(k.name, k.title, differences(s, k), shape_distance(s, {f: getattr(k, f) for f in SHAPE_FIELDS}))


def differences(s: Summary, k: Known) -> List[str]:
    """'field file-value (entry-value)' for every field where the file departs from the entry."""
    out = []
    for name in _FIELDS:
        have, want = getattr(s, name), getattr(k, name)
        if name == "pos_embed" and have == "sincos" and want.startswith("sincos"):
            continue  # a sin-cos table by another formula cannot be excluded
        if have != want:
            out.append(f"{name} {have} ({want})")
    if s.heads is not None and s.heads != k.heads:
        out.append(f"heads {s.heads} ({k.heads})")
    return out


def identify(s: Summary, hub_name: Optional[str] = None) -> Match:
    """The entry `s` matches; `hub_name` (org/name) when the file came from the Hugging Face cache.
    Without one: the registry backbone with its shapes and, when a papers' file has the same
    shapes, that file as the closest (what else differs); with neither, the nearest papers' file
    or registry backbone by shape_distance (ties: a papers' file, of the same layout first, then
    the one that differs in fewer fields)."""
    fits = [k for k in KNOWN if not differences(s, k)]
    backbones = registry_backbones(s)
    backbone = backbones[0] if backbones else None
    if fits:
        # Of equal candidates: the Hub repository it came from, else the file's own name.
        fits.sort(key=lambda k: (k.name != hub_name, k.name != Path(s.path).name))
        return Match(fits[0], also=fits[1:], backbone=backbone)
    known = sorted((_near_known(s, k) for k in KNOWN),
                   key=lambda n: (n.distance, any(d.startswith("layout ") for d in n.differs), len(n.differs)))
    if backbone is not None:
        return Match(None, backbone=backbone, closest=known[0] if known[0].distance == 0 else None)
    near = sorted([_near_registry(s, n) for n in sorted(BACKBONES)], key=lambda n: (n.distance, len(n.differs)))
    closest = min(known[0], near[0], key=lambda n: n.distance)
    # no ViT shapes read from the file (another architecture, a missing table): nothing is near
    return Match(None, closest=closest if math.isfinite(closest.distance) else None)


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_finding(path: str, entry: Known) -> Tuple[bool, str]:
    """(the file is the published one, a line saying so); call only when entry.md5 is published."""
    have = file_md5(path)
    if have.startswith(entry.md5):
        return True, f"md5 {have} starts with the published {entry.md5}: this is the published file"
    return False, (f"md5 {have} does not start with the published {entry.md5}: the layout and shapes of "
                   f"{entry.name}, but not the published file (re-saved, converted or trained further)")


def describe(s: Summary) -> List[str]:
    """Lines on the file itself: container, layout, architecture, parameters."""
    lines = [f"file: {s.path} ({s.size / 2**20:.1f} MiB, {s.container})",
             f"layout: {s.layout}: {LAYOUTS[s.layout]}"]
    if s.width is None:
        return lines
    heads = s.heads if s.heads is not None else "not stored in this layout"
    size = f"{s.img_size} px" if s.img_size else f"{s.tokens} position rows"
    lines.append(f"architecture: patch {s.patch}, width {s.width}, depth {s.depth}, heads {heads}, mlp {s.mlp}, "
                 f"{size}, class token {'yes' if s.class_token else 'no'}, {s.in_chans} input channels")
    head = f"{s.head_classes} classes" if s.head_classes is not None else "none"
    lines.append(f"position embedding: {POS_EMBEDS.get(s.pos_embed, s.pos_embed)}; classifier head: {head}"
                 f"{'; representation layer (pre_logits)' if s.pre_logits else ''}")
    lines.append(f"parameters: {s.params:,} in the backbone ({s.file_params:,} in the file)")
    names = registry_backbones(s)
    lines.append(f"backbone: model.name={names[0]}" if names else
                 "backbone: no registry entry has this shape (see `spt backbones`)")
    return lines


def describe_match(m: Match) -> List[str]:
    if m.entry is None:
        if m.backbone is not None:
            lines = [f"known checkpoint: none of the VPT / SPT files; the shapes of registry backbone "
                     f"{m.backbone} (model.name={m.backbone}, `spt backbones`)"]
            if m.closest is not None:  # a papers' file of these shapes
                lines.append(f"  same shapes as {m.closest.name} ({m.closest.what}); this file differs in "
                             f"{', '.join(m.closest.differs)} (the entry's value in brackets)")
            return lines
        n = m.closest
        if n is None:
            return ["known checkpoint: unknown (none of the VPT / SPT files, and no registry backbone has its shapes)",
                    "closest: none (the file's ViT shapes -- patch, width, depth, mlp, position rows -- could not "
                    "all be read: not a ViT, or a table is missing)"]
        return ["known checkpoint: unknown (none of the VPT / SPT files, and no registry backbone has its shapes)",
                f"closest: {n.name} ({n.what}), shape distance {n.distance:.2f} ({DISTANCE}); this file differs "
                f"in {', '.join(n.differs)} (the entry's value in brackets)"]
    k = m.entry
    lines = [f"known checkpoint: {k.name}: {k.title}", f"  published at: {k.url}", f"  used by: {k.used_by}",
             f"  facts from: {k.sources}"]
    if k.layout == "timm":
        lines.append("  evidence: layout and shapes only (every timm ViT of this size has them), "
                     "and the kind of position embedding")
    lines += [f"  also consistent with: {o.name}" for o in m.also]
    for r in k.recipes:
        pool = {"token": "class token", "mean": "mean of every token but the class token (prompts included)",
                None: "-"}[r.pool]
        norm = f", mae_head_norm {r.head_norm}" if r.head_norm else ""
        lines.append(f"  recipe {r.name}: mean {list(r.norm[0])} std {list(r.norm[1])}, pool {pool}{norm} "
                     f"({r.source})")
    return lines
