""".slim files: bit-identical round trips, rebuilt shapes, and clear errors on damage."""

import json

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.surgery import set_module
from torchslim.export import SlimFileError, read_slim, write_slim

ROOT_ART = __import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks" / "artifacts"


@pytest.mark.parametrize("name", ts.list_models())
def test_save_load_bit_identical(name, tmp_path):
    torch.manual_seed(0)
    model = ts.create_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    ts.save(model, tmp_path / "m.slim")
    loaded = ts.load(tmp_path / "m.slim")
    assert torch.equal(loaded(x), model(x))


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    """Catches: the safetensors metadata keys written in hash-map order (it changes from call to
    call: 'same seed, same bytes' broken). Eight saves: a 2-key random order passes by luck 1 in 128."""
    model = ts.create_model("lenet5").eval()
    files = []
    for i in range(8):
        ts.save(model, tmp_path / f"m{i}.slim")
        files.append((tmp_path / f"m{i}.slim").read_bytes())
    assert all(f == files[0] for f in files)


def test_changed_shapes_rebuild(tmp_path):
    """A physically smaller layer (as pruning makes) is recorded and rebuilt from the header."""
    model = ts.create_model("vgg_small").eval()
    set_module(model, "2.0", nn.Linear(1152, 64))
    set_module(model, "2.3", nn.Linear(64, 10))
    set_module(model, "0.1", nn.Sequential(nn.BatchNorm2d(32), nn.Identity()))
    model.eval()
    ts.save(model, tmp_path / "m.slim")
    header = read_slim(tmp_path / "m.slim")[1]
    assert set(header["arch"]["overrides"]) == {"2.0", "2.3", "0.1"}
    loaded = ts.load(tmp_path / "m.slim")
    assert loaded[2][0].out_features == 64
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_custom_architecture_needs_model(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 3)).eval()
    ts.save(net, tmp_path / "c.slim")
    with pytest.raises(SlimFileError, match="outside the registry"):
        ts.load(tmp_path / "c.slim")
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    loaded = ts.load(tmp_path / "c.slim", model=fresh)
    x = torch.randn(1, 1, 28, 28)
    assert torch.equal(loaded(x), net(x))


def test_truncated_file_raises(tmp_path):
    ts.save(ts.create_model("lenet5"), tmp_path / "m.slim")
    raw = (tmp_path / "m.slim").read_bytes()
    for cut in (4, 100, len(raw) // 2, len(raw) - 1):
        (tmp_path / "t.slim").write_bytes(raw[:cut])
        with pytest.raises(SlimFileError):
            ts.load(tmp_path / "t.slim")


def test_flipped_byte_in_tensors_raises(tmp_path):
    ts.save(ts.create_model("lenet5"), tmp_path / "m.slim")
    raw = bytearray((tmp_path / "m.slim").read_bytes())
    raw[-1000] ^= 0xFF
    (tmp_path / "m.slim").write_bytes(bytes(raw))
    with pytest.raises(SlimFileError, match="checksum"):
        ts.load(tmp_path / "m.slim")


def test_duplicate_header_keys_are_refused(tmp_path):
    """Catches: a header with two "arch" keys loading with the last one silently winning (a file
    that shows one architecture to a reader of its first key and runs another)."""
    from safetensors.torch import save as st_save

    from torchslim.export.slim import _digest

    ts.save(ts.create_model("lenet5"), tmp_path / "m.slim")
    tensors, _ = read_slim(tmp_path / "m.slim")
    raw = (tmp_path / "m.slim").read_bytes()
    head = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["torchslim"]
    twice = '{"arch": null, ' + head[1:]  # the real "arch" comes later and would win
    meta = {"torchslim": twice, "sha256": _digest(twice, tensors)}
    (tmp_path / "d.slim").write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(SlimFileError, match="duplicate key 'arch'"):
        ts.load(tmp_path / "d.slim")


def test_tampered_header_raises(tmp_path):
    """Changing the architecture in the header without the checksum is caught."""
    ts.save(ts.create_model("lenet5"), tmp_path / "m.slim")
    raw = (tmp_path / "m.slim").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8 : 8 + n])
    inner = json.loads(head["__metadata__"]["torchslim"])
    inner["arch"]["name"] = "lenet300_100"
    head["__metadata__"]["torchslim"] = json.dumps(inner, sort_keys=True)
    new = json.dumps(head).encode()
    new += b" " * (-len(new) % 8)
    (tmp_path / "m.slim").write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])
    with pytest.raises(SlimFileError, match="checksum"):
        ts.load(tmp_path / "m.slim")


def test_plain_safetensors_and_garbage_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3)}, tmp_path / "p.slim")
    with pytest.raises(SlimFileError, match="without a torchslim header"):
        ts.load(tmp_path / "p.slim")
    (tmp_path / "g.slim").write_bytes(b"\x80\x04\x95 pickle-ish garbage")
    with pytest.raises(SlimFileError):
        ts.load(tmp_path / "g.slim")
    with pytest.raises(SlimFileError, match="no such file"):
        ts.load(tmp_path / "missing.slim")


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        write_slim(tmp_path / "x.slim", {"a": torch.zeros(2)}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_unregistered_module_type_is_refused(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return x

    model = ts.create_model("lenet5")
    set_module(model, "4", nn.Sequential(nn.Flatten(), Odd()))
    with pytest.raises(ValueError, match="register_module_spec"):
        ts.save(model, tmp_path / "m.slim")
    assert not (tmp_path / "m.slim").exists()


def test_save_refuses_unconverted_model(tmp_path):
    model = ts.create_model("vgg_small")
    ts.compress_(model, ts.FoldBN())
    with pytest.raises(ValueError, match="convert_"):
        ts.save(model, tmp_path / "m.slim")


def _rewrite(path, edit):
    """Edit a .slim file's tensors / header and recompute its checksum (what an attacker can do)."""
    from torchslim.export.slim import read_slim, write_slim

    tensors, header = read_slim(path)
    edit(tensors, header)
    header.pop("format", None)
    write_slim(path, tensors, header)


def _assert_refused(good, tmp_path, cases: dict) -> None:
    """Each ``{name: (edit, match)}`` applied to a copy of ``good`` must be refused by ``load`` with a
    SlimFileError whose message matches."""
    for what, (edit, match) in cases.items():
        bad = tmp_path / f"{what.replace(' ', '_')}.slim"
        bad.write_bytes(good.read_bytes())
        _rewrite(bad, edit)
        with pytest.raises(SlimFileError, match=match):
            ts.load(bad)


def test_crafted_csr_indices_are_refused_before_any_kernel_runs(tmp_path):
    """Catches: a file's CSR row pointers trusted (a large negative value crashed the process in the
    sparse kernel; 1e9 hung it)."""
    import torch

    from torchslim.prune import Magnitude

    model = ts.create_model("lenet300_100")
    ts.convert_(ts.compress_(model, Magnitude(sparsity=0.9, kernel="sparse")))
    good = tmp_path / "m.slim"
    ts.save(model, good)
    edits = {
        "negative": lambda t, h: t["1.crow"].fill_(-(2**30)),
        "huge": lambda t, h: t["1.crow"].__setitem__(-1, 10**9),
        "decreasing": lambda t, h: t["1.crow"].__setitem__(slice(1, 3), torch.tensor([5, 2], dtype=torch.int32)),
        "column out of range": lambda t, h: t["1.col"].__setitem__(0, 30000),
    }
    _assert_refused(good, tmp_path, {k: (e, r"layer '1' \(SparseLinear\)") for k, e in edits.items()})


def test_binary_per_channel_vectors_of_the_wrong_length_are_refused(tmp_path):
    """Catches: an XNOR layer's scale or threshold vector taken from a layer of another width (the
    tensors follow the file: the kernels read past their ends, NaN outputs)."""
    good = ROOT_ART / "vgg_small_xnor.slim"
    tensors = read_slim(good)[0]
    threshold = next(k for k in tensors if k.endswith(".threshold"))
    scale = next(k for k in tensors if k.endswith(".scale") and k.rsplit(".", 1)[0] + ".words" in tensors)
    edits = {
        "longer threshold": lambda t, h: t.__setitem__(threshold, torch.cat([t[threshold], t[threshold][:1]])),
        "shorter scale": lambda t, h: t.__setitem__(scale, t[scale][:-1].clone()),
    }
    _assert_refused(good, tmp_path, {k: (e, r"holds \d+ values for \d+ channels") for k, e in edits.items()})
    assert torch.isfinite(ts.load(good)(torch.zeros(2, 1, 28, 28))).all()


def test_crafted_huffman_streams_are_refused(tmp_path):
    """Catches: zeroed code lengths, out-of-range alphabets and inflated symbol counts loading as a
    silently broken model (6.9 % / 9.9 % accuracy) or exhausting memory."""
    import torch

    good = ROOT_ART / "lenet5_deep_compression.slim"
    streams = ts.load(good).torchslim.header["entropy"]
    key = min((k for k, v in streams.items() if v["kind"] == "codes"), key=lambda k: streams[k]["bits"])
    first_bad = 2 ** streams[key]["bits"]  # the first value a b-bit code cannot hold
    k = streams[key]["symbols"]  # the stream tensor: k code lengths, k uint8 symbols, the bits
    assert streams[key]["alphabet"] == "uint8"
    cases = {
        "zero lengths": (lambda t, h: t[f"{key}.huff"][:k].zero_(), "code lengths"),
        "alphabet out of range": (lambda t, h: t[f"{key}.huff"][k : 2 * k].fill_(first_bad), "outside"),
        "alphabet too long": (lambda t, h: h["entropy"][key].__setitem__("symbols", 10**6), "do not fit"),
        "alphabet dtype": (
            lambda t, h: h["entropy"][key].__setitem__("alphabet", "float64"),
            "or alphabet out of range",
        ),
        "bits huge": (
            lambda t, h: h["entropy"][key].__setitem__("bits", 10**12),
            "kind, n, bits or alphabet out of range",
        ),
        "1e10 symbols": (lambda t, h: h["entropy"][key].__setitem__("n", 10**10), "declares"),
        "kind missing": (lambda t, h: h["entropy"][key].pop("kind"), "entropy-coded streams"),
    }
    _assert_refused(good, tmp_path, cases)
    assert torch.isfinite(ts.load(good)(torch.zeros(1, 1, 28, 28))).all()


def _with_raw_header(src, dst, head: str):
    """Copy ``src`` with the JSON header text replaced and the checksum recomputed."""
    from safetensors.torch import save as st_save

    from torchslim.export.slim import _digest

    tensors, _ = read_slim(src)
    dst.write_bytes(st_save(tensors, metadata={"torchslim": head, "sha256": _digest(head, tensors)}))


def test_crafted_headers_are_refused_with_the_file_and_field_named(tmp_path):
    """Catches: raw AttributeError / TypeError / KeyError / RecursionError tracebacks, device or dtype
    chosen by the file, and a small file that allocates gigabytes."""
    good = tmp_path / "good.slim"
    ts.save(ts.create_model("lenet300_100"), good)
    header = read_slim(good)[1]
    linear = {"type": "Linear", "args": {"in_features": 784, "out_features": 300, "bias": True}}
    cases = {
        "list": ("[1, 2]", "must be a JSON object"),
        "deep": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    }
    edits = {
        "arch string": (lambda h: h.update(arch="lenet5"), "header field 'arch' has the wrong type"),
        "no name": (lambda h: h["arch"].pop("name"), "arch must be a mapping with a model 'name'"),
        "kwargs type": (lambda h: h["arch"].update(kwargs=[1]), "arch.kwargs and arch.overrides must be mappings"),
        "bad kwarg": (lambda h: h["arch"]["kwargs"].update(evil=1), "architecture: "),
        "unknown arg": (
            lambda h: h["arch"]["overrides"].update({"1": {**linear, "args": {**linear["args"], "evil": 1}}}),
            "unknown constructor argument",
        ),
        "device": (
            lambda h: h["arch"]["overrides"].update({"1": {**linear, "args": {**linear["args"], "device": "meta"}}}),
            "unknown constructor argument",
        ),
        "bomb": (
            lambda h: h["arch"]["overrides"].update(
                {"1": {"type": "Linear", "args": {"in_features": 20000, "out_features": 20000, "bias": True}}}
            ),
            "need .* bytes but the file holds",
        ),
        "nested specs": (lambda h: h["arch"]["overrides"].update({"1": _nest(40)}), "nest deeper"),
        "input too large": (lambda h: h["extra"].update(input_shape=[2, 4096, 4096]), "input_shape: .* more than"),
        "input not ints": (lambda h: h["extra"].update(input_shape=[[1, "a"]]), "input_shape: .* positive ints"),
        "too many inputs": (lambda h: h["extra"].update(input_shape=[[1]] * 17), "input_shape: at most 16"),
    }
    for name, (head, match) in cases.items():
        bad = tmp_path / f"{name}.slim"
        _with_raw_header(good, bad, head)
        with pytest.raises(SlimFileError, match=match) as e:
            ts.load(bad)
        assert str(bad) in str(e.value)
    for name, (edit, match) in edits.items():
        h = json.loads(json.dumps(header))
        edit(h)
        bad = tmp_path / f"{name.replace(' ', '_')}.slim"
        _with_raw_header(good, bad, json.dumps(h))
        with pytest.raises(SlimFileError, match=match) as e:
            ts.load(bad)
        assert str(bad) in str(e.value)


def _nest(depth: int) -> dict:
    spec = {"type": "Identity", "args": {}}
    for _ in range(depth):
        spec = {"type": "Sequential", "children": {"0": spec}}
    return spec


@pytest.mark.parametrize("method", ["quant.uniform", "quant.pq", "quant.kmeans", "prune.magnitude"])
def test_every_packed_format_declares_streams_that_huffman_round_trips(method, tmp_path):
    """Each packed layer declares its integer streams (``RuntimeLayer.entropy_streams``) and the file
    Huffman-codes them. Catches: a format whose streams the encoder does not see (int8 and PQ codes
    were coded only because the encoder read ``bits`` / ``codes`` off any layer), a stream rebuilt
    to the wrong tensor."""
    import warnings

    from test_zoo import CONFIGS

    torch.manual_seed(0)
    model = ts.create_model("lenet5")
    with torch.no_grad():  # bell-shaped weights, as trained ones are: their codes are worth coding
        for p in model.parameters():
            p.normal_(0, 0.05)
    data = [(torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.long))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.convert_(ts.compress_(model, CONFIGS[method], data=data))
    from torchslim.runtime.base import RuntimeLayer

    assert any(m.entropy_streams() for m in model.modules() if isinstance(m, RuntimeLayer))
    ts.save(model, tmp_path / "h.slim", entropy="huffman")
    loaded = ts.load(tmp_path / "h.slim")
    # PQ's 4-bit codes are used about evenly (no gain: stored raw); the others are bell-shaped
    assert method == "quant.pq" or loaded.torchslim.header["entropy"], "no stream was coded"
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def _resave_with(src, dst, edit_tensors=None, edit_header=None):
    """A copy of ``src`` with its tensors or header edited and the checksum recomputed (what an
    attacker can do)."""
    tensors, header = read_slim(src)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    header.pop("format", None)
    write_slim(dst, tensors, header)


@pytest.mark.parametrize(
    "what, edit_tensors, edit_header, says",
    [
        ("NaN BatchNorm eps", None, "eps", "eps = nan"),
        ("inf in a k-means codebook", "codebook", None, "holds NaN or inf"),
        ("int8 weight scale 0", "scale", None, "scale holds values <= 0"),
    ],
)
def test_non_finite_or_zero_floats_in_a_file_are_refused(tmp_path, what, edit_tensors, edit_header, says):
    """Catches: BatchNorm ``eps: NaN``, inf in a codebook and an int8 scale of 0 loading and giving
    NaN outputs or 10 % accuracy (found by crafting files from the committed artifacts)."""
    name = {"codebook": "vgg_small_kmeans4.slim", "scale": "vgg_small_int8.slim"}.get(
        edit_tensors, "vgg_small_filters.slim"
    )

    def tensors(t):
        key = next(k for k in sorted(t) if k.endswith("." + edit_tensors))
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("inf") if edit_tensors == "codebook" else 0.0

    def header(h):
        text = json.dumps(h)
        assert '"eps": 1e-05' in text
        h.clear()
        h.update(json.loads(text.replace('"eps": 1e-05', '"eps": NaN', 1)))

    _resave_with(
        ROOT_ART / name,
        tmp_path / "bad.slim",
        tensors if edit_tensors else None,
        header if edit_header else None,
    )
    with pytest.raises(SlimFileError, match=says):
        ts.load(tmp_path / "bad.slim")


def test_a_file_whose_activations_explode_is_refused_before_the_layer_runs(tmp_path, monkeypatch):
    """Catches: only weights bounded at load (LeNet-5 with conv padding 200 loaded in 3 s, then one
    eval batch took 54 s and 7.1 GB). Padding 1000: 20 x 2024 x 2024 = 81.9 M elements for one
    sample, past MAX_LAYER_OUTPUT (67.1 M): refused from the conv's geometry before it runs."""
    from torchslim.export.spec import layer_specs

    spec = layer_specs(ts.create_model("lenet5"))["0"]
    spec["args"]["padding"] = [1000, 1000]
    _resave_with(
        ROOT_ART / "lenet5.slim", tmp_path / "bomb.slim", None, lambda h: h["arch"]["overrides"].update({"0": spec})
    )
    ran = []
    real = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, *a: ran.append(self.padding) or real(self, *a))
    with pytest.raises(SlimFileError, match="layer '0' outputs 81,931,520 elements"):
        ts.load(tmp_path / "bomb.slim")
    assert (1000, 1000) not in ran  # refused from the geometry, not after computing it


def test_a_declared_registry_input_is_capped_like_a_recorded_one():
    """Catches: in_channels / input_size kwargs skipping the input-size cap ((64, 1024, 1024): 38 s
    and 819 MB to load)."""
    from torchslim.core.inputs import MAX_NUMEL, arch_shape

    assert arch_shape({"kwargs": {"in_channels": 1, "input_size": 28}}) == (1, 28, 28)
    with pytest.raises(ValueError, match=f"more than {MAX_NUMEL:,}"):
        arch_shape({"kwargs": {"in_channels": 64, "input_size": 1024}})


def test_eval_batches_are_sized_to_memory(monkeypatch):
    """Catches: eval's batch-256 latency step allocating whatever the file's activations need (17 GB
    for a declared 4096 x 4096 input): the batch shrinks to a tenth of the memory."""
    from torchslim.core.state import slim_state
    from torchslim.measure.report import batch_that_fits

    model = ts.create_model("lenet5")
    assert batch_that_fits(model, 256) == 256  # nothing measured: as asked
    slim_state(model).activation_bytes = 1 << 30  # 1 GiB per sample, twice for the workspace
    memory = __import__("os").sysconf("SC_PAGE_SIZE") * __import__("os").sysconf("SC_PHYS_PAGES")
    assert batch_that_fits(model, 256) == max(1, min(256, int(0.1 * memory) // (2 << 30)))
    assert ts.load(ROOT_ART / "lenet5.slim").torchslim.activation_bytes > 0


@pytest.mark.parametrize(
    "extra, says",
    [
        ({"data": ["fashion_mnist"]}, "extra.data has the wrong type"),
        ({"data": {"name": ["x"]}}, "extra.data: data.name"),
        ({"data": {"batch_size": "big"}}, "extra.data: data.batch_size"),
        ({"data": {"grayscale": "yes"}}, "extra.data: data.grayscale"),
        ({"data": {"colour": 1}}, "extra.data: data: unknown key"),
    ],
)
def test_a_files_recorded_data_config_is_checked_and_named(tmp_path, extra, says):
    """Catches: a file's ``extra.data`` raising a raw TypeError deep in the data code, or an error
    that does not name the file (five crafted files did)."""
    from torchslim.cli import _model_data

    _resave_with(ROOT_ART / "lenet5.slim", tmp_path / "x.slim", None, lambda h: h.setdefault("extra", {}).update(extra))
    with pytest.raises(SlimFileError, match=f"x.slim: {says}"):
        _model_data(str(tmp_path / "x.slim"), None, None)
