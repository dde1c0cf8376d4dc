"""A general mapping: a loop tree over the cascade's ranks (:mod:`iosim.looptree.tree`),
lowered to the loop nest the models evaluate (:mod:`iosim.looptree.lower`), with the named
algorithms as presets (:mod:`iosim.looptree.presets`) and user trees read from TOML
(:mod:`iosim.looptree.files`)."""
from iosim.looptree.tree import (Compute, Kernel, Loop, LoopTree, Passes, Split, Storage, Use,
                                 format_tree)

__all__ = ["Compute", "Kernel", "Loop", "LoopTree", "Passes", "Split", "Storage", "Use",
           "format_tree"]
