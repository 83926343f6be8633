"""torchslim: compress CNNs and measure every gain on real files and kernels.

    import torchslim as ts
    model = MyNet()                                        # any nn.Module, or ts.create_model("vgg_small")
    ts.compress_(model, ts.prune.Magnitude(sparsity=0.9))
    ts.convert_(model)
    ts.save(model, "m.slim")
    model = ts.load("m.slim")

Attributes load lazily (``import torchslim.runtime`` imports no training code).
"""

from torchslim._lazy import lazy_getattr
from torchslim.core import registry as _registry

# Method families register their handlers when imported; the registry imports them on first use.
_registry.add_method_modules(
    "torchslim.core.fold", "torchslim.prune", "torchslim.quant", "torchslim.lowrank", "torchslim.binary"
)

_NAMES = {
    "binary": "binary",
    "distill": "distill",
    "lowrank": "lowrank",
    "prune": "prune",
    "quant": "quant",
    "runtime": "runtime",
    "compress_": "api:compress_",
    "convert_": "api:convert_",
    "finetune": "api:finetune",
    "MethodConfig": "core.config:MethodConfig",
    "FoldBN": "core.fold:FoldBN",
    "list_methods": "core.registry:list_methods",
    "load": "export.slim:load",
    "save": "export.slim:save",
    "export_onnx": "export.onnx:export_onnx",
    "report": "measure.report:measure",
    "engine": "engines:engine",
    "create_model": "models:create_model",
    "list_models": "models:list_models",
    "run_recipe": "recipe:run_recipe",
    "auto": "search:auto",
    "AutoConfig": "search:AutoConfig",
    "TrainConfig": "train.loop:TrainConfig",
    "evaluate": "measure.accuracy:evaluate",
    "fit": "train.loop:fit",
}
__getattr__ = lazy_getattr(__name__, _NAMES)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_NAMES))


__all__ = [
    "AutoConfig",
    "FoldBN",
    "MethodConfig",
    "TrainConfig",
    "auto",
    "compress_",
    "convert_",
    "create_model",
    "engine",
    "evaluate",
    "export_onnx",
    "finetune",
    "fit",
    "list_methods",
    "list_models",
    "load",
    "report",
    "run_recipe",
    "save",
]
__version__ = "0.1.0"
