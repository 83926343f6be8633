"""Saving and loading: ``.slim`` files and architecture specs."""

from torchslim.export.slim import SlimFileError, load, read_slim, save, write_slim
from torchslim.export.spec import register_module_spec

__all__ = ["SlimFileError", "load", "read_slim", "register_module_spec", "save", "write_slim"]
