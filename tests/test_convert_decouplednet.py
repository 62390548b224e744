"""DecoupledNet's Caffe releases (HyeonwooNoh/DecoupledNet): the file written in the release's
exact layout from a pixelwise DecoupledNet with random weights, converted back and compared.

The layout is that of ``model/DecoupledNet_*_anno/*_inference_deploy.prototxt`` as
HyeonwooNoh/caffe saves it: V1 ``layers`` (type enum, legacy 4-D blob shapes) in the deploy
order, the layers without weights included, the back-propagation copies (``*-bp``) of the
classifier's weights, and every ``BN`` as its inference-mode scale and shift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pixelwise.convert import caffe
from pixelwise.convert.caffe import CaffeLayer, encode_net, layers_from_state
from pixelwise.convert.convert import convert_release
from pixelwise.convert.releases._decouplednet import DECODER_STAGES, decouplednet_table
from pixelwise.convert.releases.segnet_basic_camvid import segnet_basic_table
from pixelwise.convert.zoo import get_release, releases
from pixelwise.engine.model_io import load_model
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model
from tests.test_convert_caffe import _randomise

NAMES = (
    "decouplednet-full-voc",
    "decouplednet-25anno-voc",
    "decouplednet-10anno-voc",
    "decouplednet-5anno-voc",
)
DETECTED = (14,)  # the foreground class the random model is made to detect (person)


# -- layer semantics on hand-computed numbers ------------------------------------------------------


def test_stride_one_deconvolution_reads_as_a_flipped_transposed_convolution():
    # Caffe Deconvolution weight (in=2, out=1, 3, 3): input channel 0 has a 1 at kernel (0, 0),
    # channel 1 a 2 at (0, 1). A transposed convolution (pad 1) scatters input pixel (i, j) with
    # w[ky, kx] to output (i - 1 + ky, j - 1 + kx): an impulse at the centre (1, 1) of a 3x3 map
    # lands at (0, 0) from channel 0 and at (0, 1), doubled, from channel 1.
    weight = np.zeros((2, 1, 3, 3), np.float32)
    weight[0, 0, 0, 0], weight[1, 0, 0, 1] = 1.0, 2.0
    layer = CaffeLayer("deconv", "Deconvolution", [weight, np.array([0.5], np.float32)])
    state = caffe.deconv_as_conv_to_state(layer, "c", bias=True)
    conv = nn.Conv2d(2, 1, 3, padding=1)
    conv.load_state_dict({k.removeprefix("c."): v for k, v in state.items()})
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 1, 1], x[0, 1, 1, 1] = 1.0, 10.0
    expected = torch.full((3, 3), 0.5)
    expected[0, 0] += 1.0
    expected[0, 1] += 2.0 * 10.0
    assert torch.equal(conv(x)[0, 0].detach(), expected)
    # The same numbers as PyTorch's own transposed convolution of the Caffe blob.
    deconv = nn.functional.conv_transpose2d(
        x, torch.from_numpy(weight), torch.tensor([0.5]), padding=1
    )
    assert torch.allclose(conv(x), deconv)


def test_fork_inference_bn_is_scale_and_shift():
    # HyeonwooNoh/caffe BN, bn_mode INFERENCE: y = scale x + shift = 3 * 2 - 1 per channel.
    layer = CaffeLayer("debn1_1", "BN", [np.full((1, 2, 1, 1), 3.0), np.full((1, 2, 1, 1), -1.0)])
    bn = nn.BatchNorm2d(2).eval()
    bn.load_state_dict(
        {k.removeprefix("b."): v for k, v in caffe.folded_bn_to_state(layer, "b").items()}
    )
    assert bn(torch.full((1, 2, 1, 1), 2.0)).reshape(-1).tolist() == pytest.approx([5.0, 5.0])


def test_fork_layer_types_are_named():
    assert caffe.V1_TYPES[43] == "BN" and caffe.V1_TYPES[42] == "Unpooling"
    parsed = caffe.decode_net(encode_net([CaffeLayer("b", "BN", [np.ones((1, 2, 1, 1))])], v1=True))
    assert parsed.layers[0].type == "BN"


# -- the releases ----------------------------------------------------------------------------------


def test_the_four_releases_share_one_table_that_fills_the_network():
    table = decouplednet_table()
    with torch.device("meta"):
        model = build_model("decouplednet", 21, **get_release(NAMES[0]).model_options)
    keys: set[str] = set()
    for entry in table:
        if entry.kind == "bn_folded":
            names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        else:
            names = ("weight", "bias")
        keys |= {f"{entry.module}.{n}" for n in names}
    assert keys == set(model.state_dict())
    assert len({entry.caffe for entry in table}) == len(table)
    assert [entry.caffe for entry in table if entry.reverse_input] == ["conv1_1"]
    # 18 BN layers: the BN_make_INFERENCE_script.py list (2 on pool5, 3 in the bridge, 13 debn).
    assert sum(entry.kind == "bn_folded" for entry in table) == 18
    for name in NAMES:
        release = get_release(name)
        assert release.to_state_dict is get_release(NAMES[0]).to_state_dict
        assert release.file_name in release.url and name in releases()


def random_model(model_options: dict, seed: int = 0) -> nn.Module:
    """DecoupledNet with He-scaled random weights (activations of order 1 through 30 layers, so
    the output depends on the input), BN statistics away from 0/1, and a classifier that detects
    ``DETECTED`` with a probability far from the 0.5 threshold. Built on the meta device and
    filled here once (the builder's own initialisation of 307M weights costs seconds)."""
    with torch.device("meta"):
        model = build_model("decouplednet", 21, **model_options)
    model.to_empty(device="cpu")
    _randomise(model, seed, gain=2.0)
    with torch.no_grad():
        model.cls_score.weight.mul_(0.3)
        model.cls_score.bias.fill_(-8.0)
        model.cls_score.bias[list(DETECTED)] = 8.0
    return model.eval()


def _blank(name: str, kind: str) -> CaffeLayer:
    return CaffeLayer(name, kind, [])


def release_layers(state: dict[str, torch.Tensor]) -> list[CaffeLayer]:
    """The release's layers in its deploy order, weights from ``state``."""
    weighted = {layer.name: layer for layer in layers_from_state(state, decouplednet_table())}
    copies = {
        "cls-score-voc-bp": (
            "Convolution",
            weighted["cls-score-voc"].blobs[0].transpose(1, 0, 2, 3),
        ),
        "fc7-bp": ("Deconvolution", weighted["fc7"].blobs[0]),
        "fc6-bp": ("Deconvolution", weighted["fc6"].blobs[0]),
    }
    bp = {
        name: CaffeLayer(name, kind, [weight.copy(), np.zeros(weight.shape[1], np.float32)])
        for name, (kind, weight) in copies.items()
    }
    layers: list[CaffeLayer] = []
    for stage, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(1, count + 1):
            layers += [weighted[f"conv{stage}_{i}"], _blank(f"relu{stage}_{i}", "ReLU")]
        layers.append(_blank(f"pool{stage}", "Pooling"))
    layers += [
        weighted["fc6"], _blank("relu6", "ReLU"), weighted["fc7"], _blank("relu7", "ReLU"),
        weighted["cls-score-voc"],
        _blank("avg-pool", "Pooling"), _blank("cls-score-sigmoid", "Sigmoid"),
        _blank("avg-pool", "Pooling"), _blank("cls-score-sigmoid", "Sigmoid"),
        _blank("avg-unpool", "Unpooling"), bp["cls-score-voc-bp"],
        _blank("relu7-mask", "Eltwise"), bp["fc7-bp"], _blank("relu6-mask", "Eltwise"), bp["fc6-bp"],
        weighted["pool5-bn"], weighted["pool5-bp-bn"], _blank("pool5-concat", "Concat"),
        weighted["fc6-seg"], weighted["bnfc6-seg"], _blank("relu6-seg", "ReLU"),
        weighted["fc7-seg"], weighted["bnfc7-seg"], _blank("relu7-seg", "ReLU"),
        weighted["fc6-deconv"], weighted["fc6-deconv-bn"], _blank("fc6-deconv-relu", "ReLU"),
    ]  # fmt: skip
    for stage, count in DECODER_STAGES:
        layers.append(_blank(f"unpool{stage}", "Unpooling"))
        for i in range(1, count + 1):
            layers += [weighted[f"deconv{stage}_{i}"], weighted[f"debn{stage}_{i}"]]
            layers.append(_blank(f"derelu{stage}_{i}", "ReLU"))
    layers.append(weighted["seg-score-voc"])
    used = [layer.name for layer in layers if layer.blobs]
    assert sorted(used) == sorted([*weighted, *bp])
    return layers


def write_release(path: Path, layers: list[CaffeLayer], name: str) -> None:
    """One V1 ``NetParameter`` with legacy shapes, written a layer at a time (a repeated field's
    entries concatenate), so the 1.7 GB file is never held twice in memory."""
    with path.open("wb") as handle:
        handle.write(encode_net([], name=name))
        for layer in layers:
            handle.write(encode_net([layer], v1=True, legacy_shape=True))


@pytest.mark.slow
def test_full_annotation_release_round_trip(tmp_path):
    release = get_release("decouplednet-full-voc")
    model = random_model(release.model_options)
    layers = release_layers(model.state_dict())
    # Spot checks of the on-disk layout: V1 legacy shapes as HyeonwooNoh/caffe writes them.
    by_name = {layer.name: layer for layer in layers}
    assert by_name["fc6-bp"].blobs[0].shape == (4096, 512, 7, 7)
    assert by_name["deconv4_3"].blobs[0].shape == (512, 256, 3, 3)
    assert by_name["fc6-deconv"].blobs[0].shape == (2048, 512, 7, 7)
    assert by_name["debn1_2"].blobs[0].shape == (1, 64, 1, 1)
    path = tmp_path / release.file_name
    write_release(path, layers, "DecoupledNet_Full_anno_inference_deploy")
    del layers, by_name
    out = convert_release(release.name, path, tmp_path / "model.pt")
    path.unlink()
    loaded = load_model(out, "cpu")
    out.unlink()  # 1.2 GB; pytest keeps its last temporary folders
    generator = torch.Generator().manual_seed(1)
    x, other = torch.randn(2, 1, 3, 320, 320, generator=generator)
    with torch.no_grad():
        expected, got = model(x), loaded.model(x)
    assert got.shape == expected.shape == (1, 21, 320, 320)
    # Background and the classes the random classifier detects (DETECTED, probabilities far
    # from the threshold) are present; every other class is at UNDETECTED_LOGIT in both.
    present = expected > -1e3
    assert torch.equal(present, got > -1e3)
    assert present.any(dim=(2, 3))[0].nonzero().reshape(-1).tolist() == [
        0,
        *(c + 1 for c in DETECTED),
    ]
    assert present.all(dim=(2, 3)).sum().item() == 1 + len(DETECTED)
    difference = (got - expected)[present].abs().max().item()
    assert difference <= 1e-5, difference
    assert (got.exp() - expected.exp()).abs().max().item() <= 1e-5
    # Input-sensitive: another image's maps differ clearly.
    with torch.no_grad():
        assert (loaded.model(other).exp() - expected.exp()).abs().max().item() > 0.1


def test_file_of_another_release_is_one_sentence(tmp_path):
    segnet = get_release("segnet-basic-camvid")
    model = build_model(segnet.model, segnet.num_classes)
    path = tmp_path / "segnet_basic_camvid.caffemodel"
    path.write_bytes(encode_net(layers_from_state(model.state_dict(), segnet_basic_table())))
    with pytest.raises(PixelwiseError) as caught:
        convert_release("decouplednet-full-voc", path, tmp_path / "model.pt")
    message = str(caught.value)
    assert "does not hold the decouplednet-full-voc release" in message
    assert "no layer named 'conv1_1'" in message
    assert message.count(". ") == 0 and "\n" not in message
    assert not (tmp_path / "model.pt").exists()


def test_backprop_layers_that_are_not_copies_are_refused():
    from pixelwise.convert.releases._decouplednet import check_backprop_copies

    weight = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    forward = {
        "cls-score-voc": [weight, np.zeros(2, np.float32)],
        "fc7": [weight, np.zeros(2, np.float32)],
        "fc6": [weight, np.zeros(2, np.float32)],
    }
    copies = {
        "cls-score-voc-bp": [weight.transpose(1, 0, 2, 3).copy(), np.zeros(2, np.float32)],
        "fc7-bp": [weight.copy(), np.zeros(3, np.float32)],
        "fc6-bp": [weight.copy(), np.zeros(3, np.float32)],
    }

    def net() -> caffe.CaffeNet:
        layers = [CaffeLayer(n, "Convolution", b) for n, b in {**forward, **copies}.items()]
        return caffe.CaffeNet("n", layers)

    check_backprop_copies(net())
    copies["fc6-bp"][0] = weight + 1
    with pytest.raises(caffe.MappingError, match="'fc6-bp' is not the copy of 'fc6'"):
        check_backprop_copies(net())
    copies["fc6-bp"] = [weight.copy(), np.ones(3, np.float32)]
    with pytest.raises(caffe.MappingError, match="non-zero bias"):
        check_backprop_copies(net())
