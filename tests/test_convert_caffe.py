"""The Caffe reader/writer, Caffe's layer semantics on hand-computed numbers, and the Caffe releases.

Each release is written as a ``.caffemodel`` with the layer names, blob order and shapes of its
deploy net from a pixelwise model with random weights, converted back and compared. PSPNet-50 is
also checked against a forward pass written here with torch.nn.functional from the layer list of
the release's deploy net alone (BGR 0-255 minus the mean, Caffe's ops), on random blobs that never
went through a pixelwise model, so a mapping that the writer and the reader share (a colour order,
a mean, a block order) cannot hide.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.convert import caffe
from pixelwise.convert.caffe import CaffeLayer, decode_net, encode_net, layers_from_state
from pixelwise.convert.convert import convert_release
from pixelwise.convert.zoo import get_release, releases
from pixelwise.engine.model_io import load_model
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model

# -- the wire format on hand-built bytes -----------------------------------------------------------


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field whose key and length fit one byte each (hand-built tests)."""
    assert field < 16 and len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def test_reads_hand_built_layer_with_shape_and_packed_floats():
    shape = _ld(7, _ld(1, bytes([2, 3])))  # BlobShape { dim: [2, 3] } packed
    values = [1.5, -2.0, 0.25, 3.0, 0.0, -1.0]
    data = _ld(5, struct.pack("<6f", *values))
    layer = _ld(1, b"conv") + _ld(2, b"Convolution") + _ld(7, shape + data)
    # LayerParameter is NetParameter field 100: key 100 << 3 | 2 = 802 = varint a2 06.
    net = _ld(1, b"n") + b"\xa2\x06" + bytes([len(layer)]) + layer
    parsed = decode_net(net)
    assert parsed.name == "n"
    assert [(x.name, x.type) for x in parsed.layers] == [("conv", "Convolution")]
    np.testing.assert_array_equal(parsed.layers[0].blobs[0], np.array(values).reshape(2, 3))


def test_reads_v1_layer_legacy_shape_and_unpacked_floats():
    # num 1, channels 1, height 1, width 2 as varints; two unpacked floats (key 5 << 3 | 5 = 0x2d).
    blob = bytes([0x08, 1, 0x10, 1, 0x18, 1, 0x20, 2])
    blob += b"\x2d" + struct.pack("<f", 7.0) + b"\x2d" + struct.pack("<f", -0.5)
    # V1LayerParameter: name = 4, type = 5 (enum; DECONVOLUTION = 39), blobs = 6.
    layer = _ld(4, b"up") + bytes([5 << 3, 39]) + _ld(6, blob)
    parsed = decode_net(_ld(2, layer))
    assert (parsed.layers[0].name, parsed.layers[0].type) == ("up", "Deconvolution")
    np.testing.assert_array_equal(parsed.layers[0].blobs[0], [[[[7.0, -0.5]]]])


def test_reads_packed_double_data():
    blob = _ld(7, _ld(1, bytes([2]))) + _ld(8, struct.pack("<2d", 0.125, -4.0))
    parsed = decode_net(_ld(2, _ld(4, b"b") + _ld(6, blob)))
    np.testing.assert_array_equal(parsed.layers[0].blobs[0], [0.125, -4.0])
    assert parsed.layers[0].blobs[0].dtype == np.float32


def test_varint_of_300_and_negative_dims_round_trip():
    assert caffe._encode_varint(300) == b"\xac\x02"
    assert caffe._varint(memoryview(b"\xac\x02"), 0) == (300, 2)
    assert caffe._int64(caffe._varint(memoryview(caffe._encode_varint(-1)), 0)[0]) == -1


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"legacy_shape": True},
        {"packed": False},
        {"double": True},
        {"v1": True, "legacy_shape": True},
    ],
)
def test_encode_decode_round_trip_every_layout(options):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    layers = [CaffeLayer("conv1", "Convolution", [weight, bias])]
    parsed = decode_net(encode_net(layers, name="net", **options))
    got = parsed.layers[0].blobs
    np.testing.assert_array_equal(got[0], weight)
    np.testing.assert_array_equal(got[1].reshape(-1), bias)


def test_skips_fields_it_does_not_need():
    # An unknown varint field (99) and an unknown fixed64 (98) inside a layer are skipped.
    extra = b"\x98\x06\x05" + b"\x91\x06" + b"\x00" * 8
    layer = _ld(1, b"a") + _ld(2, b"ReLU") + extra
    parsed = decode_net(b"\xa2\x06" + bytes([len(layer)]) + layer)
    assert parsed.layers[0].name == "a" and parsed.layers[0].blobs == []


def test_truncated_file_is_one_sentence(tmp_path):
    layers = [CaffeLayer("conv1", "Convolution", [np.ones((2, 2), np.float32)])]
    data = encode_net(layers)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[:-3])
    with pytest.raises(PixelwiseError, match="cut.caffemodel are not a readable .caffemodel"):
        caffe.read(path)


def test_file_without_weights_is_refused(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_bytes(b"")
    with pytest.raises(PixelwiseError, match="hold no layer with weights"):
        caffe.read(path)


def test_parse_prototxt_nested_and_repeated():
    text = """
    name: "net"  # a comment
    input: "data"
    layer { name: "c" type: "Convolution" bottom: "data"
      convolution_param { num_output: 8 pad: 1 kernel_size: 3 bias_term: false } }
    layer { name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 } }
    """
    net = caffe.parse_prototxt(text)
    assert net["name"] == ["net"]
    assert [layer["name"][0] for layer in net["layer"]] == ["c", "p"]
    conv = net["layer"][0]["convolution_param"][0]
    assert conv["num_output"] == [8] and conv["bias_term"] == [False]
    assert net["layer"][1]["pooling_param"][0]["pool"] == ["MAX"]
    with pytest.raises(ValueError):
        caffe.parse_prototxt("layer { name: 'x'")


# -- layer semantics on hand-computed numbers ------------------------------------------------------


def _bn_module(state: dict[str, torch.Tensor]) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(1).eval()
    bn.load_state_dict({k.removeprefix("bn."): v for k, v in state.items()})
    return bn


def test_pspnet_bn_four_blobs_slope_bias_mean_variance():
    # y = 2 (5 - 3) / sqrt(4 + 1e-5) + 1 = 2.9999975 (eps 1e-5, BNParameter's default).
    blobs = [np.full((1, 1, 1, 1), v, np.float32) for v in (2.0, 1.0, 3.0, 4.0)]
    bn = _bn_module(caffe.bn4_to_state(CaffeLayer("bn", "BN", blobs), "bn"))
    y = bn(torch.full((1, 1, 1, 1), 5.0)).item()
    assert y == pytest.approx(2 * 2 / math.sqrt(4 + 1e-5) + 1, abs=1e-6)
    assert y == pytest.approx(2.9999975, abs=1e-6)


def test_batchnorm_moving_average_factor_and_scale():
    # Caffe stores the sums: mean 6 / 2 = 3, variance 8 / 2 = 4; Scale gamma 2, beta 1.
    norm = CaffeLayer("bn", "BatchNorm", [np.array([6.0]), np.array([8.0]), np.array([2.0])])
    scale = CaffeLayer("sc", "Scale", [np.array([2.0]), np.array([1.0])])
    state = caffe.batchnorm_to_state(norm, scale, "bn")
    assert state["bn.running_mean"].item() == 3.0 and state["bn.running_var"].item() == 4.0
    y = _bn_module(state)(torch.full((1, 1, 1, 1), 5.0)).item()
    assert y == pytest.approx(2.9999975, abs=1e-6)
    # A factor of 0 (never updated) means zero statistics, as Caffe's batch_norm_layer.cpp.
    zero = CaffeLayer("bn", "BatchNorm", [np.array([6.0]), np.array([8.0]), np.array([0.0])])
    state = caffe.batchnorm_to_state(zero, None, "bn")
    assert state["bn.running_mean"].item() == 0.0 and state["bn.weight"].item() == 1.0


def test_segnet_inference_bn_is_scale_and_shift():
    layer = CaffeLayer("bn", "BN", [np.full((1, 1, 1, 1), 3.0), np.full((1, 1, 1, 1), -1.0)])
    y = _bn_module(caffe.folded_bn_to_state(layer, "bn"))(torch.full((1, 1, 1, 1), 2.0)).item()
    assert y == pytest.approx(3.0 * 2.0 - 1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "expected"),
    [
        (237, 3, 2, 1, 119),  # PSPNet's pool1 at 473
        (238, 3, 2, 1, 120),  # where floor rounding would give 119
        (45, 2, 2, 0, 23),  # SegNet's pool4 at 360: 22.5 rounds up
        (5, 3, 2, 1, 3),
        (4, 3, 3, 1, 2),  # the last window would start in the padding: 3 - 1
        (60, 60, 60, 0, 1),
    ],
)
def test_caffe_pool_size(size, kernel, stride, pad, expected):
    assert caffe.caffe_pool_size(size, kernel, stride, pad) == expected


def test_ceil_mode_max_pool_matches_caffe_sizes():
    for size in range(3, 40):
        for kernel, stride, pad in ((2, 2, 0), (3, 2, 1), (3, 2, 0)):
            pooled = F.max_pool2d(
                torch.zeros(1, 1, size, size), kernel, stride, pad, ceil_mode=True
            )
            assert pooled.shape[-1] == caffe.caffe_pool_size(size, kernel, stride, pad)


def test_deconvolution_blob_is_in_out_kh_kw():
    # Caffe Deconvolution weight (in=2, out=3, 1, 1): output o = sum_i x_i w[i, o].
    weight = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    deconv = nn.ConvTranspose2d(2, 3, 1, bias=False)
    deconv.load_state_dict(
        {
            "weight": caffe.conv_to_state(
                CaffeLayer("up", "Deconvolution", [weight]), "d", bias=False
            )["d.weight"]
        }
    )
    x = torch.tensor([1.0, 10.0]).reshape(1, 2, 1, 1)
    expected = [0 * 1 + 3 * 10, 1 * 1 + 4 * 10, 2 * 1 + 5 * 10]
    assert deconv(x).reshape(-1).tolist() == expected


def test_reverse_input_reads_a_bgr_first_layer_as_rgb():
    weight = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)  # B 0, G 1, R 2
    state = caffe.conv_to_state(
        CaffeLayer("c", "Convolution", [weight]), "c", bias=False, reverse_input=True
    )
    assert state["c.weight"].reshape(-1).tolist() == [2.0, 1.0, 0.0]


def test_wrong_blob_count_is_a_mapping_error():
    with pytest.raises(caffe.MappingError, match="has 1 blobs where"):
        caffe.bn4_to_state(CaffeLayer("x/bn", "BN", [np.ones(2)]), "bn")


# -- the releases ----------------------------------------------------------------------------------


def _randomise(model: nn.Module, seed: int = 0, gain: float = 1.0) -> nn.Module:
    """Random weights with BN statistics away from 0/1 and logits of order 1; ``gain`` 2 is He's
    scale, which keeps activations alive through a deep plain (un-normalised) stack."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.num_batches_tracked.zero_()
            elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                fan_in = module.weight[0].numel()
                if isinstance(module, nn.ConvTranspose2d):  # weight is (in, out, kh, kw)
                    fan_in = module.weight.shape[0] * module.weight[0, 0].numel()
                module.weight.normal_(0, math.sqrt(gain / fan_in), generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=generator)
    return model.eval()


def _round_trip(
    name: str, table, size: tuple[int, int], tmp_path: Path, rtol: float = 1e-5
) -> None:
    """Write the release's file from a random model, convert it with the CLI's function, load the
    checkpoint as eval does, and compare logits on the same normalised input."""
    release = get_release(name)
    model = _randomise(build_model(release.model, release.num_classes, **release.model_options))
    path = tmp_path / release.file_name
    path.write_bytes(encode_net(layers_from_state(model.state_dict(), table)))
    out = convert_release(name, path, tmp_path / "model.pt")
    loaded = load_model(out, "cpu")
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), loaded.model(x)
    assert got.shape == expected.shape == (1, release.num_classes, *size)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= rtol * max(scale, 1.0)


def _table_keys(table) -> set[str]:
    """The state-dict keys a table's layers fill (the round trips check the values)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys: set[str] = set()
    for entry in table:
        if entry.kind in ("bn4", "bn_folded"):
            keys |= {f"{entry.module}.{n}" for n in bn}
        else:
            keys |= {f"{entry.module}.weight"} | ({f"{entry.module}.bias"} if entry.bias else set())
    return keys


def test_every_caffe_table_fills_its_network_exactly():
    from pixelwise.convert.releases._decouplednet import decouplednet_table
    from pixelwise.convert.releases._fcn import fcn_table
    from pixelwise.convert.releases._pspnet import pspnet_table
    from pixelwise.convert.releases.gfrnet_camvid import gfrnet_table
    from pixelwise.convert.releases.segnet_basic_camvid import segnet_basic_table

    tables = {
        "gfrnet-camvid": gfrnet_table(),
        "pspnet50-ade20k": pspnet_table(50),
        "pspnet101-voc2012": pspnet_table(101),
        "pspnet101-cityscapes": pspnet_table(101),
        "fcn32s-voc": fcn_table("fcn32s"),
        "fcn16s-voc": fcn_table("fcn16s"),
        "fcn8s-voc": fcn_table("fcn8s"),
        "fcn32s-nyudv2-color": fcn_table("fcn32s"),
        "segnet-basic-camvid": segnet_basic_table(),
        # The four DecoupledNet files share one layout (tests/test_convert_decouplednet.py).
        **{
            f"decouplednet-{n}-voc": decouplednet_table()
            for n in ("full", "25anno", "10anno", "5anno")
        },
    }
    caffe_releases = {n for n, r in releases().items() if r.format == "caffe"}
    assert caffe_releases == set(tables)
    for name, table in tables.items():
        release = get_release(name)
        with torch.device("meta"):
            model = build_model(release.model, release.num_classes, **release.model_options)
        assert _table_keys(table) == set(model.state_dict()), name
        assert len({entry.caffe for entry in table}) == len(table), name
        # One BGR first convolution per release.
        assert sum(entry.reverse_input for entry in table) == 1, name


def test_pspnet_table_names_follow_the_deploy_prototxt():
    from pixelwise.convert.releases._pspnet import pspnet_table

    names = [entry.caffe for entry in pspnet_table(101)]
    # 3 stem conv+BN pairs, 33 blocks of 3 convs + 4 projections, 4 bins, conv5_4: 111 BN layers
    # (the count of type "BN" in pspnet101_VOC2012_473.prototxt), then conv6.
    assert sum(n.endswith("/bn") for n in names) == 111
    assert "conv4_23_1x1_increase" in names and "conv4_24_1x1_reduce" not in names
    assert names[-1] == "conv6" and names[0] == "conv1_1_3x3_s2"


def test_segnet_basic_round_trip(tmp_path):
    from pixelwise.convert.releases.segnet_basic_camvid import segnet_basic_table

    # 45 x 61: odd sides at every ceil-mode pool (45 -> 23 -> 12 -> 6 -> 3).
    _round_trip("segnet-basic-camvid", segnet_basic_table(), (45, 61), tmp_path)


@pytest.mark.slow
def test_pspnet50_ade20k_round_trip(tmp_path):
    from pixelwise.convert.releases._pspnet import pspnet_table

    # 89 = 8 * 11 + 1: res5 12 x 12, so every bin (1, 2, 3, 6) pools whole cells as the
    # release's kernel = stride = map / bin; the stem's ceil pool and the aligned Interp.
    _round_trip("pspnet50-ade20k", pspnet_table(50), (89, 89), tmp_path)


@pytest.mark.slow
def test_fcn8s_voc_round_trip(tmp_path):
    from pixelwise.convert.releases._fcn import fcn_table

    # 37 x 45: the crops (5, 9, 31) and ceil pools of odd sides.
    _round_trip("fcn8s-voc", fcn_table("fcn8s"), (37, 45), tmp_path)


@pytest.mark.slow
def test_gfrnet_camvid_round_trip(tmp_path):
    from pixelwise.convert.releases.gfrnet_camvid import gfrnet_table

    # 45 x 61: odd sides at every ceil-mode pool; every gate resizes its deeper side.
    _round_trip("gfrnet-camvid", gfrnet_table(), (45, 61), tmp_path)


def test_gfrnet_caffe_option_resizes_with_the_corners_aligned():
    from pixelwise.models.gfrnet import _resize

    # Caffe's Interp (ratio (in - 1) / (out - 1)): 2 -> 4 samples at 0, 1/3, 2/3 and 1;
    # half-pixel centres (align_corners=False) sample at 0 (clamped), 1/4, 3/4 and 1 (clamped).
    x = torch.tensor([[[[0.0, 3.0]]]])
    assert _resize(x, (1, 4), align_corners=True).reshape(-1).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert _resize(x, (1, 4)).reshape(-1).tolist() == [0.0, 0.75, 2.25, 3.0]
    model = build_model("gfrnet", 11, caffe=True)
    assert all(g.align_corners for g in model.gates) and all(
        r.align_corners for r in model.refinements
    )
    assert not build_model("gfrnet", 11).gates[0].align_corners


def test_pspnet_caffe_option_moves_the_stride_and_keeps_the_weights():
    default = build_model("pspnet50", 2)
    released = build_model("pspnet50", 2, caffe=True)
    block = released.backbone.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert default.backbone.layer2[0].conv2.stride == (2, 2)
    assert released.backbone.maxpool.ceil_mode and not default.backbone.maxpool.ceil_mode
    assert {k: v.shape for k, v in default.state_dict().items()} == {
        k: v.shape for k, v in released.state_dict().items()
    }


# -- PSPNet-50 against a forward pass written from the deploy net alone ----------------------------


def _pspnet_deploy(depth: int, classes: int, res5: int) -> list[dict]:
    """The layer list of hszhao/PSPNet's deploy net, as its prototxt states it (names, types,
    bottoms, params), with the pyramid's fixed kernels and Interp sizes at a ``res5`` map."""
    layers: list[dict] = []

    def conv(name, bottom, out, k, stride=1, pad=0, dilation=1, bias=False, bn=True, relu=True):
        layers.append(
            dict(
                name=name,
                type="Convolution",
                bottom=[bottom],
                top=name,
                num_output=out,
                kernel=k,
                stride=stride,
                pad=pad,
                dilation=dilation,
                bias=bias,
            )
        )
        if bn:
            layers.append(dict(name=f"{name}/bn", type="BN", bottom=[name], top=name))
        if relu:
            layers.append(dict(name=f"{name}/relu", type="ReLU", bottom=[name], top=name))
        return name

    x = conv("conv1_1_3x3_s2", "data", 64, 3, stride=2, pad=1)
    x = conv("conv1_2_3x3", x, 64, 3, pad=1)
    x = conv("conv1_3_3x3", x, 128, 3, pad=1)
    layers.append(
        dict(
            name="pool1_3x3_s2",
            type="Pooling",
            bottom=[x],
            top="pool1_3x3_s2",
            pool="MAX",
            kernel=3,
            stride=2,
            pad=1,
        )
    )
    x = "pool1_3x3_s2"
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    for stage, count in zip((2, 3, 4, 5), blocks, strict=True):
        width = 64 * 2 ** (stage - 2)
        dilation = {4: 2, 5: 4}.get(stage, 1)
        for b in range(1, count + 1):
            name = f"conv{stage}_{b}"
            stride = 2 if (stage == 3 and b == 1) else 1
            r = conv(f"{name}_1x1_reduce", x, width, 1, stride=stride)
            r = conv(f"{name}_3x3", r, width, 3, pad=dilation, dilation=dilation)
            r = conv(f"{name}_1x1_increase", r, 4 * width, 1, relu=False)
            skip = (
                conv(f"{name}_1x1_proj", x, 4 * width, 1, stride=stride, relu=False)
                if b == 1
                else x
            )
            layers.append(dict(name=name, type="Eltwise", bottom=[skip, r], top=name))
            layers.append(dict(name=f"{name}/relu", type="ReLU", bottom=[name], top=name))
            x = name
    pooled = []
    for bin_ in (1, 2, 3, 6):
        pool = f"conv5_3_pool{bin_}"
        layers.append(
            dict(
                name=pool,
                type="Pooling",
                bottom=["conv5_3"],
                top=pool,
                pool="AVE",
                kernel=res5 // bin_,
                stride=res5 // bin_,
                pad=0,
            )
        )
        c = conv(f"{pool}_conv", pool, 512, 1)
        layers.append(
            dict(
                name=f"{pool}_interp",
                type="Interp",
                bottom=[c],
                top=f"{pool}_interp",
                height=res5,
                width=res5,
            )
        )
        pooled.append(f"{pool}_interp")
    layers.append(
        dict(
            name="conv5_3_concat",
            type="Concat",
            bottom=["conv5_3", *pooled[::-1]],
            top="conv5_3_concat",
        )
    )
    x = conv("conv5_4", "conv5_3_concat", 512, 3, pad=1)
    layers.append(dict(name="conv5_4/dropout", type="Dropout", bottom=[x], top=x))
    conv("conv6", x, classes, 1, bias=True, bn=False, relu=False)
    layers.append(
        dict(name="conv6_interp", type="Interp", bottom=["conv6"], top="conv6_interp", zoom=8)
    )
    return layers  # fmt: skip


def _random_blobs(layers: list[dict], seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    channels, blobs = {"data": 3}, {}
    for layer in layers:
        bottom = layer["bottom"]
        if layer["type"] == "Convolution":
            fan_in = channels[bottom[0]] * layer["kernel"] ** 2
            shape = (layer["num_output"], channels[bottom[0]], layer["kernel"], layer["kernel"])
            blobs[layer["name"]] = [rng.normal(0, math.sqrt(1 / fan_in), shape).astype(np.float32)]
            if layer["bias"]:
                blobs[layer["name"]].append(
                    rng.uniform(-0.1, 0.1, layer["num_output"]).astype(np.float32)
                )
            channels[layer["top"]] = layer["num_output"]
        elif layer["type"] == "BN":
            c = channels[bottom[0]]
            blobs[layer["name"]] = [
                rng.uniform(lo, hi, (1, c, 1, 1)).astype(np.float32)
                for lo, hi in ((0.5, 1.5), (-0.2, 0.2), (-0.2, 0.2), (0.5, 1.5))
            ]
        elif layer["type"] == "Concat":
            channels[layer["top"]] = sum(channels[b] for b in bottom)
        else:
            channels[layer["top"]] = channels[bottom[0]]
    return blobs  # fmt: skip


def _caffe_forward(layers: list[dict], blobs: dict, data: torch.Tensor) -> torch.Tensor:
    """Run the deploy net with Caffe's semantics, from the layer list alone."""
    tops = {"data": data}
    for layer in layers:
        kind, x = layer["type"], [tops[b] for b in layer["bottom"]]
        if kind == "Convolution":
            w = torch.from_numpy(blobs[layer["name"]][0])
            b = torch.from_numpy(blobs[layer["name"]][1]) if layer["bias"] else None
            y = F.conv2d(x[0], w, b, layer["stride"], layer["pad"], layer["dilation"])
        elif kind == "BN":
            slope, shift, mean, var = (torch.from_numpy(v) for v in blobs[layer["name"]])
            y = slope * (x[0] - mean) / torch.sqrt(var + 1e-5) + shift
        elif kind == "ReLU":
            y = x[0].clamp(min=0)
        elif kind == "Pooling" and layer["pool"] == "MAX":
            k, s, p = layer["kernel"], layer["stride"], layer["pad"]
            size = x[0].shape[-1]
            out = math.ceil((size + 2 * p - k) / s) + 1
            if p and (out - 1) * s >= size + p:
                out -= 1
            extra = (out - 1) * s + k - size - p  # windows clipped to the image: pad with -inf
            y = F.max_pool2d(F.pad(x[0], (p, extra, p, extra), value=-math.inf), k, s)
        elif kind == "Pooling":
            y = F.avg_pool2d(x[0], layer["kernel"], layer["stride"])
        elif kind == "Interp":
            h, w = x[0].shape[-2:]
            size = (
                (layer["height"], layer["width"])
                if "height" in layer
                else (h + (h - 1) * (layer["zoom"] - 1), w + (w - 1) * (layer["zoom"] - 1))
            )
            y = F.interpolate(x[0], size=size, mode="bilinear", align_corners=True)
        elif kind == "Eltwise":
            y = x[0] + x[1]
        elif kind == "Concat":
            y = torch.cat(x, dim=1)
        elif kind == "Dropout":
            y = x[0]
        else:
            raise AssertionError(kind)
        tops[layer["top"]] = y
    return tops[layers[-1]["top"]]  # fmt: skip


@pytest.mark.slow
def test_pspnet50_ade20k_matches_an_independent_caffe_forward(tmp_path):
    size, res5, classes = 89, 12, 150
    layers = _pspnet_deploy(50, classes, res5)
    blobs = _random_blobs(layers, seed=3)
    file_layers = [
        CaffeLayer(layer["name"], layer["type"], blobs[layer["name"]])
        for layer in layers
        if layer["name"] in blobs
    ]
    path = tmp_path / "pspnet50_ADE20K.caffemodel"
    path.write_bytes(encode_net(file_layers, name="pspnet50_ADE20K", legacy_shape=True))
    loaded = load_model(convert_release("pspnet50-ade20k", path, tmp_path / "psp.pt"), "cpu")

    rgb = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(4)) * 255
    # The release's preprocessing (evaluation/pre_img.m): minus the RGB mean, then BGR.
    mean_rgb = torch.tensor([123.68, 116.779, 103.939]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        expected = _caffe_forward(layers, blobs, (rgb - mean_rgb).flip(1))
        mean = torch.tensor(loaded.meta["mean"]).reshape(1, 3, 1, 1)
        std = torch.tensor(loaded.meta["std"]).reshape(1, 3, 1, 1)
        got = loaded.model((rgb / 255 - mean) / std)
    assert expected.shape == got.shape == (1, classes, size, size)
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
