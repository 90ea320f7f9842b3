"""`model.checkpoint: hf-hub:<org>/<name>[@revision]`: weights from the local Hugging Face cache.

The hub's own client resolves the name from its cache alone (`try_to_load_from_cache`), so no
name lookup or connection is ever made; a name missing from the cache is a ConfigError that
says where the client looked and the command that fetches it on a machine with network
access. Any other value is a local path. The config keeps the `hf-hub:` name (portable between machines); every reader resolves it.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

from .errors import ConfigError

HF_PREFIX = "hf-hub:"
# The files timm publishes its weights as, in the order timm itself tries them (timm/models/_hub.py).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_name(value: Optional[str]) -> bool:
    return bool(value) and str(value).startswith(HF_PREFIX)


def _label(key: str) -> str:
    return key if key.startswith("-") else f"config key '{key}'"  # a command-line flag, or a config key


def parse_hub_name(value: str, key: str = "model.checkpoint") -> Tuple[str, Optional[str]]:
    """(repo id, revision or None) of `hf-hub:org/name[@revision]` (timm's syntax)."""
    name, _, revision = value[len(HF_PREFIX):].partition("@")
    if name.count("/") != 1 or not all(name.split("/")) or "@" in revision:
        raise ConfigError(f"{_label(key)} = {value!r} is not a Hugging Face name; allowed: "
                          f"hf-hub:<org>/<name> or hf-hub:<org>/<name>@<revision>, e.g. "
                          f"hf-hub:timm/vit_base_patch16_224.augreg_in21k")
    return name, revision or None


def resolve_checkpoint(value: str, key: str = "model.checkpoint") -> str:
    """The local file behind a model.checkpoint value (a path, or an hf-hub name in the cache)."""
    if not is_hub_name(value):
        return os.path.expanduser(value)
    repo_id, revision = parse_hub_name(value, key)
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in WEIGHT_FILES:
        # The cache lookup alone: hf_hub_download(local_files_only=True) may still phone the Hub
        # (huggingface_hub 2.x fetches an "agent harnesses" list unless HF_HUB_OFFLINE is set).
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):  # else None (not cached) or a marker of a file known to be absent
            return found
    rev = f" --revision {revision}" if revision else ""
    raise ConfigError(
        f"{_label(key)} = {value!r}: not in the Hugging Face cache {constants.HF_HUB_CACHE} (looked for "
        f"{' and '.join(WEIGHT_FILES)} of {repo_id} at revision {revision or 'main'}; nothing is downloaded, "
        f"HF_HOME / HF_HUB_CACHE choose the cache). On a machine with network access run "
        f"`hf download {repo_id} {WEIGHT_FILES[0]}{rev}` (or python -c \"import huggingface_hub; "
        f"huggingface_hub.snapshot_download('{repo_id}')\") with HF_HOME pointing at a cache this machine "
        f"reads, or copy its models--{repo_id.replace('/', '--')} folder into {constants.HF_HUB_CACHE}")
