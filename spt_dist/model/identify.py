"""Which of the papers' backbone files (known.KNOWN) a weight file is, and whether a run feeds
and pools it as the paper's code did.

A file matches an entry when its key layout, architecture, classifier rows, representation
layer and kind of position embedding all agree; the md5 is compared where a prefix is
published. Findings about a run are warnings: they never stop it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from .known import KNOWN, LAYOUTS, POS_EMBEDS, Known
from .summary import Summary

_FIELDS = ("layout", "patch", "width", "depth", "mlp", "tokens", "head_classes", "pre_logits", "pos_embed")


@dataclass
class Match:
    entry: Optional[Known]
    also: List[Known] = field(default_factory=list)  # other entries the file is equally consistent with
    closest: Optional[Tuple[Known, List[str]]] = None  # without a match: the nearest entry, what differs


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
    """The entry `s` matches; `hub_name` (org/name) when the file came from the Hugging Face cache."""
    fits = [k for k in KNOWN if not differences(s, k)]
    if not fits:
        ranked = sorted(KNOWN, key=lambda k: (k.layout != s.layout, len(differences(s, k))))
        return Match(None, closest=(ranked[0], differences(s, ranked[0])))
    # Of equal candidates: the Hub repository it came from, else the file's own name.
    fits.sort(key=lambda k: (k.name != hub_name, k.name != Path(s.path).name))
    return Match(fits[0], also=fits[1:])


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


def _pos_rows(b) -> int:
    """Position-embedding rows of a registry backbone (timm: prefix tokens get none with no_embed_class)."""
    prefix = 0 if b.no_embed_class else int(b.class_token) + b.reg_tokens
    return (b.img_size // b.patch_size) ** 2 + prefix


def describe(s: Summary) -> List[str]:
    """Lines on the file itself: container, layout, architecture, parameters."""
    from spt_dist.config.registry import BACKBONES

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
    names = [n for n, b in sorted(BACKBONES.items()) if (b.patch_size, b.embed_dim, b.depth, b.class_token) ==
             (s.patch, s.width, s.depth, s.class_token) and s.tokens == _pos_rows(b)]
    lines.append(f"backbone: model.name={names[0]}" if names else
                 "backbone: no registry entry has this shape (see `spt backbones`)")
    return lines


def describe_match(m: Match) -> List[str]:
    if m.entry is None:
        k, diffs = m.closest
        return ["known checkpoint: unknown (none of the VPT / SPT files)",
                f"closest: {k.name} ({k.title}); this file differs in {', '.join(diffs)} (the entry's value "
                f"in brackets)"]
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
