"""The evaluated configurations (Unfused, FLAT, +Cascade, +Architecture, +Binding = FuseMax).

Each is data in ``iosim/presets/spatial/configs.toml``: a cascade, a hardware preset, a
binding policy with optional explicit assignments, a schedule and mapping limits.
:func:`run` evaluates one configuration for a model and sequence length, optionally with
another cascade, hardware or binding.
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, replace
from functools import lru_cache

from iosim.errors import IosimError
from iosim.spatial.arch import _preset_dir, load_spatial_hardware
from iosim.spatial.model import Options, SpatialResult, evaluate
from iosim.spatial.workloads import attention_shape, get_model

if sys.version_info >= (3, 11):  # pragma: no cover
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["SpatialConfig", "load_configs", "get_config", "run", "CONFIG_ORDER"]

CONFIG_ORDER = ("unfused", "flat", "cascade", "architecture", "fusemax")


@dataclass(frozen=True)
class SpatialConfig:
    name: str
    label: str
    description: str
    cascade: str
    hardware: str
    options: Options
    aliases: tuple = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "description": self.description,
                "cascade": self.cascade, "hardware": self.hardware,
                "options": self.options.to_dict()}


_OPT_KEYS = {"binding", "schedule", "depth", "fold", "min_onchip_fraction", "max_query_rows",
             "query_tiles", "issue"}


@lru_cache(maxsize=1)
def load_configs() -> dict:
    data = tomllib.loads((_preset_dir() / "configs.toml").read_text())
    out = {}
    for name, t in data["config"].items():
        opts = {k: t[k] for k in _OPT_KEYS if k in t}
        if "issue" in opts:
            opts["issue"] = tuple(sorted(opts["issue"].items()))
        if "assign" in t:
            opts["overrides"] = tuple(sorted(t["assign"].items()))
        out[name] = SpatialConfig(name, t.get("label", name), t.get("description", ""),
                                  t["cascade"], t["hardware"], Options(**opts),
                                  tuple(t.get("aliases", ())))
    return out


def get_config(name: str) -> SpatialConfig:
    cfgs = load_configs()
    key = str(name).strip().lower().lstrip("+")
    for k, c in cfgs.items():
        if key in (k, c.label.lower().lstrip("+"), *c.aliases):
            return c
    hint = difflib.get_close_matches(key, list(cfgs), n=1)
    hint = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise IosimError(f"unknown configuration '{name}'{hint}; configurations: "
                     f"{', '.join(cfgs)}")


def run(config: str | SpatialConfig, model: str, seq_len, *, cascade: str | None = None,
        hardware=None, assign: dict | None = None, batch: int | None = None,
        **option_changes) -> SpatialResult:
    """Evaluate a configuration for one model and sequence length.

    ``cascade``/``hardware`` replace the configuration's; ``assign`` ({einsum: array}) adds
    explicit binding assignments; other keywords replace :class:`Options` fields.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    opts = cfg.options
    if assign:
        merged = dict(opts.overrides)
        merged.update(assign)
        opts = replace(opts, overrides=tuple(sorted(merged.items())))
    if option_changes:
        opts = replace(opts, **option_changes)
    hw = load_spatial_hardware(hardware if hardware is not None else cfg.hardware)
    shape = attention_shape(get_model(model), seq_len, batch)
    return evaluate(cascade or cfg.cascade, hw, shape, opts, label=cfg.label)
