"""Running generated kernels on a real GPU and reading its hardware counters (Nsight Compute).

* :mod:`iosim.gpu.shapes`  — workload shapes (``BxHxNxD``);
* :mod:`iosim.gpu.runner`  — device-side checks, timings and the script ncu profiles;
* :mod:`iosim.gpu.ncu`     — driving ncu and parsing its CSV;
* :mod:`iosim.gpu.validate` — the validation sweep (which launches are measured);
* :mod:`iosim.gpu.compare` — joining measured counters with the simulator's predictions.

Nothing here imports torch or triton at module import time.
"""
from iosim.gpu.shapes import Shape, default_shapes, parse_shapes

__all__ = ["Shape", "default_shapes", "parse_shapes"]
