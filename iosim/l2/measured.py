"""Microbenchmark measurements on the lent H100 that both L2 models use (no imports beyond
the standard library, so the fast analytical model does not pull in the simulation).

Each value comes from access patterns other than the validated launches; where it was
measured is said beside it.
"""

#: miss fraction of a re-read vs reuse distance (as a fraction of the L2 size) for data read
#: by SMs on both sides of the L2: the cyclic-scan microbenchmark on the lent H100
#: (experiments/data/gpu_l2scan.csv, 'shared': 22..30 MiB of a 50 MiB L2)
SCAN_SHARED = ((0.0, 0.0), (22 / 50, 0.0006), (24 / 50, 0.0020), (26 / 50, 0.357),
               (28 / 50, 0.824), (30 / 50, 1.0))
#: the same for data read by one SM ('private': 28..48 MiB)
SCAN_PRIVATE = ((0.0, 0.0), (28 / 50, 0.0045), (32 / 50, 0.061), (36 / 50, 0.431),
                (40 / 50, 0.885), (48 / 50, 1.0))

#: capacity a line costs (relative to a line read by all 132 SMs) by the number of thread
#: blocks that read it: ratio of the half-miss points of the readers microbenchmark (cyclic
#: re-read, each line read by k of 132 blocks, one per SM; experiments/data/gpu_l2readers.csv;
#: tests/test_l2model.py recomputes them from it)
READER_WEIGHTS = ((1, 0.722), (2, 0.734), (4, 0.744), (11, 0.791), (33, 0.948), (132, 1.0))

#: a block's startup: from its start to its first key block it loads and waits (2.5-3.9 us
#: in the marked traces); the median intercept of duration on key blocks over the traced
#: causal query-major d=128 launches outside the validation set
#: (experiments/l2_research/block_time.py, experiments/data/gpu_block_time.csv)
BLOCK_STARTUP_US = 3.479
#: per-SM compute rate with the startup apart, in MFLOP/us: head dim -> (one block alone, two
#: blocks together, share of the older of two co-resident blocks); d=128 from the key blocks
#: of 8K-32K traced launches, d=64 from the sharing fit of the blocks' computing time (quiet
#: non-causal launches of the same file)
SM_RATES_STARTUP = {128: (4.0000, 4.0000, 0.5), 64: (2.6755, 3.5295, 0.571)}
