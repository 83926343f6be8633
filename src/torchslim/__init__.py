"""torchslim: compress CNNs and measure every gain on real files and kernels.

    import torchslim as ts
    model = ts.create_model("vgg_small")
    ts.compress_(model, ts.FoldBN())
    ts.convert_(model)
    ts.save(model, "m.slim")
    model = ts.load("m.slim")
"""
from torchslim import binary, distill, lowrank, prune, quant  # noqa: F401 - namespaces: ts.prune.Magnitude, ...
from torchslim.core.api import compress_, convert_
from torchslim.core.config import MethodConfig
from torchslim.core.fold import FoldBN
from torchslim.core.registry import list_methods
from torchslim.export.slim import load, save
from torchslim.measure.report import measure as report
from torchslim.models import create_model, list_models
from torchslim.recipe import run_recipe
from torchslim.train.loop import TrainConfig, evaluate, fit


def finetune(model, train_loader, cfg: TrainConfig, **kwargs):
    """``fit`` with the training callbacks of every method prepared on ``model``."""
    from torchslim.core.api import method_callbacks

    cbs = list(kwargs.pop("callbacks", ())) + method_callbacks(model)
    return fit(model, train_loader, cfg, callbacks=cbs, **kwargs)


__all__ = ["FoldBN", "MethodConfig", "TrainConfig", "compress_", "convert_", "create_model", "evaluate",
           "finetune", "fit", "list_methods", "list_models", "load", "report", "run_recipe", "save"]
__version__ = "0.1.0"
