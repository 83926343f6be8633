"""Core: method configs, the registry, layer selection, module surgery (the verbs that use them,
``compress_`` / ``convert_``, are :mod:`torchslim.api`).

Core imports no method family: families register themselves (``register_method``)
and the package names the modules to import (``registry.add_method_modules``).
"""

from torchslim.core.config import MethodConfig
from torchslim.core.fold import FoldBN
from torchslim.core.registry import Method, get_method, list_methods, register_method
from torchslim.core.select import select
from torchslim.core.surgery import get_module, set_module

__all__ = [
    "FoldBN",
    "Method",
    "MethodConfig",
    "get_method",
    "get_module",
    "list_methods",
    "register_method",
    "select",
    "set_module",
]
