"""model.weights=<zoo name>: a run starts from the authors' released weights, fetched and converted
once into torch's hub folder (pixelwise/convert/hub.py).

The release is SegNet-Basic on CamVid (the fastest Caffe round trip of tests/test_convert_caffe.py):
its file is written from a random network, served by a local HTTP server on 127.0.0.1 (the
server of tests/test_download.py), and the release's URL is replaced by the server's for the test,
so nothing leaves this machine.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch

from pixelwise.config import config_from_dict
from pixelwise.convert.caffe import encode_net, layers_from_state
from pixelwise.convert.hub import hub_folder, zoo_checkpoint
from pixelwise.convert.releases.segnet_basic_camvid import segnet_basic_table
from pixelwise.convert.zoo import get_release, releases
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.run import build_run
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model
from tests.test_convert_caffe import _randomise
from tests.test_download import Served, build_camvid, server  # noqa: F401 - server: a fixture

NAME = "segnet-basic-camvid"
FILE = "segnet_basic_camvid.caffemodel"


@pytest.fixture(autouse=True)
def _private_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.hub.set_dir sets this module global; monkeypatch puts the old value back after.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv("PIXELWISE_MIRROR", raising=False)


@pytest.fixture(scope="module")
def release_bytes() -> bytes:
    """The release's file, written from a random SegNet-Basic."""
    release = get_release(NAME)
    model = _randomise(build_model(release.model, release.num_classes, **release.model_options))
    return encode_net(layers_from_state(model.state_dict(), segnet_basic_table()))


def _use_release(monkeypatch: pytest.MonkeyPatch, **changes: object) -> None:
    """Replace fields of the zoo's SegNet-Basic release for this test (its URL above all)."""
    monkeypatch.setitem(releases(), NAME, dataclasses.replace(get_release(NAME), **changes))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(server, release_bytes, monkeypatch) -> Served:  # noqa: F811 - the imported fixture
    base, served = server
    served.files[f"/{FILE}"] = release_bytes
    _use_release(monkeypatch, url=f"{base}/{FILE}")
    return served


def _config(tmp_path: Path, **model: object):
    root = tmp_path / "camvid"
    build_camvid(root)
    data = {
        "name": "from_release",
        "model": {"name": "segnet_basic", **model},
        "data": {"dataset": "camvid", "root": str(root), "batch_size": 1, "val_batch_size": 1,
                 "num_workers": 0},
        "train": {"iters": 1, "device": "cpu", "out_dir": str(tmp_path / "runs")},
    }  # fmt: skip
    return config_from_dict(data, "test")


def test_the_release_is_downloaded_converted_cached_and_starts_the_run(served, tmp_path):
    run = build_run(_config(tmp_path, weights=NAME))
    folder = hub_folder()
    assert (folder / FILE).read_bytes() == served.files[f"/{FILE}"]
    assert not (folder / f"{FILE}.part").exists()
    converted = load_checkpoint(folder / f"{NAME}.pt")
    state = run.model.state_dict()
    assert set(state) == set(converted["model"])
    for key, tensor in converted["model"].items():
        assert torch.equal(state[key], tensor), key
    assert run.step == 0
    # A second run converts nothing and downloads nothing: the cached checkpoint is the file's.
    assert len(served.requests) == 1
    assert zoo_checkpoint(NAME) == folder / f"{NAME}.pt"
    assert len(served.requests) == 1


@pytest.mark.parametrize(
    ("published", "match"),
    [({"sha256": "0" * 64}, r"has sha256 [0-9a-f]{64}, not the published 0{64}"),
     ({"size": 12345}, r"has size \(bytes\) \d+, not the published 12345")],
)  # fmt: skip
def test_a_file_that_is_not_the_published_one_is_set_aside(
    served, monkeypatch, published, match
) -> None:
    _use_release(monkeypatch, **published)
    with pytest.raises(PixelwiseError, match=match + r".*moved aside .*run again"):
        zoo_checkpoint(NAME, show="quiet")
    folder = hub_folder()
    assert not (folder / FILE).exists() and not (folder / f"{NAME}.pt").exists()
    assert not (folder / f"{FILE}.part").exists()
    assert len(list(folder.glob(f"{FILE}.bad-*"))) == 1


def test_offline_names_the_path_to_put_the_file_at(monkeypatch) -> None:
    _use_release(monkeypatch, url=f"http://127.0.0.1:{_closed_port()}/{FILE}")
    path = hub_folder() / FILE
    with pytest.raises(PixelwiseError) as caught:
        zoo_checkpoint(NAME, show="quiet")
    message = str(caught.value)
    assert "could not be reached" in message and "refused" in message.lower()
    assert f"put it at {path} (SegNet-Tutorial's Example_Models" in message
    assert "--weights" not in message and message.count(". ") == 0
    # Nothing arrived, so there is nothing to resume from.
    assert "; run again, or download" in message and "resume" not in message


def test_a_release_without_a_direct_link_names_the_path_and_the_page(monkeypatch) -> None:
    _use_release(monkeypatch, url=None)
    path = hub_folder() / FILE
    with pytest.raises(PixelwiseError, match=rf"without a direct link; .* put it at {path} \("):
        zoo_checkpoint(NAME)


def test_a_file_put_there_by_hand_is_converted_without_the_network(
    release_bytes, monkeypatch
) -> None:
    _use_release(monkeypatch, url=f"http://127.0.0.1:{_closed_port()}/{FILE}")
    folder = hub_folder()
    folder.mkdir(parents=True)
    (folder / FILE).write_bytes(release_bytes)
    converted = zoo_checkpoint(NAME)
    assert converted == folder / f"{NAME}.pt"
    assert load_checkpoint(converted)["meta"]["release"]["name"] == NAME
    # Another file at the same name is converted anew: the cache follows the file's sha256.
    before = load_checkpoint(converted)["meta"]["release"]["sha256"]
    model = _randomise(build_model("segnet_basic", 11), seed=3)
    (folder / FILE).write_bytes(
        encode_net(layers_from_state(model.state_dict(), segnet_basic_table()))
    )
    assert load_checkpoint(zoo_checkpoint(NAME))["meta"]["release"]["sha256"] != before


def test_the_mirror_variable_is_honoured(server, release_bytes, monkeypatch) -> None:  # noqa: F811
    base, served = server
    served.files[f"/{FILE}"] = release_bytes
    _use_release(monkeypatch, url=f"http://pixelwise.invalid/{FILE}")  # never resolved: mirrored
    monkeypatch.setenv("PIXELWISE_MIRROR", base)
    assert zoo_checkpoint(NAME, show="quiet").is_file()
    assert [path for path, _ in served.requests] == [f"/{FILE}"]


def test_init_and_weights_together_are_refused(tmp_path) -> None:
    with pytest.raises(
        PixelwiseError, match=r"model.init and model.weights are both set; keep one"
    ):
        _config(tmp_path, weights=NAME, init="best.pt")


def test_a_name_not_in_the_zoo_names_the_closest(tmp_path) -> None:
    with pytest.raises(
        PixelwiseError,
        match=r"test: model.weights 'segnet-basic-camvd' is not in the zoo \(did you mean "
        r"'segnet-basic-camvid'\?\)",
    ):
        _config(tmp_path, weights="segnet-basic-camvd")


def test_a_config_that_cannot_use_the_release_downloads_nothing(served, tmp_path) -> None:
    with pytest.raises(
        PixelwiseError, match=r"is segnet_basic with 11 classes .* model.name=segnet_basic"
    ):
        build_run(_config(tmp_path, name="enet", weights=NAME))
    assert not served.requests


def test_an_option_the_release_does_not_have_says_what_it_needs(tmp_path) -> None:
    data = _config(tmp_path).to_dict()
    data["model"].update(name="pspnet50", weights="pspnet50-ade20k", options={})
    data["model"]["num_classes"] = 150
    config = config_from_dict(data, "test")
    from pixelwise.engine.run import _release_checkpoint

    with pytest.raises(
        PixelwiseError, match=r"option caffe: True, .* model.options=\{caffe: true\}"
    ):
        _release_checkpoint(config, 150)
