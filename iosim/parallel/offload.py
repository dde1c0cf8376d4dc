"""Attention offloading (Lamina): decode with the dense layers on compute devices and attention
on memory devices that hold the KV caches.

For every token of every layer the compute side sends q, k and v to a memory device and gets o
back: ``(2 Hq + 2 Hkv) d bytes`` per token per layer (:func:`offload_bytes_per_token`). One
decode step of a batch of ``b`` requests at context ``N`` on ``L`` layers takes, on the
offloading system (the stages pipelined over micro-batches, as Lamina's rotational staggered
pipelining does, so the slowest stage sets the pace):

* dense layers: ``max(W bytes / HBM bandwidth, 2 W b / matrix rate)`` over the compute devices
  (tensor-parallel; weights ``W``), a roofline;
* attention: ``L`` times the single-device model's decode time on a memory device holding
  ``b / n_m`` requests' caches;
* network: ``b L (Hq + 2 Hkv) d bytes`` out and ``b L Hq d bytes`` back over the memory
  devices' links (per direction, latency once per layer).

The homogeneous baseline serves the same model on the compute devices alone: weights and KV
caches share their HBM (a smaller batch fits) and attention runs there, after the dense
layers. Throughput per dollar uses the prices of the preset; each system runs the batch of
most tokens per second that its memory holds (at most ``--batch`` when that is given).
"""
from __future__ import annotations

import math

from iosim.errors import IosimError
from iosim.parallel.system import System

__all__ = ["offload_bytes_per_token", "evaluate_offload", "kv_bytes_per_request",
           "parse_count"]


def offload_bytes_per_token(heads: int, kv_heads: int, d: int, nbytes: float) -> float:
    """Bytes crossing the network per token per layer: q, k, v out and o back,
    ``(2 Hq + 2 Hkv) d bytes``."""
    return (2 * heads + 2 * kv_heads) * d * nbytes


def kv_bytes_per_request(context: int, layers: int, kv_heads: int, d: int, nbytes: float) -> float:
    """A request's KV cache: ``2 N L Hkv d bytes``."""
    return 2 * context * layers * kv_heads * d * nbytes


def parse_count(text, what: str = "--params") -> float:
    """A count such as ``70B`` (7e10), ``8e9``, ``1.5T``: decimal suffixes K, M, B/G, T."""
    s = str(text).strip()
    mult = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    f = mult.get(s[-1:].upper(), 1.0)
    try:
        x = float(s[:-1] if f != 1.0 else s) * f
    except ValueError:
        raise IosimError(f"{what} '{text}': expected a count such as 70B, 8e9 or 1.5T") from None
    if not x > 0 or not math.isfinite(x):
        raise IosimError(f"{what} '{text}' must be a positive, finite count")
    return x


def _dense_s(hw, params: float, tokens: float, devices: int, dtype: str, nbytes: float) -> float:
    return max(params * nbytes / (devices * hw.backing.read_bandwidth),
               2 * params * tokens / (devices * hw.matrix_rate(dtype)))


def evaluate_offload(c, m, system: System, prob, devices: int):
    """The offloading model (see the module docstring) as a
    :class:`~iosim.parallel.model.ParallelResult`."""
    from iosim.parallel.model import ParallelResult, StepRecord, _block_time
    tier = system.offload
    if tier is None:
        raise IosimError(f"--parallel offload: system '{system.name}' has no [offload] memory "
                         f"devices (try --system lamina)")
    system.check_devices(devices)
    if prob.params <= 0:
        raise IosimError("--parallel offload needs the model's weight count: --params 70B")
    if prob.heads % prob.hkv:
        raise IosimError(f"heads ({prob.heads}) must be a multiple of kv-heads ({prob.hkv})")
    L, nb, b = prob.layers, prob.bytes, prob.batch
    per_tok = offload_bytes_per_token(prob.heads, prob.hkv, prob.d, nb)
    kv_req = kv_bytes_per_request(prob.keys, L, prob.hkv, prob.d, nb)
    hw_c, hw_m = system.device, tier.device
    weights = prob.params * nb
    cap_off = math.floor(tier.devices * hw_m.backing.capacity_bytes / kv_req)
    cap_hom = math.floor((devices * hw_c.backing.capacity_bytes - weights) / kv_req)
    if cap_off < 1:
        raise IosimError(f"one request's KV cache ({kv_req / 1e9:.1f} GB) does not fit the "
                         f"{tier.devices} memory devices")
    if b > cap_off:
        raise IosimError(f"--batch {b}: the memory devices hold at most {cap_off} requests of "
                         f"{prob.keys} tokens")

    def offload_step(batch):
        tokens = batch * prob.n
        t_dense = _dense_s(hw_c, prob.params, tokens, devices, prob.dtype, nb)
        per_dev = math.ceil(batch / tier.devices)
        t_attn = L * _block_time(c, m, hw_m, prob.n, prob.keys, prob.d, prob.heads, prob.hkv,
                                 per_dev, prob.dtype, prob.causal, prob.keys - prob.n)
        lanes = min(devices, tier.devices)
        out_b = tokens * L * (prob.heads + 2 * prob.hkv) * prob.d * nb
        back_b = tokens * L * prob.heads * prob.d * nb
        t_net = L * tier.link.latency_s + max(out_b, back_b) / (lanes * tier.link.bandwidth)
        return t_dense, t_attn, t_net, out_b + back_b

    def homogeneous_step(batch):
        tokens = batch * prob.n
        t_dense = _dense_s(hw_c, prob.params, tokens, devices, prob.dtype, nb)
        per_dev = math.ceil(batch / devices)
        t_attn = L * _block_time(c, m, hw_c, prob.n, prob.keys, prob.d, prob.heads, prob.hkv,
                                 per_dev, prob.dtype, prob.causal, prob.keys - prob.n)
        return t_dense + t_attn

    t_dense, t_attn, t_net, net_b = offload_step(b)
    t_step = max(t_dense, t_attn, t_net)
    price_off = ((system.price_per_hour or 0) * devices
                 + (tier.price_per_hour or 0) * tier.devices)
    price_hom = (system.price_per_hour or 0) * devices
    extra = {"bytes_per_token_per_layer": per_tok,
             "link_bandwidth_needed": net_b / t_step,
             "link_bandwidth_available": min(devices, tier.devices) * tier.link.bandwidth,
             "kv_bytes_per_request": kv_req,
             "batch_max_offload": cap_off, "batch_max_homogeneous": max(0, cap_hom),
             "memory_devices": tier.devices, "tokens_per_s": b * prob.n / t_step}
    notes = ["stages pipelined over micro-batches: the step is the slowest of dense, attention "
             "and network (Lamina's staggered pipelining); dense layers are a roofline"]
    if price_off and price_hom:
        # each system at its best batch up to what it holds (up to --batch when that is given)
        lim = (lambda cap: min(b, cap)) if b > 1 else (lambda cap: cap)
        to, bo = max((x * prob.n / max(offload_step(x)[:3]), x)
                     for x in range(1, lim(cap_off) + 1))
        extra.update(batch_offload=bo, tokens_per_s_offload=to,
                     tokens_per_dollar_offload=to * 3600 / price_off)
        if cap_hom >= 1:
            th, bh = max((x * prob.n / homogeneous_step(x), x)
                         for x in range(1, lim(cap_hom) + 1))
            extra.update(batch_homogeneous=bh, tokens_per_s_homogeneous=th,
                         tokens_per_dollar_homogeneous=th * 3600 / price_hom,
                         throughput_per_dollar_ratio=(to / price_off) / (th / price_hom))
        else:
            notes.append(f"the homogeneous baseline cannot hold one request: the weights "
                         f"({weights / 1e9:.0f} GB) leave no room on {devices} devices")
    elif not price_off or not price_hom:
        notes.append("no prices in the system preset: no throughput per dollar")
    steps = (StepRecord(0, "dense", t_dense, 0.0, 0.0, "-", t_dense, devices),
             StepRecord(1, "net", 0.0, net_b / min(devices, tier.devices), t_net,
                        tier.link.name, t_net, 0),
             StepRecord(2, "attend", t_attn, 0.0, 0.0, "-", t_attn, tier.devices))
    mem = {"kv_memory_device": math.ceil(b / tier.devices) * kv_req,
           "weights_compute_device": weights / devices}
    return ParallelResult(
        scheme="offload", system=system.name, devices=devices, steps=steps,
        compute_time_s=max(t_dense, t_attn), comm_time_s=t_net,
        comm_bytes_per_device=net_b / min(devices, tier.devices),
        overlapped=bool(t_net <= max(t_dense, t_attn)),
        memory_bytes_per_device=max(mem.values()), time_s=t_step, memory=mem, extra=extra,
        notes=tuple(notes), layers=1)
