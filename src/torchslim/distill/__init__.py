"""Knowledge distillation: losses and a training callback that works with ``fit``.

Losses (student logits ``s``, teacher logits ``t``, temperature ``T``):

* Hinton et al. 2015 soft targets:
  ``L_KD = T^2 * KL(softmax(t / T) || softmax(s / T))`` (batch mean). The ``T^2``
  keeps the gradient's size independent of T (the soft-target gradient scales as
  ``1 / T^2``). The training loss is ``(1 - alpha) * CE(s, y) + alpha * L_KD``.
* Sun et al. 2024, "Logit Standardization in Knowledge Distillation" (``standardize=True``): each
  sample's logits are z-scored before the temperature, ``Z(z) = (z - mean_c z) / std_c z``, for
  student and teacher alike, so the student matches the teacher's logit *relations* rather than
  their magnitude (a small student cannot reach a large teacher's logit range). ``L_KD`` is then
  taken on ``Z(s)`` and ``Z(t)``.
* Ba & Caruana 2014 logit matching: ``L = mean_b ||s - t||^2 / 2``.
* Romero et al. 2015 FitNets hints: a learned regressor ``r`` (1x1 conv, or linear)
  maps a student feature to the teacher feature's shape;
  ``L_hint = mean ||r(f_s) - f_t||^2 / 2``, with features tapped by module name.

``Distill`` is a :class:`~torchslim.train.Callback`: offline (frozen teacher,
logits computed on the fly) or online (the teacher trains on the labels in the same
loop and the student distils from its current logits). Hooks and the regressors'
optimizer live in the callback and are removed at the end of training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core.inputs import call, select_output
from torchslim.core.surgery import example_inputs, get_module
from torchslim.train.callbacks import Callback


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    p_t = F.log_softmax(teacher / T, dim=1)
    return F.kl_div(F.log_softmax(student / T, dim=1), p_t, reduction="batchmean", log_target=True) * T * T


def standardize_logits(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Sun et al. 2024: ``(z - mean_c z) / (std_c z + eps)`` per sample (population std over classes)."""
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True, unbiased=False) + eps)


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """``-sum_c softmax(t / T)_c log softmax(s / T)_c``, batch mean (KL plus the teacher's entropy)."""
    return -(F.softmax(teacher / T, dim=1) * F.log_softmax(student / T, dim=1)).sum(1).mean()


def logit_matching_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Ba & Caruana: ``mean_b ||s - t||^2 / 2``."""
    return 0.5 * (student - teacher).pow(2).sum(1).mean()


def hint_regressor(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> nn.Module:
    """FitNets regressor from the student feature's shape to the teacher's (1x1 conv or linear)."""
    s, t = student_feature.shape, teacher_feature.shape
    if len(s) == 4 and len(t) == 4:
        if s[2:] != t[2:]:
            raise ValueError(
                f"hint features have spatial sizes {tuple(s[2:])} (student) and {tuple(t[2:])} "
                "(teacher); pick layers with equal feature-map sizes"
            )
        return nn.Conv2d(s[1], t[1], 1)
    return nn.Sequential(nn.Flatten(), nn.Linear(s[1:].numel(), t[1:].numel()), nn.Unflatten(1, t[1:]))


@dataclass
class Distill(Callback):
    """Distillation as a training callback.

    Attributes:
        teacher: the teacher model.
        T, alpha: temperature and weight of the soft loss (``alpha=0`` is plain cross-entropy).
        loss: ``kd`` (Hinton) or ``mse`` (logit matching).
        standardize: z-score both models' logits per sample before the ``kd`` loss (Sun et al.
            2024 logit standardization; the paper pairs it with a large ``alpha``).
        online: train the teacher on the labels in the same loop (its own SGD optimizer, ``teacher_lr``).
        hints: ``[(student module, teacher module), ...]`` FitNets feature pairs; weight ``hint_weight``.
        cache: offline only, a dict (may be shared between callbacks) that keeps the teacher's
            logits per input sample (keyed by the sample's bytes), so the teacher runs once per
            sample instead of once per epoch. Only for data without augmentation.
    """

    teacher: nn.Module
    T: float = 4.0
    alpha: float = 0.9
    loss: str = "kd"
    standardize: bool = False
    online: bool = False
    teacher_lr: float = 0.01
    hints: list[tuple[str, str]] = field(default_factory=list)
    hint_weight: float = 1.0
    cache: dict | None = None

    def __post_init__(self) -> None:
        if not self.T > 0:
            raise ValueError(f"Distill.T={self.T!r} must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"Distill.alpha={self.alpha!r} is out of range; use a value in [0, 1]")
        if self.loss not in ("kd", "mse"):
            raise ValueError(f"Distill.loss={self.loss!r}; use 'kd' or 'mse'")
        if not isinstance(self.standardize, bool) or (self.standardize and self.loss != "kd"):
            raise ValueError(f"Distill.standardize={self.standardize!r}; use true or false, with loss 'kd'")
        if self.cache is not None and (self.online or self.hints):
            raise ValueError(
                "Distill.cache works offline without hints (the teacher must not change and "
                "its features are not cached)"
            )
        self.task_weight = 1.0 - self.alpha
        self._handles: list = []
        self._feats: dict[str, torch.Tensor] = {}
        self.regressors = nn.ModuleList()
        self._opt: torch.optim.Optimizer | None = None

    def _tap(self, model: nn.Module, name: str, key: str) -> None:
        def grab(mod, args, out):
            self._feats[key] = out

        self._handles.append(get_module(model, name).register_forward_hook(grab))

    def on_train_begin(self, model: nn.Module) -> None:
        device = next(model.parameters()).device
        self.teacher.to(device).train(self.online)
        for p in self.teacher.parameters():
            p.requires_grad_(self.online)
        for i, (s_name, t_name) in enumerate(self.hints):
            self._tap(model, s_name, f"s{i}")
            self._tap(self.teacher, t_name, f"t{i}")
        if self.hints:  # size the regressors from one forward pass
            x = example_inputs(model, batch=2)
            with torch.no_grad():
                was = model.training
                call(model.eval(), x)
                model.train(was)
                call(self.teacher, x)
            self.regressors = nn.ModuleList(
                hint_regressor(self._feats[f"s{i}"], self._feats[f"t{i}"]) for i in range(len(self.hints))
            ).to(device)
        params = list(self.regressors.parameters()) + (list(self.teacher.parameters()) if self.online else [])
        self._opt = torch.optim.SGD(params, lr=self.teacher_lr, momentum=0.9) if params else None

    def loss_term(self, model, inputs, outputs, targets):
        if self.online:
            t_out = select_output(call(self.teacher, inputs))
            teacher_ce = F.cross_entropy(t_out, targets)
        else:
            t_out = self._teacher_logits(inputs)
            teacher_ce = 0.0
        t_out_d = t_out.detach()
        if self.loss == "mse":
            soft = logit_matching_loss(outputs, t_out_d)
        elif self.standardize:
            soft = kd_loss(standardize_logits(outputs), standardize_logits(t_out_d), self.T)
        else:
            soft = kd_loss(outputs, t_out_d, self.T)
        total = self.alpha * soft + teacher_ce
        for i, reg in enumerate(self.regressors):
            total = (
                total
                + self.hint_weight
                * 0.5
                * (reg(self._feats[f"s{i}"]) - self._feats[f"t{i}"].detach()).pow(2).flatten(1).sum(1).mean()
            )
        return total

    @torch.no_grad()
    def _teacher_logits(self, inputs) -> torch.Tensor:
        if self.cache is None:
            return select_output(call(self.teacher, inputs))
        parts = inputs if isinstance(inputs, tuple) else (inputs,)  # a multi-input model: one key per sample
        host = [t.detach().cpu() for t in parts]
        keys = [hash(b"".join(t[i].numpy().tobytes() for t in host)) for i in range(len(host[0]))]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            rows = tuple(t[missing] for t in parts)
            for i, row in zip(
                missing, select_output(call(self.teacher, rows if isinstance(inputs, tuple) else rows[0])).cpu()
            ):
                self.cache[keys[i]] = row
        return torch.stack([self.cache[k] for k in keys]).to(parts[0].device)

    def after_step(self, model, step):
        if self._opt is not None:
            self._opt.step()
            self._opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """What changes during training: the online teacher, the hint regressors, their optimizer."""
        return {
            "teacher": self.teacher.state_dict() if self.online else None,
            "regressors": self.regressors.state_dict(),
            "optimizer": self._opt.state_dict() if self._opt is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.regressors.load_state_dict(state["regressors"])
        if state.get("optimizer") is not None and self._opt is not None:
            self._opt.load_state_dict(state["optimizer"])

    def on_train_end(self, model):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._feats.clear()
        self.teacher.eval()
