"""torch7 reader/writer and e-Lab's ENet and LinkNet releases.

The release files are built here as the release's own Lua code builds them (e-lab/ENet-training
train/models/encoder.lua + decoder.lua, e-lab/LinkNet models/model.lua on fb.resnet.torch's
ResNet-18), with random weights, written in torch7's binary format, read back, mapped, and the
pixelwise network is compared with an independent forward pass: a small interpreter of the torch7
module tree written with torch.nn.functional (torch7's semantics: full-conv ``adj``, floor
pooling, unpooling by the pooling module's indices, SpatialDropout's test-time ``1 - p``).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise.convert import torch7
from pixelwise.convert.releases.enet_cityscapes import RELEASE as ENET
from pixelwise.convert.releases.linknet_cityscapes import RELEASE as LINKNET
from pixelwise.convert.torch7 import TorchObject, children
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model

# -- hand-built bytes ------------------------------------------------------------------------


def _i(v: int) -> bytes:
    return struct.pack("<i", v)


def _q(v: int) -> bytes:
    return struct.pack("<q", v)


def _s(text: str) -> bytes:
    return _i(len(text)) + text.encode()


def _num(v: float) -> bytes:
    return _i(1) + struct.pack("<d", v)


def _str(text: str) -> bytes:
    return _i(2) + _s(text)


def test_reads_hand_built_table_tensor_and_reference(tmp_path: Path) -> None:
    # {1: 2.5, "name": "hi", "ok": true, "t": T, "again": T, "none": nil} with T a 2x2 view of
    # a 5-float storage: offset 2 (1-based), strides (1, 2) -> [[2, 4], [3, 5]].
    storage = _i(4) + _i(3) + _s("V 1") + _s("torch.FloatStorage") + _q(5)
    storage += struct.pack("<5f", 1, 2, 3, 4, 5)
    tensor = _i(4) + _i(2) + _s("V 1") + _s("torch.FloatTensor") + _i(2)
    tensor += _q(2) + _q(2) + _q(1) + _q(2) + _q(2) + storage
    data = _i(3) + _i(1) + _i(6)
    data += _num(1) + _num(2.5)
    data += _str("name") + _str("hi")
    data += _str("ok") + _i(5) + _i(1)
    data += _str("t") + tensor
    data += _str("again") + _i(4) + _i(2)  # a reference to object 2, the tensor
    data += _str("none") + _i(0)
    path = tmp_path / "hand.t7"
    path.write_bytes(data)
    root = torch7.read(path).root
    assert root[1] == 2.5 and root["name"] == "hi" and root["ok"] is True and root["none"] is None
    np.testing.assert_array_equal(root["t"], [[2, 4], [3, 5]])
    assert root["again"] is root["t"]


def test_reads_legacy_class_names_and_long_tensors(tmp_path: Path) -> None:
    # Files from before versioned classes give the class name where "V 1" would be.
    storage = _i(4) + _i(3) + _s("torch.LongStorage") + _q(3) + struct.pack("<3q", 7, -8, 9)
    tensor = _i(4) + _i(2) + _s("torch.LongTensor") + _i(1) + _q(3) + _q(1) + _q(1) + storage
    obj = _i(4) + _i(1) + _s("nn.Identity") + _i(3) + _i(4) + _i(1) + _str("idx") + tensor
    path = tmp_path / "legacy.t7"
    path.write_bytes(obj)
    root = torch7.read(path).root
    assert root.typename == "nn.Identity" and root.version == 0
    assert root["idx"].dtype == np.int64
    np.testing.assert_array_equal(root["idx"], [7, -8, 9])


def test_writer_writes_the_bytes_torch_save_writes() -> None:
    obj = TorchObject("nn.ReLU", {"inplace": True, "p": 0.5})
    expected = _i(4) + _i(1) + _s("V 1") + _s("nn.ReLU") + _i(3) + _i(2) + _i(2)
    expected += _str("inplace") + _i(5) + _i(1) + _str("p") + _num(0.5)
    assert torch7.dumps(obj) == expected


def test_writer_round_trip_keeps_types_shapes_and_shared_objects(tmp_path: Path) -> None:
    shared = TorchObject("nn.SpatialMaxPooling", {"kW": 2})
    values = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "d": np.array([1.5, -2.0]),
        "l": np.array([3, 4], dtype=np.int64),
        "b": np.array([255, 0], dtype=np.uint8),
        "i": np.array([[1], [2]], dtype=np.int32),
        "list": [shared, TorchObject("nn.SpatialMaxUnpooling", {"pooling": shared})],
    }
    path = tmp_path / "round.t7"
    torch7.write(values, path)
    back = torch7.read(path).root
    for key in ("f", "d", "l", "b", "i"):
        assert back[key].dtype == values[key].dtype
        np.testing.assert_array_equal(back[key], values[key])
    first, second = torch7.lua_list(back["list"])
    assert second["pooling"] is first


def test_truncated_and_foreign_files_are_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "model.net"
    torch7.write({"w": np.ones(100, dtype=np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(PixelwiseError, match=r"model\.net ends after .* truncated"):
        torch7.read(path)
    other = tmp_path / "other.net"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(PixelwiseError, match=r"other\.net is not a torch7 binary file"):
        torch7.read(other)


# -- layer semantics on hand-computed examples -------------------------------------------------


def _module(name: str, **fields) -> TorchObject:
    return TorchObject(name, fields)


def test_full_convolution_adj_and_layout_by_hand() -> None:
    # One input pixel of 1, a 3x3 kernel 1..9, stride 2, pad 1, adj 1: the output is
    # (1-1)*2 - 2*1 + 3 + 1 = 2 pixels a side and holds the kernel's lower-right 2x2.
    weight = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    layer = _module(
        "nn.SpatialFullConvolution",
        kW=3,
        kH=3,
        dW=2,
        dH=2,
        padW=1,
        padH=1,
        adjW=1,
        adjH=1,
        weight=weight,
        bias=np.zeros(1, dtype=np.float32),
    )
    ours = torch.nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
    layers = torch7.layers_with_weights(_module("nn.Sequential", modules=[layer]), Path("x"))
    state = torch7.state_from_layers(layers, [("up", ours)], Path("x"))
    ours.load_state_dict({key.removeprefix("up."): value for key, value in state.items()})
    out = ours(torch.ones(1, 1, 1, 1))
    torch.testing.assert_close(out[0, 0], torch.tensor([[5.0, 6.0], [8.0, 9.0]]))


def test_spatial_dropout_and_legacy_running_std_fold_into_batch_norm() -> None:
    # SpatialDropout(0.1) after BN: evaluation multiplies by 0.9, so gamma 2 -> 1.8, beta 1 ->
    # 0.9. running_std (old nn) is 1/sqrt(var + eps): 0.5 -> var + eps = 4.
    bn = _module(
        "nn.SpatialBatchNormalization",
        eps=1e-3,
        weight=np.array([2.0], np.float32),
        bias=np.array([1.0], np.float32),
        running_mean=np.array([3.0], np.float32),
        running_std=np.array([0.5], np.float32),
    )
    tree = _module("nn.Sequential", modules=[bn, _module("nn.SpatialDropout", p=0.1)])
    layers = torch7.layers_with_weights(tree, Path("x"))
    ours = torch.nn.BatchNorm2d(1, eps=1e-5)
    state = torch7.state_from_layers(layers, [("bn", ours)], Path("x"))
    assert state["bn.weight"].item() == pytest.approx(1.8)
    assert state["bn.bias"].item() == pytest.approx(0.9)
    assert state["bn.running_var"].item() == pytest.approx(4.0 - 1e-5)


# -- torch7 interpreter (the independent forward pass) -----------------------------------------


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float64))


def _run(m: TorchObject, x, pools: dict):
    name = m.basename
    if name == "Sequential":
        for child in children(m):
            x = _run(child, x, pools)
        return x
    if name == "ConcatTable":
        return [_run(child, x, pools) for child in children(m)]
    if name == "CAddTable":
        return sum(x[1:], x[0])
    if name == "JoinTable":
        return torch.cat(x, dim=int(m["dimension"]) - 1)  # batch mode: dimension 2 = channels
    if name == "Identity":
        return x
    kernel = (int(m.get("kH", 1)), int(m.get("kW", 1)))
    stride = (int(m.get("dH", 1)), int(m.get("dW", 1)))
    pad = (int(m.get("padH", 0)), int(m.get("padW", 0)))
    bias = _t(m["bias"]) if isinstance(m.get("bias"), np.ndarray) else None
    if name in ("SpatialConvolution", "SpatialDilatedConvolution"):
        dilation = (int(m.get("dilationH", 1)), int(m.get("dilationW", 1)))
        return F.conv2d(x, _t(m["weight"]), bias, stride, pad, dilation)
    if name == "SpatialFullConvolution":
        adj = (int(m.get("adjH", 0)), int(m.get("adjW", 0)))
        return F.conv_transpose2d(x, _t(m["weight"]), bias, stride, pad, adj)
    if name == "SpatialBatchNormalization":
        return F.batch_norm(
            x,
            _t(m["running_mean"]),
            _t(m["running_var"]),
            _t(m["weight"]),
            bias,
            False,
            0.0,
            float(m["eps"]),
        )
    if name == "PReLU":
        return F.prelu(x, _t(m["weight"]))
    if name == "ReLU":
        return F.relu(x)
    if name == "SpatialMaxPooling":
        y, indices = F.max_pool2d(x, kernel, stride, pad, return_indices=True)
        pools[id(m)] = (indices, x.shape[-2:], kernel, stride)
        return y
    if name == "SpatialMaxUnpooling":
        indices, size, k, s = pools[id(m["pooling"])]
        return F.max_unpool2d(x, indices, k, s, output_size=size)
    if name == "Padding":  # nn.Padding(dim, pad, nInputDim): zeros after (pad > 0) along dim
        dim = int(m["dim"]) + x.dim() - int(m["nInputDim"]) - 1
        shape = list(x.shape)
        shape[dim] = int(m["pad"])
        return torch.cat([x, x.new_zeros(shape)], dim=dim)
    if name == "SpatialDropout":  # torch7 scales at test time
        return x * (1.0 - float(m["p"]))
    raise AssertionError(f"the interpreter has no {m.typename}")


def run_torch7(tree: TorchObject, x: torch.Tensor) -> torch.Tensor:
    return _run(tree, x.double(), {})


# -- the releases' trees, as their Lua code builds them ----------------------------------------


class Builder:
    """nn modules with random weights, fields named as torch7's nn/cudnn modules name them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _w(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)

    def conv(self, nin, nout, kw, kh, dw=1, dh=1, pw=0, ph=0, *, bias=True, dilation=None):
        fields = dict(
            nInputPlane=nin,
            nOutputPlane=nout,
            kW=kw,
            kH=kh,
            dW=dw,
            dH=dh,
            padW=pw,
            padH=ph,
            weight=self._w((nout, nin, kh, kw), nin * kw * kh),
        )
        if bias:
            fields["bias"] = self._w((nout,), 4)
        if dilation:
            fields |= dict(dilationW=dilation, dilationH=dilation)
            return TorchObject("nn.SpatialDilatedConvolution", fields)
        return TorchObject("cudnn.SpatialConvolution", fields)

    def full_conv(self, nin, nout, kw, kh, dw, dh, pw=0, ph=0, aw=0, ah=0):
        return TorchObject(
            "nn.SpatialFullConvolution",
            dict(
                nInputPlane=nin,
                nOutputPlane=nout,
                kW=kw,
                kH=kh,
                dW=dw,
                dH=dh,
                padW=pw,
                padH=ph,
                adjW=aw,
                adjH=ah,
                weight=self._w((nin, nout, kh, kw), nin * kw * kh // (dw * dh)),
                bias=self._w((nout,), 4),
            ),
        )

    def bn(self, n, eps=1e-5):
        r = self.rng
        return TorchObject(
            "nn.SpatialBatchNormalization",
            dict(
                eps=eps,
                momentum=0.1,
                affine=True,
                train=False,
                weight=r.uniform(0.5, 1.5, n).astype(np.float32),
                bias=r.uniform(-0.3, 0.3, n).astype(np.float32),
                running_mean=r.uniform(-0.3, 0.3, n).astype(np.float32),
                running_var=r.uniform(0.5, 1.5, n).astype(np.float32),
            ),
        )

    def prelu(self, n):
        return TorchObject(
            "nn.PReLU",
            dict(nOutputPlane=n, weight=self.rng.uniform(0.0, 0.5, n).astype(np.float32)),
        )


def _m(name: str, *modules, **fields) -> TorchObject:
    if modules:
        fields["modules"] = list(modules)
    return TorchObject(name, fields)


def _pool(k, s, p=0):
    return _m("nn.SpatialMaxPooling", kW=k, kH=k, dW=s, dH=s, padW=p, padH=p)


def enet_tree(classes: int, seed: int = 0) -> TorchObject:
    """encoder.lua (without its classifier) + decoder.lua, module for module."""
    b = Builder(seed)
    count = [0]

    def bottleneck(nin, nout, down=False, asym=None, dilated=None):
        internal, s = nout // 4, 2 if down else 1
        main = [b.conv(nin, internal, s, s, s, s, bias=False), b.bn(internal, 1e-3)]
        main.append(b.prelu(internal))
        if asym:
            main += [b.conv(internal, internal, asym, 1, 1, 1, asym // 2, 0, bias=False)]
            main += [b.conv(internal, internal, 1, asym, 1, 1, 0, asym // 2)]
        elif dilated:
            main += [b.conv(internal, internal, 3, 3, 1, 1, dilated, dilated, dilation=dilated)]
        else:
            main += [b.conv(internal, internal, 3, 3, 1, 1, 1, 1)]
        main += [b.bn(internal, 1e-3), b.prelu(internal)]
        main += [b.conv(internal, nout, 1, 1, bias=False), b.bn(nout, 1e-3)]
        main.append(_m("nn.SpatialDropout", p=0.01 if count[0] < 5 else 0.1))
        count[0] += 1
        other = [_m("nn.Identity")]
        if down:
            other.append(_pool(2, 2))
        if nin != nout:
            other.append(_m("nn.Padding", dim=1, pad=nout - nin, nInputDim=3))
        block = _m("nn.ConcatTable", _m("nn.Sequential", *main), _m("nn.Sequential", *other))
        return _m("nn.Sequential", block, _m("nn.CAddTable"), b.prelu(nout))

    def up_bottleneck(nin, nout, pooling=None):
        internal = nout // 4
        main = [b.conv(nin, internal, 1, 1, bias=False), b.bn(internal, 1e-3), _m("cudnn.ReLU")]
        if pooling is not None:
            main.append(b.full_conv(internal, internal, 3, 3, 2, 2, 1, 1, 1, 1))
        else:
            main.append(b.conv(internal, internal, 3, 3, 1, 1, 1, 1))
        main += [b.bn(internal, 1e-3), _m("cudnn.ReLU")]
        main += [b.conv(internal, nout, 1, 1, bias=False), b.bn(nout, 1e-3)]
        other = [_m("nn.Identity")]
        if nin != nout or pooling is not None:
            other += [b.conv(nin, nout, 1, 1, bias=False), b.bn(nout, 1e-3)]
            other.append(_m("nn.SpatialMaxUnpooling", pooling=pooling))
        block = _m("nn.ConcatTable", _m("nn.Sequential", *main), _m("nn.Sequential", *other))
        return _m("nn.Sequential", block, _m("nn.CAddTable"), _m("cudnn.ReLU"))

    initial = _m("nn.ConcatTable", b.conv(3, 13, 3, 3, 2, 2, 1, 1), _pool(2, 2))
    model = [initial, _m("nn.JoinTable", dimension=2), b.bn(16, 1e-3), b.prelu(16)]
    model.append(bottleneck(16, 64, down=True))
    model += [bottleneck(64, 64) for _ in range(4)]
    model.append(bottleneck(64, 128, down=True))
    for _ in range(2):
        model += [bottleneck(128, 128), bottleneck(128, 128, dilated=2)]
        model += [bottleneck(128, 128, asym=5), bottleneck(128, 128, dilated=4)]
        model += [bottleneck(128, 128), bottleneck(128, 128, dilated=8)]
        model += [bottleneck(128, 128, asym=5), bottleneck(128, 128, dilated=16)]
    pools = [m for m in _modules(_m("nn.Sequential", *model)) if m.basename == "SpatialMaxPooling"]
    assert len(pools) == 3
    model.append(up_bottleneck(128, 64, pools[2]))
    model += [up_bottleneck(64, 64), up_bottleneck(64, 64)]
    model.append(up_bottleneck(64, 16, pools[1]))
    model.append(up_bottleneck(16, 16))
    model.append(b.full_conv(16, classes, 2, 2, 2, 2))
    return _m("nn.Sequential", *model)


def _modules(tree: TorchObject):
    yield tree
    for child in children(tree):
        yield from _modules(child)


def linknet_tree(classes: int, seed: int = 0) -> TorchObject:
    """model.lua on fb.resnet.torch's ResNet-18 (bias-free convs, shortcut type B)."""
    b = Builder(seed)

    def basic(nin, n, stride):
        s = [b.conv(nin, n, 3, 3, stride, stride, 1, 1, bias=False), b.bn(n), _m("cudnn.ReLU")]
        s += [b.conv(n, n, 3, 3, 1, 1, 1, 1, bias=False), b.bn(n)]
        if nin != n:
            shortcut = _m(
                "nn.Sequential", b.conv(nin, n, 1, 1, stride, stride, bias=False), b.bn(n)
            )
        else:
            shortcut = _m("nn.Identity")
        block = _m("nn.ConcatTable", _m("nn.Sequential", *s), shortcut)
        return _m("nn.Sequential", block, _m("nn.CAddTable", inplace=True), _m("cudnn.ReLU"))

    def layer(k):
        n = 64 * 2 ** (k - 1)
        nin, stride = (64, 1) if k == 1 else (n // 2, 2)
        return _m("nn.Sequential", basic(nin, n, stride), basic(n, n, 1))

    def decode(nin, nout, stride, adj):
        q = nin // 4
        return _m(
            "nn.Sequential",
            b.conv(nin, q, 1, 1),
            b.bn(q, 1e-3),
            _m("nn.ReLU"),
            b.full_conv(q, q, 3, 3, stride, stride, 1, 1, adj, adj),
            b.bn(q, 1e-3),
            _m("nn.ReLU"),
            b.conv(q, nout, 1, 1),
            b.bn(nout, 1e-3),
            _m("nn.ReLU"),
        )

    def bypass(features, k, stride, adj, out):
        prim = [layer(k)]
        if k < 4:
            prim.append(bypass(2 * features, k + 1, 2, 1, features))
            prim.append(decode(features, out, stride, adj))
        else:
            prim.append(decode(features, out, 2, 1))
        accum = _m("nn.ConcatTable", _m("nn.Sequential", *prim), _m("nn.Identity"))
        return _m("nn.Sequential", accum, _m("nn.CAddTable"), _m("nn.ReLU"))

    return _m(
        "nn.Sequential",
        b.conv(3, 64, 7, 7, 2, 2, 3, 3, bias=False),
        b.bn(64),
        _m("cudnn.ReLU"),
        _pool(3, 2, 1),
        bypass(64, 1, 1, 0, 64),
        b.full_conv(64, 32, 3, 3, 2, 2, 1, 1, 1, 1),
        b.bn(32),
        _m("nn.ReLU"),
        b.conv(32, 32, 3, 3, 1, 1, 1, 1),
        b.bn(32, 1e-3),
        _m("nn.ReLU"),
        b.full_conv(32, classes, 2, 2, 2, 2),
    )


def _convert(release, tree: TorchObject, path: Path) -> torch.nn.Module:
    torch7.write(tree, path)
    parsed = torch7.read(path)
    model = build_model(release.model, release.num_classes, **release.model_options)
    model.load_state_dict(release.to_state_dict(parsed, model), strict=True)
    return model.double().eval()


@pytest.mark.parametrize(
    ("release", "build", "size"),
    [(ENET, enet_tree, (32, 48)), (LINKNET, linknet_tree, (64, 96))],
    ids=["enet", "linknet"],
)
def test_release_round_trip_matches_the_torch7_forward(release, build, size, tmp_path) -> None:
    tree = build(20)  # Unlabeled + the 19 Cityscapes classes, as loadCityscape(s).lua
    model = _convert(release, tree, tmp_path / release.file_name)
    x = torch.rand(1, 3, *size, dtype=torch.float64)
    parsed = torch7.read(tmp_path / release.file_name).root
    expected = run_torch7(parsed, x)[:, 1:]  # the release's classes 2..20
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_release_conventions_are_the_elab_loaders() -> None:
    # RGB in [0, 1]; ENet without normalisation, LinkNet minus the training mean only.
    assert ENET.input.rgb_unit_mean_std() == ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    mean, std = LINKNET.input.rgb_unit_mean_std()
    assert std == [1.0, 1.0, 1.0] and all(0.25 < m < 0.35 for m in mean)


def test_file_of_another_model_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "model-cs-IoU.net"
    torch7.write(enet_tree(20), path)
    parsed = torch7.read(path)
    model = build_model("linknet", 19)
    with pytest.raises(PixelwiseError, match=r"model-cs-IoU\.net holds \d+ layers with weights"):
        LINKNET.to_state_dict(parsed, model)
    wrong_classes = tmp_path / "model-cityscapes.net"
    torch7.write(enet_tree(12), wrong_classes)
    with pytest.raises(PixelwiseError, match=r"model-cityscapes\.net: layer .* class count"):
        ENET.to_state_dict(torch7.read(wrong_classes), build_model("enet", 19))


def test_only_dropouts_that_scale_at_test_time_are_folded() -> None:
    # nn.Dropout scales while training by default (v2) and is the identity in evaluation; built
    # with v1 it multiplies by 1 - p in evaluation, as SpatialDropout always does.
    def bn() -> TorchObject:
        ones = np.ones(1, np.float32)
        return _module(
            "nn.SpatialBatchNormalization", eps=1e-5, weight=ones, bias=ones,
            running_mean=0 * ones, running_var=ones,
        )  # fmt: skip

    tree = _module(
        "nn.Sequential",
        modules=[
            bn(), _module("nn.Dropout", p=0.5, v2=False),
            bn(), _module("nn.Dropout", p=0.5, v2=True),
            bn(), _module("nn.SpatialDropout", p=0.25),
        ],
    )  # fmt: skip
    scales = [layer.scale for layer in torch7.layers_with_weights(tree, Path("x"))]
    assert scales == [0.5, 1.0, 0.75]
    with pytest.raises(PixelwiseError, match=r"SpatialDropout at 1 does not follow a batch norm"):
        torch7.layers_with_weights(
            _module("nn.Sequential", modules=[_module("nn.SpatialDropout", p=0.1)]), Path("x")
        )
