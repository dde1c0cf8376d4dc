"""FuseMax-style spatial accelerators: Einsum cascades on 2D/1D PE arrays.

Public API::

    from iosim import spatial
    hw = spatial.load_spatial_hardware("fusemax")          # or "flat", or a TOML path
    shape = spatial.attention_shape("bert", "64K")          # batch 64, heads, E, F, M = P
    r = spatial.evaluate("attention-1pass", hw, shape, spatial.Options(schedule="pipelined"))
    r.latency_s, r.utilization["2d"], r.energy_pj["total"], r.to_dict()

    spatial.run("fusemax", "bert", "64K")                   # a named configuration
    spatial.run("fusemax", "bert", "64K", assign={"SLN": "1d"})   # move an Einsum
    spatial.linear_layers("bert", "64K", "fusemax")         # the encoder's linear layers

See ``docs/spatial.md``; the model is described in :mod:`iosim.spatial.model`.
"""
from iosim.spatial.arch import (ArraySpec, BufferSpec, DramSpec, SpatialHardware,
                                list_spatial_presets, load_spatial_hardware)
from iosim.spatial.binding import BINDING_POLICIES, Binding, bind
from iosim.spatial.configs import CONFIG_ORDER, SpatialConfig, get_config, load_configs, run
from iosim.spatial.model import Options, Shape, SpatialResult, evaluate
from iosim.spatial.schedule import SCHEDULES, TaskGraph, simulate
from iosim.spatial.workloads import (BATCH, SEQ_LENS, Model, attention_shape, format_seq_len,
                                     get_model, linear_layers, load_models, parse_seq_len)

__all__ = ["ArraySpec", "BufferSpec", "DramSpec", "SpatialHardware", "list_spatial_presets",
           "load_spatial_hardware", "BINDING_POLICIES", "Binding", "bind", "CONFIG_ORDER",
           "SpatialConfig", "get_config", "load_configs", "run", "Options", "Shape",
           "SpatialResult", "evaluate", "SCHEDULES", "TaskGraph", "simulate", "BATCH",
           "SEQ_LENS", "Model", "attention_shape", "format_seq_len", "get_model",
           "linear_layers", "load_models", "parse_seq_len"]
