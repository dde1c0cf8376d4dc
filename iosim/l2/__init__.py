"""The GPU L2 model: which of the bytes that programs read from beyond their shared memory
reach HBM.

* :mod:`iosim.l2.analytic` -- the default: a vectorised reuse-distance model derived from the
  mapping's loop nest, grid order and occupancy, answered by the L2's measured capacity
  response. Fast enough for grids (sweep, search).
* :mod:`iosim.l2.simulate` -- the slower research model (``--l2 simulate``): a dynamic
  simulation of thread blocks, their paces and an NRU cache state per L2 partition.
* :mod:`iosim.l2.state`, :mod:`iosim.l2.replay`, :mod:`iosim.l2.partitions` -- the NRU state,
  replay of measured block schedules, the L2 partition map.
* :mod:`iosim.l2.microbench` -- the microbenchmarks (GPU) and their analysis.
* :mod:`iosim.l2.backing` -- the hook that turns either model into the report's HBM row.
"""
