"""A method switch carries the keys the method decides: `method.name=linear` on a run file with
deep prompts needs nothing else.

Some method keys have one possible value per method: linear and full take no prompts
(prompt_length 0, deep false; init vpt, as configs/method/{linear,full}.yaml), vpt has one
initialisation (init vpt). Invariant after composition: such a key holds its method's value
when it was set before method.name was (by the schema, a preset, an earlier file). Set in the
same file as method.name, or later, or in the overrides together with it, a contradicting value
is an error naming both keys, never silently replaced. Keys a method leaves open (the prompt
length of vpt / spt, spt's prototype strategy) are never guessed: validation names the key to add.
"""
from __future__ import annotations

from typing import Mapping

from omegaconf import DictConfig

from .errors import ConfigError

_NO_PROMPTS = {"prompt_length": 0, "deep": False, "init": "vpt"}
IMPLIED = {"linear": _NO_PROMPTS, "full": _NO_PROMPTS, "vpt": {"init": "vpt"}}
KEYS = ("name", "prompt_length", "deep", "init")
DEFAULTS = (0, "the schema's default")  # layer 0: before any file


class MethodKeys:
    """Where each method key was last set: (layer, origin). Called once per source in merge order:
    every file is a layer; consecutive overrides (origin "override '...'") share one."""

    def __init__(self) -> None:
        self.layer, self.seen, self._in_overrides = 0, {}, False  # type: int, Dict[str, Tuple[int, str]], bool

    def note(self, source: Mapping, origin: str) -> None:
        override = origin.startswith("override ")
        if not (override and self._in_overrides):
            self.layer += 1
        self._in_overrides = override
        method = source.get("method") if isinstance(source, (DictConfig, Mapping)) else None
        if isinstance(method, (DictConfig, Mapping)):
            for key in KEYS:
                if key in method:
                    self.seen[key] = (self.layer, origin)


def resolve_method(tree: DictConfig, keys: MethodKeys) -> None:
    """Give the keys method.name decides their value (see the module docstring)."""
    name = tree.method.name
    name_layer, name_origin = keys.seen.get("name", DEFAULTS)
    for key, value in IMPLIED.get(name, {}).items():
        if tree.method[key] == value:
            continue
        layer, origin = keys.seen.get(key, DEFAULTS)
        if layer >= name_layer:
            raise ConfigError(f"{origin}: config key 'method.{key}' = {tree.method[key]!r} contradicts "
                              f"method.name={name} ({name_origin}), which takes method.{key}={value!r}; "
                              f"drop the setting, or use a method with prompts (vpt, spt)")
        tree.method[key] = value
