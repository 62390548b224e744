"""MatConvNet DagNN reader: v5 (scipy) and v7.3 (HDF5) files, HWCN filters, BN moments, and the
refusal of files that keep their network in MATLAB objects (RefineNet's releases)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from pixelwise.convert import matconvnet, zoo
from pixelwise.convert.releases import refinenet_cityscapes, refinenet_voc
from pixelwise.errors import PixelwiseError


def _cell(*items) -> np.ndarray:
    cell = np.empty((1, len(items)), dtype=object)
    cell[0, :] = items
    return cell


def _dagnn_v5(path: Path, filters: np.ndarray) -> None:
    params = np.zeros((1, 2), dtype=[("name", "O"), ("value", "O"), ("learningRate", "O")])
    params[0, 0] = ("conv1_filter", filters, 1.0)
    params[0, 1] = ("conv1_bias", np.array([0.5, -0.5], np.float32), 2.0)
    layers = np.zeros(
        (1, 1),
        dtype=[("name", "O"), ("type", "O"), ("inputs", "O"), ("outputs", "O"), ("params", "O"),
               ("block", "O")],
    )  # fmt: skip
    layers[0, 0] = (
        "conv1",
        "dagnn.Conv",
        _cell("data"),
        _cell("x1"),
        _cell("conv1_filter", "conv1_bias"),
        {"size": np.array([2.0, 3.0, 1.0, 2.0]), "pad": 0.0},
    )
    scipy.io.savemat(path, {"params": params, "layers": layers, "meta": {"inputs": "data"}})


def test_reads_a_v5_dagnn_by_name(tmp_path: Path) -> None:
    filters = np.arange(12, dtype=np.float32).reshape(2, 3, 1, 2)
    path = tmp_path / "net.mat"
    _dagnn_v5(path, filters)
    net = matconvnet.read(path)
    np.testing.assert_array_equal(net.param("conv1_filter", (2, 3, 1, 2)), filters)
    np.testing.assert_array_equal(net.param("conv1_bias"), [[0.5, -0.5]])
    (layer,) = net.layers
    assert (layer.name, layer.type) == ("conv1", "dagnn.Conv")
    assert layer.inputs == ["data"] and layer.outputs == ["x1"]
    assert layer.params == ["conv1_filter", "conv1_bias"]
    with pytest.raises(PixelwiseError, match=r"net\.mat has no parameter 'fc8_filter'"):
        net.param("fc8_filter")
    # MATLAB keeps at least two axes: a bias saved from a 1-D array comes back 1 x 2.
    with pytest.raises(PixelwiseError, match=r"'conv1_bias' has the shape \(1, 2\) where \(3,\)"):
        net.param("conv1_bias", (3,))


def test_hwcn_filters_correlate_like_matconvnet_by_hand() -> None:
    # One 2x3 filter (H=2, W=3) f[i, j] = 10 i + j on a 2x3 image x[i, j] = i + j: vl_nnconv
    # (a correlation, no flip) gives sum f * x = 0*0 + 1*1 + 2*2 + 10*1 + 11*2 + 12*3 = 73.
    f = np.array([[0, 1, 2], [10, 11, 12]], np.float32).reshape(2, 3, 1, 1)
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]).view(1, 1, 2, 3)
    weight = matconvnet.conv_weight(f)
    assert weight.shape == (1, 1, 2, 3)
    assert F.conv2d(x, weight).item() == 73.0
    # Cin and Cout land on PyTorch's axes 1 and 0; MATLAB's dropped trailing 1s come back.
    assert matconvnet.conv_weight(np.zeros((3, 3, 4, 5))).shape == (5, 4, 3, 3)
    assert matconvnet.conv_weight(np.zeros((1, 1, 7))).shape == (1, 7, 1, 1)


def test_batch_norm_moments_hold_sigma_by_hand() -> None:
    # mult 2, bias 1, moments (mean 3, sigma 0.5): x = 5 -> 2 * (5 - 3) / 0.5 + 1 = 9.
    state = matconvnet.batch_norm_state(
        "bn", np.array([2.0]), np.array([1.0]), np.array([[3.0, 0.5]]), eps=1e-5
    )
    norm = torch.nn.BatchNorm2d(1, eps=1e-5).eval()
    norm.load_state_dict({k.removeprefix("bn."): v for k, v in state.items()})
    assert norm(torch.full((1, 1, 1, 1), 5.0)).item() == pytest.approx(9.0, abs=1e-5)


def _matlab_char(group: h5py.Group, name: str, text: str) -> None:
    data = group.create_dataset(name, data=np.array([[ord(c)] for c in text], np.uint16))
    data.attrs["MATLAB_class"] = np.bytes_("char")


def test_reads_a_v73_dagnn(tmp_path: Path) -> None:
    # MATLAB 7.3: HDF5 after a 512-byte header, arrays stored transposed, struct arrays as
    # groups of reference datasets into #refs#.
    path = tmp_path / "net73.mat"
    filters = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        values = [("conv1_filter", filters), ("conv1_bias", np.array([1.0, 2.0]))]
        name_refs, value_refs = [], []
        for i, (name, value) in enumerate(values):
            _matlab_char(refs, f"n{i}", name)
            data = refs.create_dataset(f"v{i}", data=value.T)
            data.attrs["MATLAB_class"] = np.bytes_("single")
            name_refs.append(refs[f"n{i}"].ref)
            value_refs.append(data.ref)
        params = f.create_group("params")
        params.attrs["MATLAB_class"] = np.bytes_("struct")
        params.create_dataset("name", data=np.array([name_refs], dtype=h5py.ref_dtype).T)
        params.create_dataset("value", data=np.array([value_refs], dtype=h5py.ref_dtype).T)
        layers = f.create_group("layers")
        layers.attrs["MATLAB_class"] = np.bytes_("struct")
        _matlab_char(layers, "name", "conv1")
        _matlab_char(layers, "type", "dagnn.Conv")
        _matlab_char(refs, "input", "data")
        inputs = layers.create_dataset(
            "inputs", data=np.array([[refs["input"].ref]], h5py.ref_dtype)
        )
        inputs.attrs["MATLAB_class"] = np.bytes_("cell")
    with path.open("r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file, written by a test")
    net = matconvnet.read(path)
    np.testing.assert_array_equal(net.param("conv1_filter"), filters)
    np.testing.assert_array_equal(net.param("conv1_bias"), [1.0, 2.0])
    assert net.layers[0].name == "conv1" and net.layers[0].inputs == ["data"]


def test_matlab_objects_truncated_and_foreign_files_are_one_sentence(tmp_path: Path) -> None:
    # RefineNet's releases: net_config is a ref_obj handle, stored as MCOS object data.
    release = tmp_path / "refinenet_res101_voc2012.mat"
    with h5py.File(release, "w", userblock_size=512) as f:
        obj = f.create_dataset(
            "net_config", data=np.array([[0xDD000000, 2, 1, 1, 1, 1]], np.uint32)
        )
        obj.attrs["MATLAB_class"] = np.bytes_("ref_obj")
        obj.attrs["MATLAB_object_decode"] = np.int32(3)
    with pytest.raises(
        PixelwiseError, match=r"voc2012\.mat stores 'net_config' as a MATLAB object"
    ):
        matconvnet.read(release)
    cut = tmp_path / "cut.mat"
    _dagnn_v5(cut, np.ones((2, 3, 1, 2), np.float32))
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(PixelwiseError, match=r"cut\.mat is not a readable MAT-file"):
        matconvnet.read(cut)
    other = tmp_path / "labels.mat"
    scipy.io.savemat(other, {"labels": np.arange(4)})
    with pytest.raises(PixelwiseError, match=r"labels\.mat holds no MatConvNet DagNN"):
        matconvnet.read(other)


def test_refinenet_releases_wait_outside_the_zoo() -> None:
    # Kept with their facts as PENDING_RELEASE until MCOS objects can be read; the zoo takes
    # RELEASE only, so it does not list a release it cannot convert.
    for module in (refinenet_voc, refinenet_cityscapes):
        pending = module.PENDING_RELEASE
        assert pending.format == "mat" and pending.file_name.startswith("refinenet_res101_")
        assert pending.name not in zoo.releases()
        mean, std = pending.input.rgb_unit_mean_std()
        assert mean == pytest.approx([128 / 255] * 3) and std == pytest.approx([1 / 255] * 3)
