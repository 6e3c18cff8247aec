"""How many bytes one sweep may use for batches of patched runs, on the device it runs on.

An explicit `max_memory_mb` wins. Otherwise: on CUDA a share of the memory free on that GPU now
(`torch.cuda.mem_get_info`: other processes and this one's own cache are already counted); on
the CPU a share of the available RAM (psutil), capped, since larger CPU batches stop paying off;
elsewhere (MPS) the engine's fixed default. A model split over GPUs runs each layer's pieces on its
own GPU, so its budget is the smallest of those GPUs' (`also=placed_devices(model.device_map)`).

>>> memory_budget(torch.device("cpu"), 512) == 512 * 2**20
True
"""
from __future__ import annotations

import torch

CUDA_SHARE = 0.6          # of the GPU memory free when the sweep starts
CPU_SHARE = 0.25          # of the available RAM
CPU_CAP_MB = 4096
FLOOR_MB = 64
FALLBACK_MB = 1024        # MPS and anything unknown (the engine's old fixed budget)


def placed_devices(device_map: dict | None) -> tuple[torch.device, ...]:
    """The GPUs a device map computes on (its CPU / disk entries are offloaded to them, or, with no
    GPU in the map, run on the CPU the activations are on anyway).

    >>> placed_devices({"model.layers.0": 0, "model.layers.1": "1", "lm_head": "cpu"})
    (device(type='cuda', index=0), device(type='cuda', index=1))
    >>> placed_devices({"": "cpu"}), placed_devices(None)
    ((), ())
    """
    found = []
    for v in (device_map or {}).values():
        v = str(v)
        dev = torch.device("cuda", int(v)) if v.isdigit() else torch.device(v) if v.startswith("cuda") else None
        if dev is not None and dev not in found:
            found.append(dev)
    return tuple(found)


def memory_budget(device: torch.device | str | None, max_memory_mb: float | None = None,
                  also: tuple = ()) -> float:
    """Bytes for one sweep's batches on `device` (and each device in `also`: the smallest budget);
    ValueError for a non-positive `max_memory_mb`.

    >>> memory_budget("cpu") >= FLOOR_MB * 2**20
    True
    """
    if max_memory_mb is not None:
        if not max_memory_mb > 0:
            raise ValueError(f"max_memory_mb must be positive, not {max_memory_mb!r}")
        return float(max_memory_mb) * 2**20
    if also:
        return min(memory_budget(d) for d in (device, *also))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(dev)
        return max(free * CUDA_SHARE, FLOOR_MB * 2**20)
    if dev.type == "cpu":
        import psutil
        available = psutil.virtual_memory().available
        return float(max(min(available * CPU_SHARE, CPU_CAP_MB * 2**20), FLOOR_MB * 2**20))
    return float(FALLBACK_MB * 2**20)
