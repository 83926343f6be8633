"""``.slim`` files: safetensors tensors + a JSON header, checksummed, written atomically.

Layout: a standard safetensors file whose metadata holds ``torchslim`` (the
JSON header: format version, architecture spec, recipe, extra info) and
``sha256`` (over the header JSON and every tensor's name, dtype, shape and
bytes). Nothing on the load path unpickles or executes file content.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchslim._files import atomic_write
from torchslim.core import inputs
from torchslim.core.state import slim_state
from torchslim.export.spec import apply_overrides, changed_layers, diff_overrides, layer_specs, resize_to
from torchslim.runtime.base import RuntimeLayer

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
    return atomic_write(path, _canonical(st_save(tensors, metadata=meta)))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (``json`` keeps the last of two ``"arch"`` keys silently)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _canonical(raw: bytes) -> bytes:
    """The safetensors bytes with the metadata keys in sorted order: safetensors keeps them in a
    hash map whose order changes from call to call, so the same model gave different file bytes."""
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8 : 8 + n])
    head["__metadata__"] = dict(sorted(head["__metadata__"].items()))
    body = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > n:  # the same keys and values reordered: only an escaping difference could do this
        return raw
    return raw[:8] + body + b" " * (n - len(body)) + raw[8 + n :]


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
        meta = json.loads(raw[8 : 8 + n]).get("__metadata__", {})
        tensors = st_load(raw)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError, RecursionError, TypeError) as e:
        raise SlimFileError(f"{path}: not a valid .slim/safetensors file ({e}); truncated or corrupt") from None
    if "torchslim" not in meta or "sha256" not in meta:
        raise SlimFileError(f"{path}: a safetensors file without a torchslim header; save it with torchslim.save")
    if _digest(meta["torchslim"], tensors) != meta["sha256"]:
        raise SlimFileError(f"{path}: checksum mismatch; the file is corrupt or was modified")
    try:
        header = json.loads(meta["torchslim"], object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise SlimFileError(
            f"{path}: the torchslim header is not valid JSON ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    if not isinstance(header, dict):
        raise SlimFileError(f"{path}: the torchslim header must be a JSON object, got {type(header).__name__}")
    for key, kind in (
        ("arch", (dict, type(None))),
        ("entropy", (dict, type(None))),
        ("log", (list, type(None))),
        ("overrides", (dict, type(None))),
        ("extra", (dict, type(None))),
    ):
        if not isinstance(header.get(key), kind):
            raise SlimFileError(f"{path}: header field {key!r} has the wrong type ({type(header[key]).__name__})")
    for key, kind in (("data", dict), ("step", str)):  # the typed fields of extra that torchslim reads
        value = (header.get("extra") or {}).get(key)
        if value is not None and not isinstance(value, kind):
            raise SlimFileError(f"{path}: extra.{key} has the wrong type ({type(value).__name__})")
    recipe = header.get("recipe")
    if recipe is not None and not (isinstance(recipe, dict) and isinstance(recipe.get("model", {}), dict)):
        raise SlimFileError(f"{path}: header field 'recipe' is not a recipe mapping")
    if header.get("format") != FORMAT:
        raise SlimFileError(f"{path}: format {header.get('format')!r} is not {FORMAT!r}; upgrade torchslim")
    return tensors, header


def _entropy_encode(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Huffman-code the integer streams packed layers declare (:meth:`RuntimeLayer.entropy_streams`:
    codebook indices as b-bit symbols, CSR column indices as gaps within each row, CSR row pointers
    as row lengths) in place of their raw tensors.
    A stream is replaced only when the coded form is smaller. Each coded stream is one uint8
    tensor ``<key>.huff``: the code lengths (one byte per symbol of the alphabet), the alphabet
    (``alphabet`` dtype, little-endian), then the bit stream; the header entry gives the alphabet
    size (``symbols``) and dtype. One tensor per stream keeps the file's index small (Deep
    Compression files are a few tens of kB, where three index entries per stream cost 3-5 %).
    Returns the header entries."""
    import numpy as np

    from torchslim.export import huffman

    info: dict[str, dict] = {}
    for name, m in model.named_modules():
        if not isinstance(m, RuntimeLayer):
            continue
        prefix = f"{name}." if name else ""
        streams = [
            (prefix + key, symbols, meta) for key, symbols, meta in m.entropy_streams() if prefix + key in tensors
        ]
        for key, symbols, meta in streams:
            stream, alphabet, lengths = huffman.encode(symbols)
            alphabet = _narrow(alphabet)
            alphabet = alphabet.astype(alphabet.dtype.newbyteorder("<"))
            blob = np.concatenate([lengths.astype(np.uint8), alphabet.view(np.uint8), stream.astype(np.uint8)])
            raw = tensors[key].numel() * tensors[key].element_size()
            if blob.nbytes >= raw:
                continue
            del tensors[key]
            tensors[f"{key}.huff"] = torch.from_numpy(blob)
            info[key] = {
                **meta,
                "symbols": int(lengths.size),
                "alphabet": alphabet.dtype.name,
                "raw_bytes": raw,
                "coded_bytes": int(blob.nbytes),
                "bits_per_symbol": round(8 * stream.nbytes / max(len(symbols), 1), 3),
            }
    return info


ALPHABET_DTYPES = {"uint8": "<u1", "int16": "<i2", "int32": "<i4"}  # names a header may give


def _narrow(a):
    """The smallest integer dtype that holds ``a`` (uint8, int16 or int32)."""
    import numpy as np

    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if a.size == 0 or (a.min() >= info.min and a.max() <= info.max):
            return a.astype(dt)
    raise ValueError("a Huffman alphabet does not fit int32")


def _entropy_decode(tensors: dict[str, torch.Tensor], info: dict[str, dict]) -> None:
    """Inverse of :func:`_entropy_encode`, in place."""
    import numpy as np

    from torchslim.export import huffman
    from torchslim.runtime.codebook import pack_bits
    from torchslim.runtime.sparse import csr_cols

    # Row pointers first: decoding column gaps needs them.
    for key, meta in info.items():  # the stream descriptions are data from the file: check them first
        ok = isinstance(meta, dict) and meta.get("kind") in ("codes", "csr_crow", "csr_col")
        ok = ok and isinstance(meta.get("n"), int) and not isinstance(meta["n"], bool) and 0 <= meta["n"] < 2**40
        if ok and meta["kind"] == "codes":
            ok = isinstance(meta.get("bits"), int) and not isinstance(meta["bits"], bool) and 1 <= meta["bits"] <= 8
        ok = ok and meta.get("alphabet") in ALPHABET_DTYPES
        ok = ok and isinstance(meta.get("symbols"), int) and not isinstance(meta["symbols"], bool)
        if not ok:
            raise SlimFileError(f"stream {key!r}: kind, n, bits or alphabet out of range ({meta!r:.120})")
    for key, meta in sorted(info.items(), key=lambda kv: kv[1]["kind"] != "csr_crow"):
        try:
            blob = tensors.pop(f"{key}.huff").numpy()
            dt = np.dtype(ALPHABET_DTYPES[meta["alphabet"]])
            k = meta["symbols"]
            if blob.dtype != np.uint8 or not 0 < k <= blob.size // (1 + dt.itemsize):
                raise ValueError(f"{k} alphabet symbols do not fit the {blob.size}-byte stream")
            table = k * (1 + dt.itemsize)
            symbols = huffman.decode(blob[table:], blob[k:table].view(dt).astype(np.int64), blob[:k], meta["n"])
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise SlimFileError(f"Huffman stream {key!r} cannot be decoded ({e})") from None
        lo, hi = 0, (2 ** meta["bits"] - 1) if meta["kind"] == "codes" else None
        if symbols.size and (int(symbols.min()) < lo or (hi is not None and int(symbols.max()) > hi)):
            raise SlimFileError(
                f"Huffman stream {key!r}: decoded values outside [{lo}, {hi if hi is not None else 'inf'}]"
            )
        if meta["kind"] == "codes":
            tensors[key] = pack_bits(torch.from_numpy(symbols), meta["bits"])
        elif meta["kind"] == "csr_crow":
            tensors[key] = torch.from_numpy(np.concatenate([[0], np.cumsum(symbols)])).to(torch.int32)
        else:
            col = csr_cols(tensors[key[: -len("col")] + "crow"].long().numpy(), symbols)
            if meta["dtype"] not in ("int16", "int32"):  # never a name looked up on torch
                raise ValueError(f"column dtype {meta['dtype']!r} is not int16 or int32")
            tensors[key] = torch.from_numpy(col).to(getattr(torch, meta["dtype"]))


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    recipe: dict | None = None,
    extra: dict | None = None,
    entropy: str | None = None,
) -> int:
    """Save ``model`` (converted, not mid-compression) as a ``.slim`` file; returns bytes written.

    The architecture is stored as the registry name + kwargs plus per-module
    overrides for every layer that pruning, factorization or packing changed.
    Models not from the registry are saved with ``arch: null`` and are loaded
    with ``load(path, model=...)``. ``entropy="huffman"`` Huffman-codes the
    codebook indices and sparse position gaps (Deep Compression's last stage).
    """
    if entropy not in (None, "huffman"):
        raise ValueError(f"entropy={entropy!r}; use None or 'huffman'")
    pending = [c.method for c in slim_state(model).pending]
    if pending:
        raise ValueError(
            f"the model has methods prepared but not converted ({pending}); call torchslim.convert_(model) before save"
        )
    state = slim_state(model)
    extra = dict(extra or {})
    if state.example_inputs is not None:  # what load checks the rebuilt model runs on
        extra.setdefault("input_shape", inputs.shape_of(state.example_inputs))
    header: dict[str, Any] = {"arch": None, "recipe": recipe, "extra": extra, "log": state.log}
    if state.arch is not None:
        from torchslim.models import create_model

        fresh = create_model(state.arch["name"], **state.arch["kwargs"])
        header["arch"] = {**state.arch, "overrides": diff_overrides(model, fresh)}
    elif state.original is not None:  # a user's model: what the methods replaced, by path
        header["overrides"] = changed_layers(model, state.original)
    tensors = dict(model.state_dict())
    if entropy == "huffman":
        header["entropy"] = _entropy_encode(model, tensors)
    return write_slim(path, tensors, header)


MAX_LAYER_OUTPUT = 1 << 26  # elements of one layer's output for one sample (256 MB in float32)
MAX_ACTIVATIONS = 1 << 28  # elements of all layers' outputs for one sample (1 GB)


class ActivationBomb(ValueError):
    """A file's model needs more activation memory per sample than :data:`MAX_LAYER_OUTPUT` /
    :data:`MAX_ACTIVATIONS` allow."""


class _ActivationBudget:
    """Forward hooks on every leaf module during ``load``'s check forward (one sample): the output
    elements of each layer and their sum. The first layer past a bound stops the forward at once,
    naming it (a file with conv padding 200 asked 7.1 GB of one eval batch; only weights were bounded)."""

    def __init__(self, model: nn.Module) -> None:
        self.leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
        self.total, self.hooks = 0, []

    def __enter__(self) -> _ActivationBudget:
        for name, m in self.leaves:
            self.hooks.append(m.register_forward_hook(lambda m, i, o, n=name: self._count(n, o)))
            if all(hasattr(m, a) for a in ("out_channels", "kernel_size", "stride", "padding")):
                self.hooks.append(m.register_forward_pre_hook(lambda m, i, n=name: self._predict(n, m, i)))
        return self

    def _predict(self, name: str, m: nn.Module, args: tuple) -> None:
        """A convolution's output size from its geometry, before it runs (padding 2000 on a 28 x 28
        input: refused without computing 1.3 GB)."""
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            return
        dil = getattr(m, "dilation", (1, 1))
        size = 1
        for d in range(2):
            k, s, p, di = (
                pair[d] if isinstance(pair, (tuple, list)) else pair
                for pair in (m.kernel_size, m.stride, m.padding, dil)
            )
            if not all(isinstance(v, int) for v in (k, s, p, di)):
                return  # padding="same" and the like: the output check after the layer still applies
            size *= max(0, (x.shape[2 + d] + 2 * p - di * (k - 1) - 1) // max(1, s) + 1)
        n = x.shape[0] * m.out_channels * size
        self._check(name, n, self.total + n)

    def _count(self, name: str, out: Any) -> None:
        parts = out if isinstance(out, (tuple, list)) else (out,)
        n = sum(t.numel() for t in parts if isinstance(t, torch.Tensor))
        self.total += n
        self._check(name, n, self.total)

    def _check(self, name: str, n: int, total: int) -> None:
        """``n``: the layer's output elements; ``total``: all layers' so far, this one included."""
        if n > MAX_LAYER_OUTPUT or total > MAX_ACTIVATIONS:
            raise ActivationBomb(
                f"layer {name!r} outputs {n:,} elements for one input sample ({total:,} in all so far); "
                f"at most {MAX_LAYER_OUTPUT:,} per layer and {MAX_ACTIVATIONS:,} in all are loaded "
                "(check the file's padding, strides and declared input)"
            )

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()


def _check_finite(m: nn.Module) -> None:
    """Every float tensor a file sets on ``m`` is finite (weights, codebooks, scales, thresholds,
    running statistics), and a norm layer's ``eps`` is a positive number (``eps = NaN`` loaded and
    gave NaN outputs). Other float attributes may be infinite by design (masking values)."""
    for key, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {key!r} holds NaN or inf")
    eps = vars(m).get("eps")
    if isinstance(eps, float) and not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps = {eps}: must be a positive number")


def _check_channels(m: nn.Module) -> None:
    """A layer's bias has one value per declared output channel, a norm layer's vectors one per
    feature, and running variances are >= 0: a file whose bias was swapped with another layer's
    loaded (per-channel vectors follow the file), and a kernel then read past the end of it (NaN
    outputs); a negative running variance gave NaN outputs too."""
    out = next((getattr(m, a) for a in ("out_channels", "out_features", "num_features") if hasattr(m, a)), None)
    if not isinstance(out, int) or isinstance(out, bool):
        return
    norm = hasattr(m, "num_features")
    for key in ("bias", "running_mean", "running_var", *(("weight",) if norm else ())):
        t = getattr(m, key, None)
        if isinstance(t, torch.Tensor) and t.numel() != out:
            raise ValueError(f"tensor {key!r} holds {t.numel()} values for {out} channels")
    var = getattr(m, "running_var", None)
    if isinstance(var, torch.Tensor) and var.numel() and float(var.min()) < 0:
        raise ValueError("running_var holds negative values")


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model from a ``.slim`` file (in eval mode).

    Args:
        model: for architectures outside the registry, an instance of the
            original float architecture; the file's overrides are applied to it.
    """
    tensors, header = read_slim(path)
    if header.get("entropy"):
        try:
            _entropy_decode(tensors, header["entropy"])
        except (SlimFileError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise SlimFileError(f"{path}: entropy-coded streams: {e}") from None
    arch = header.get("arch")
    if model is None and arch is None:
        raise SlimFileError(
            f"{path}: the file holds a model outside the registry; pass load(path, model=YourModel()) "
            "(command line: --model package.module:factory)"
        )
    overrides = arch.get("overrides", {}) if arch is not None else header.get("overrides") or {}
    # a user model: its layers before the overrides, so that saving it again records them again
    original = layer_specs(model) if model is not None and arch is None else None
    try:
        _check_declared_size(arch, overrides, model, tensors)
        if model is None:
            from torchslim.models import create_model

            model = create_model(arch["name"], **arch["kwargs"])
        apply_overrides(model, overrides)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise SlimFileError(f"{path}: architecture: {e}") from None
    missing, unexpected = _key_mismatch(model, tensors)
    if missing or unexpected:
        raise SlimFileError(
            f"{path}: tensors do not fit the architecture of {type(model).__name__}: missing "
            f"{_few(missing)}, unexpected {_few(unexpected)} (is this the model the file was "
            "saved from?)"
        )
    try:
        resize_to(model, tensors)  # layers a method resized that the spec cannot name (subclasses)
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:1500]
        raise SlimFileError(
            f"{path}: tensors do not fit the architecture of {type(model).__name__}: {detail}"
        ) from None
    for name, m in model.named_modules():  # indices, lengths and values are checked before anything runs
        try:
            _check_finite(m)
            _check_channels(m)
            if isinstance(m, RuntimeLayer):
                m.validate()
        except (ValueError, IndexError, RuntimeError, TypeError) as e:  # a checker tripping on bad data too
            raise SlimFileError(f"{path}: layer {name!r} ({type(m).__name__}): {e}") from None
    try:
        shape = input_shape(header)
    except ValueError as e:
        raise SlimFileError(f"{path}: extra.input_shape: {e}") from None
    if shape is not None:  # the declared architecture must run on its declared input
        try:
            with torch.no_grad(), _ActivationBudget(model) as budget:
                inputs.call(model.eval(), inputs.from_shape(shape))
        except ActivationBomb as e:
            raise SlimFileError(f"{path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - any failure of a file-declared graph is the file's
            raise SlimFileError(
                f"{path}: the model it declares does not run on input {shape} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            ) from None
    state = slim_state(model)
    state.header = header
    if shape is not None:
        state.activation_bytes = budget.total * 4  # float32 outputs of one sample: eval sizes its batches by it
    if shape is not None and state.example_inputs is None:  # what the model takes (surgery.input_shape)
        state.example_inputs = inputs.from_shape(shape)
    if original is not None and state.original is None:
        state.original = original
    state.log = list(header.get("log") or [])  # per-layer decisions of the methods applied
    return model.eval()


def retune(path: str | os.PathLike, out: str | os.PathLike | None = None, model: nn.Module | None = None) -> dict:
    """Re-time the kernel choice of every layer of the file that has one (sparse / dense, lookup
    table / dense: :func:`torchslim.runtime.tune.retune_kernels`) on this machine, and write the
    file again (to ``out``, default in place) with the new choices and timings in its
    architecture record; tensors, recipe, log and extra are kept byte for byte. Returns
    ``{layer: kernel}``."""
    from torchslim.runtime.tune import retune_kernels

    loaded = load(path, model)
    tensors, header = read_slim(path)  # the stored (possibly entropy-coded) tensors, as they are
    state = slim_state(loaded)
    choices = retune_kernels(loaded)
    if header.get("arch") is not None:
        from torchslim.models import create_model

        arch = header["arch"]
        header["arch"] = {**arch, "overrides": diff_overrides(loaded, create_model(arch["name"], **arch["kwargs"]))}
    else:
        header["overrides"] = changed_layers(loaded, state.original)
    header.pop("format", None)
    write_slim(out if out is not None else path, tensors, header)
    return choices


# What a file's layers may allocate beyond its tensor bytes when built, and what their float
# expansions at run time may reach (a 99.9 %-sparse or 1-bit layer legitimately expands to
# 1000x / 32x its storage): beyond these, a file is refused before anything is allocated.
SLACK_BYTES = 1 << 20
EXPANSION = 1024
EXPANSION_FLOOR_BYTES = 64 << 20


def _check_declared_size(arch: Any, overrides: Any, model: nn.Module | None, tensors: dict) -> None:
    """Build what the header declares on the meta device (no memory) and refuse a file whose layers
    would need more memory than its own tensors hold: a 1 MB header cannot allocate gigabytes."""
    if arch is not None:
        if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
            raise ValueError("arch must be a mapping with a model 'name'")
        if not isinstance(arch.get("kwargs", {}), dict) or not isinstance(arch.get("overrides", {}), dict):
            raise ValueError("arch.kwargs and arch.overrides must be mappings")
    have = sum(t.numel() * t.element_size() for t in tensors.values())
    with torch.device("meta"):
        if model is None:
            from torchslim.models import create_model

            probe = create_model(arch["name"], **arch.get("kwargs", {}))
            apply_overrides(probe, overrides)
            parts = [probe]
        else:
            if not isinstance(overrides, dict):
                raise ValueError("overrides must be a mapping of module paths")
            from torchslim.export.spec import build_module

            parts = [build_module(spec) for spec in overrides.values()]
    need = sum(t.numel() * t.element_size() for m in parts for t in [*m.parameters(), *m.buffers()])
    if need > have + SLACK_BYTES:
        raise ValueError(f"the layers it declares need {need:,} bytes but the file holds {have:,} bytes of tensors")
    expand = 4 * sum(m.expanded_numel() for p in parts for m in p.modules() if isinstance(m, RuntimeLayer))
    if expand > max(EXPANSION * have, EXPANSION_FLOOR_BYTES):
        raise ValueError(
            f"its packed layers would expand to {expand:,} bytes of float weights, more than "
            f"{EXPANSION}x the {have:,} bytes the file holds"
        )


def input_shape(header: dict) -> tuple | None:
    """Input shape (without the batch; a tuple of shapes for several inputs) the file's model takes:
    recorded at save time, or the registry model's (C, S, S); None when the file does not say.
    A malformed or oversized recorded shape raises ValueError (it is never allocated)."""
    shape = (header.get("extra") or {}).get("input_shape")
    if shape is not None:
        return inputs.check_shape(shape)
    return inputs.arch_shape(header.get("arch"))


def _key_mismatch(model: nn.Module, tensors: dict) -> tuple[list[str], list[str]]:
    keys = set(model.state_dict())
    return sorted(keys - set(tensors)), sorted(set(tensors) - keys)


def _few(keys: list[str], n: int = 6) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def file_header(path: str | os.PathLike) -> dict[str, Any]:
    """Verified header of a ``.slim`` file."""
    return read_slim(path)[1]
