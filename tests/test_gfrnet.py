"""G-FRNet: reference count and MACs, odd sizes, deep-supervision outputs, and the topology facts of
mrochan/gfrnet's CamVid prototxt that a count cannot see (gates multiply, which map feeds which
gate, the concatenation order of each stage, nothing after the last conv).

Reference figures from docs/models.md (11 classes, 360x480).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from pixelwise.config import load_config
from pixelwise.engine.train import train_step
from pixelwise.losses import build_loss
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.gfrnet import GFRNet, gfrnet
from tests.weights import random_torchvision_state

GFRNET_PARAMS = 29.19e6  # REFERENCE.md: train_camvid_gate.prototxt at 11 classes
GFRNET_MACS = 58.1e9  # REFERENCE.md: at 360x480
NUM_AUX = 5  # pred_1 .. pred_5; the sixth prediction is the logits
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gfrnet_camvid.yaml"


def _meta_model() -> nn.Module:
    info = model_info("gfrnet")
    with torch.device("meta"):
        return build_model("gfrnet", info.num_classes)


def _model(num_classes: int = 3) -> GFRNet:
    torch.manual_seed(0)
    return gfrnet(num_classes=num_classes).eval()


class _Recorder:
    """Forward hooks that keep each hooked module's (first) input and its output."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, object] = {}
        for name, module in modules.items():
            module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def record(_module, args, output):
            self.inputs[name] = args[0]
            self.outputs[name] = output

        return record


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def test_parameter_count_matches_reference() -> None:
    count = count_parameters(_meta_model())
    print(f"gfrnet: {count:,} learnable parameters (reference {GFRNET_PARAMS:,.0f})")
    assert count == pytest.approx(GFRNET_PARAMS, rel=0.01)


def test_macs_match_reference_at_360x480() -> None:
    assert model_info("gfrnet").input_size == (360, 480)
    macs = count_flops(_meta_model(), (360, 480)) / 2
    print(f"gfrnet: {macs / 1e9:.2f} GMACs at 360x480 (reference {GFRNET_MACS / 1e9})")
    assert macs == pytest.approx(GFRNET_MACS, rel=0.03)


def test_odd_size_logits_and_every_aux_output_have_the_input_size() -> None:
    model = _model(4)
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        logits = model(x)
        main, aux = model(x, return_aux=True)
    assert logits.shape == (2, 4, 97, 131)
    assert torch.equal(main, logits)
    assert len(aux) == NUM_AUX
    assert all(a.shape == (2, 4, 97, 131) for a in aux)


def test_aux_outputs_are_the_coarse_to_fine_predictions_upsampled() -> None:
    model = _model()
    rec = _Recorder(
        {"coarse": model.coarse} | {f"r{i}": r for i, r in enumerate(model.refinements)}
    )
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
    predictions = [rec.outputs["coarse"]] + [rec.outputs[f"r{i}"] for i in range(5)]
    # 1/32 (ceil-mode pools: 97x131 -> 4x5), 1/16, 1/8, 1/4, 1/2 and the input's size.
    assert [tuple(p.shape[-2:]) for p in predictions] == [
        (4, 5), (7, 9), (13, 17), (25, 33), (49, 66), (97, 131),
    ]  # fmt: skip
    for got, prediction in zip(aux, predictions[:-1], strict=True):
        torch.testing.assert_close(got, _up(prediction, x))
    # Nothing (no BN, no ReLU) follows the last refinement conv; logits keep their sign.
    assert torch.equal(logits, predictions[-1])
    assert (logits < 0).any()


def test_gates_take_conv5_to_conv1_and_multiply_with_the_deeper_side() -> None:
    model = _model()
    modules = {"encoder": model.encoder}
    for i, gate in enumerate(model.gates):
        modules |= {f"proj{i}": gate.project, f"pbn{i}": gate.project_bn, f"bn{i}": gate.bn}
    modules["deeper0"] = model.gates[0].deeper
    rec = _Recorder(modules)
    with torch.no_grad():
        model(torch.randn(1, 3, 97, 131))
    named = dict(zip(model.encoder.return_layers, rec.outputs["encoder"], strict=True))
    pool5 = named["pool5"]
    # The prototxt's stages 2..6 gate conv5_3, conv4_3, conv3_3, conv2_2, conv1_2: each stage's
    # last ReLU output before its pool (97x131 at strides 16, 8, 4, 2, 1 with ceil-mode pools).
    sizes = [(512, 7, 9), (512, 13, 17), (256, 25, 33), (128, 49, 66), (64, 97, 131)]
    for i, (stage, size) in enumerate(zip((5, 4, 3, 2, 1), sizes, strict=True)):
        assert rec.inputs[f"proj{i}"] is named[f"conv{stage}"]
        assert tuple(rec.inputs[f"proj{i}"].shape[1:]) == size
    # Stage 2's deeper side is its own conv on pool5; each later stage reuses the previous
    # stage's projected (conv + BN) encoder map.
    assert rec.inputs["deeper0"] is pool5
    deeper = [rec.outputs["deeper0"]] + [rec.outputs[f"pbn{i}"] for i in range(4)]
    for i in range(5):
        projected = rec.outputs[f"pbn{i}"]
        expected = projected * _up(deeper[i], projected)
        torch.testing.assert_close(rec.inputs[f"bn{i}"], expected)
        assert (rec.inputs[f"bn{i}"] < 0).any(), "no ReLU between the product and its BN"


def test_a_zero_encoder_side_closes_the_gate_where_a_sum_would_not() -> None:
    model = _model()
    gate = model.gates[0]
    with torch.no_grad():
        gate.project.weight.zero_()
        gate.project.bias.zero_()
        gate.project_bn.bias.zero_()  # eval BN with running mean 0 maps 0 to its shift
    rec = _Recorder({"bn": gate.bn, "deeper": gate.deeper})
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert rec.outputs["deeper"].abs().amax() > 0  # a sum would pass this through
    assert torch.count_nonzero(rec.inputs["bn"]) == 0


def test_concatenation_order_follows_the_prototxt() -> None:
    model = _model()
    modules = {f"gate{i}": g.bn for i, g in enumerate(model.gates)}
    modules |= {f"conv{i}": r.conv for i, r in enumerate(model.refinements)}
    modules |= {"coarse": model.coarse}
    rec = _Recorder(modules)
    with torch.no_grad():
        model(torch.randn(1, 3, 97, 131))
    previous = rec.outputs["coarse"]
    orders = []
    for i in range(5):
        fused, gate = rec.inputs[f"conv{i}"], rec.outputs[f"gate{i}"]
        prediction = _up(previous, gate)
        if torch.equal(fused[:, :3], gate):
            torch.testing.assert_close(fused[:, 3:], prediction)
            orders.append("gate, prediction")
        else:
            torch.testing.assert_close(fused[:, :3], prediction)
            assert torch.equal(fused[:, 3:], gate)
            orders.append("prediction, gate")
        previous = rec.outputs[f"conv{i}"]
    # s2_fusion, s3_fusion, s4_fusion, s6_fusion list gate_sK first; s5_fusion (conv2_2) does not.
    assert orders == ["gate, prediction"] * 3 + ["prediction, gate", "gate, prediction"]


def test_encoder_drops_out_after_pool3_4_5_and_conv6_conv7_are_bn_relu() -> None:
    model = _model()
    assert model.encoder.dropout_after == {3, 4, 5}
    assert model.encoder.batch_norm
    for block, width_in in ((model.conv6, 512), (model.conv7, 1024)):
        conv, bn, relu = block
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (width_in, 1024, (3, 3))
        assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert model.coarse.kernel_size == (3, 3) and model.coarse.in_channels == 1024


def test_trainer_weights_every_aux_output_by_loss_aux_weights() -> None:
    model = _model()
    weights = [0.5, 1.0, 2.0, 3.0, 4.0]
    criterion = build_loss("ce", aux_weights=weights)
    # lr 0 on the coarse head only: the step changes nothing, so the loss can be recomputed.
    optimizer = torch.optim.SGD(model.coarse.parameters(), lr=0.0)
    x = torch.randn(2, 3, 32, 40)
    target = torch.randint(0, 3, (2, 32, 40))
    target[:, :4] = 255
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
    expected = F.cross_entropy(logits, target, ignore_index=255) + sum(
        w * F.cross_entropy(a, target, ignore_index=255) for w, a in zip(weights, aux, strict=True)
    )
    loss, stepped = train_step(model, criterion, optimizer, x, target, aux=True)
    assert stepped
    assert loss == pytest.approx(float(expected), rel=1e-5)
    main_only, _ = train_step(model, criterion, optimizer, x, target, aux=False)
    assert main_only == pytest.approx(float(F.cross_entropy(logits, target, ignore_index=255)))


def test_camvid_recipe_supervises_every_stage_with_equal_weights() -> None:
    cfg = load_config(CONFIG)
    assert cfg.model.name == "gfrnet"
    assert cfg.loss.aux_weights == [1.0] * NUM_AUX
    # solver_camvid_gate.prototxt and the train prototxt's data layer
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (1e-3, 0.9, 5e-4)
    assert (cfg.schedule.name, cfg.schedule.step_size, cfg.schedule.gamma) == ("step", 50000, 0.1)
    assert cfg.schedule.unit == "iter" and cfg.train.iters == 150000
    assert cfg.data.batch_size == 6 and cfg.loss.class_weights == "median_frequency"


def test_vgg16_bn_weights_load_into_the_encoder(tmp_path) -> None:
    state = random_torchvision_state(
        torchvision.models.vgg16_bn, lambda key: key.startswith("features.")
    )
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    for source in (state, path):
        model = gfrnet(num_classes=3, weights_backbone=source)
        encoder = model.encoder.state_dict()
        assert set(encoder) == set(state)
        for key, tensor in state.items():
            assert torch.equal(encoder[key], tensor), key
