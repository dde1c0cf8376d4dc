"""Multi-device attention: systems of devices joined by links, and the time, traffic and memory
of Ring, Striped, Ulysses, USP, KV-shard decode and attention offloading on them
(docs/multidevice.md)."""
