"""``.slim`` files: safetensors tensors + a JSON header, checksummed, written atomically.

Layout: a standard safetensors file whose metadata holds ``torchslim`` (the
JSON header: format version, architecture spec, recipe, extra info) and
``sha256`` (over the header JSON and every tensor's name, dtype, shape and
bytes). Nothing on the load path unpickles or executes file content.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchslim.export.spec import apply_overrides, diff_overrides

FORMAT = "torchslim/1"


class SlimFileError(ValueError):
    """A ``.slim`` file is missing, truncated, corrupt or tampered with."""


def _digest(header: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header.encode())
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_slim(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> int:
    """Atomically write tensors + header to ``path``; returns the file size in bytes."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    head = json.dumps({"format": FORMAT, **header}, sort_keys=True)
    meta = {"torchslim": head, "sha256": _digest(head, tensors)}
    data = st_save(tensors, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


def read_slim(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a ``.slim`` file; raises :class:`SlimFileError` on any damage."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SlimFileError(f"{path}: no such file") from None
    except OSError as e:
        raise SlimFileError(f"{path}: cannot read ({e})") from None
    if len(raw) < 8:
        raise SlimFileError(f"{path}: {len(raw)} bytes is too short for a .slim file (truncated?)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise SlimFileError(f"{path}: header length {n} exceeds the file size {len(raw)}; file is truncated")
    try:
        meta = json.loads(raw[8:8 + n]).get("__metadata__", {})
        tensors = st_load(raw)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise SlimFileError(f"{path}: not a valid .slim/safetensors file ({e}); truncated or corrupt") from None
    if "torchslim" not in meta or "sha256" not in meta:
        raise SlimFileError(f"{path}: a safetensors file without a torchslim header; save it with torchslim.save")
    if _digest(meta["torchslim"], tensors) != meta["sha256"]:
        raise SlimFileError(f"{path}: checksum mismatch; the file is corrupt or was modified")
    header = json.loads(meta["torchslim"])
    if header.get("format") != FORMAT:
        raise SlimFileError(f"{path}: format {header.get('format')!r} is not {FORMAT!r}; upgrade torchslim")
    return tensors, header


def save(model: nn.Module, path: str | os.PathLike, *, recipe: dict | None = None,
         extra: dict | None = None) -> int:
    """Save ``model`` (converted, not mid-compression) as a ``.slim`` file; returns bytes written.

    The architecture is stored as the registry name + kwargs plus per-module
    overrides for every layer that pruning, factorization or packing changed.
    Models not from the registry are saved with ``arch: null`` and are loaded
    with ``load(path, model=...)``.
    """
    from torchslim.core.api import pending

    if pending(model):
        raise ValueError(f"the model has methods prepared but not converted ({pending(model)}); "
                         "call torchslim.convert_(model) before save")
    arch = getattr(model, "torchslim_arch", None)
    header: dict[str, Any] = {"arch": None, "recipe": recipe, "extra": extra or {}}
    if arch is not None:
        from torchslim.models import create_model

        fresh = create_model(arch["name"], **arch["kwargs"])
        header["arch"] = {**arch, "overrides": diff_overrides(model, fresh)}
    return write_slim(path, model.state_dict(), header)


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model from a ``.slim`` file (in eval mode).

    Args:
        model: for architectures outside the registry, an instance of the
            original float architecture; the file's overrides are applied to it.
    """
    tensors, header = read_slim(path)
    arch = header.get("arch")
    if model is None:
        if arch is None:
            raise SlimFileError(f"{path}: the file holds a custom architecture; pass load(path, model=YourModel())")
        from torchslim.models import create_model

        model = create_model(arch["name"], **arch["kwargs"])
    if arch is not None:
        apply_overrides(model, arch.get("overrides", {}))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise SlimFileError(f"{path}: tensors do not fit the architecture: {str(e).splitlines()[0]}") from None
    model.torchslim_header = header
    return model.eval()


def file_header(path: str | os.PathLike) -> dict[str, Any]:
    """Verified header of a ``.slim`` file."""
    return read_slim(path)[1]
