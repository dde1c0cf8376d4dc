"""iosim: how attention cascades move through memory hierarchies and spatial arrays."""
from iosim.errors import IosimError

__all__ = ["IosimError"]
__version__ = "0.1.0"
