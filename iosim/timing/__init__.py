"""The execution-time model of a launch on a parallel machine (GPU SMs): programs, occupancy,
waves, one program's time from its loop nest, memory-bound phases, several kernels.

:func:`time_arrays` works on the arrays of :func:`iosim.traffic.evaluate_arrays`, so a single
evaluation, a vectorised grid, a sweep and a search all use the same model. The rates it reads
are the preset's ``[timing]`` table (:mod:`iosim.timing.rates`); docs/time_model.md states
the assumptions and the measured accuracy.
"""
from iosim.timing.model import occupancy, phase_plans, time_arrays
from iosim.timing.rates import TimingRates, timing_rates

__all__ = ["time_arrays", "phase_plans", "occupancy", "TimingRates", "timing_rates"]
