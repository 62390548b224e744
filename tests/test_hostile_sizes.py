"""Hostile sizes: values read from a checkpoint are checked like a config's, and a prediction's
memory is estimated before it runs (sliding windows where one pass would not fit, one sentence
where nothing would).

The checkpoints are written here from a tiny U-Net (no training), then altered the way a damaged
or hostile file would be; every refusal is one sentence, exit 2, and leaves the user's files as they
were (``answered`` and ``snapshot`` of tests/test_errors.py).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pixelwise.cli import main
from pixelwise.config import config_from_dict
from pixelwise.data.shapes import SHAPES_CLASSES, SHAPES_PALETTE
from pixelwise.engine import memory
from pixelwise.engine.checkpoint import save_checkpoint
from pixelwise.engine.inference import predict_probs
from pixelwise.engine.memory import LivePeak, Request, fit_prediction, forward_peak_bytes
from pixelwise.engine.model_io import load_model
from pixelwise.engine.precision import float32
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model
from pixelwise.tasks.base import Inference
from tests.test_engine import tiny_config
from tests.test_errors import answered, snapshot

OPTIONS = {"padding": "same", "base_channels": 4, "batch_norm": True}
CPU = torch.device("cpu")


def write_checkpoint(path: Path, *, meta: dict | None = None, config: dict | None = None) -> Path:
    """A tiny U-Net's checkpoint as `pixelwise train` writes it, with ``meta`` and ``config``
    entries replaced (a top-level config key replaced whole)."""
    torch.manual_seed(0)
    model = build_model("unet", len(SHAPES_CLASSES), **OPTIONS).eval()
    data = config_from_dict(tiny_config(path.parent / "runs", iters=1)).to_dict()
    data.update(config or {})
    payload = {
        "model": model.state_dict(),
        "meta": {
            "model": "unet",
            "num_classes": len(SHAPES_CLASSES),
            "classes": list(SHAPES_CLASSES),
            "palette": [list(c) for c in SHAPES_PALETTE],
            "model_options": dict(OPTIONS),
            **(meta or {}),
        },
        "config": data,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, payload)
    return path


def photo(path: Path, size: tuple[int, int] = (20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def refused(argv: list[str], folder: Path, capsys) -> str:
    """Run the CLI, assert one sentence, exit 2 and nothing changed under ``folder``; the line."""
    before = snapshot(folder)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert answered(rc, err, before, snapshot(folder), out), (rc, err, out)
    return err


# -- values read from a checkpoint -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"model_options": {**OPTIONS, "base_channels": 100000}}, "but its weights hold"),
        ({"num_classes": -3}, "num_classes is -3, but a network here predicts 1 to 255"),
        ({"num_classes": 0}, "num_classes is 0"),
        ({"num_classes": 100000}, "num_classes is 100000"),
        ({"num_classes": True}, "num_classes is True"),
        ({"model_options": {**OPTIONS, "base_channels": "wide"}}, "takes base_channels as an"),
        ({"model_options": {**OPTIONS, "base_channels": -4}}, "do not build a unet"),
        ({"model_options": {**OPTIONS, "width": 3}}, "unet does not take width"),
        ({"model_options": [1, 2]}, "model_options are [1, 2], not a mapping"),
        ({"model": "unet9000"}, "network named 'unet9000', which this pixelwise does not have"),
        ({"classes": ["background"]}, "not 6 class names"),
        ({"palette": [[0, 0, 0]] * 5 + [[0, 0, 300]]}, "not 6 colours [r, g, b] of 0..255"),
        ({"category_ids": "all"}, "category_ids are 'all', not a list of integers"),
        (
            {"num_classes": 7, "classes": [*SHAPES_CLASSES, "x"], "palette": [[0, 0, 0]] * 7},
            "weights do not fit the unet its meta names (classifier.weight is [6, 4, 1, 1] in "
            "the checkpoint but [7, 4, 1, 1] in the network)",
        ),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_a_checkpoint_meta_is_checked_before_anything_is_built(meta, fragment, tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "user" / "bad.pt", meta=meta)
    image = photo(tmp_path / "user" / "p.png")
    start = time.perf_counter()
    err = refused(
        ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "o")],
        tmp_path / "user",
        capsys,
    )
    assert fragment in err and "bad.pt" in err, err
    assert time.perf_counter() - start < 5  # base_channels=100000 would be ~360 GB if built


def test_a_huge_width_is_refused_with_its_size_in_the_sentence(tmp_path):
    checkpoint = write_checkpoint(
        tmp_path / "wide.pt", meta={"model_options": {**OPTIONS, "base_channels": 100000}}
    )
    with pytest.raises(PixelwiseError) as caught:
        load_model(checkpoint, "cpu")
    text = str(caught.value)
    # U-Net at 100000 base channels: about 7.8e11 values, hundreds of GiB in float32.
    assert "a network of 7" in text and "GiB in float32" in text, text
    assert text.count(";") == 1 and text.endswith("`pixelwise train`."), text


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"optim": {"name": "sgd", "lr": "fast"}}, "optim.lr is 'fast' but must be a number"),
        ({"data": {"batch_size": 0}}, "data.batch_size is 0; it must be at least 1"),
        ({"model": {"name": "enet"}}, "its config names enet with its dataset's classes but"),
        ({"model": {"name": "unet", "num_classes": 3}}, "its config names unet with 3 classes"),
        ({"weights": 1}, "unknown key 'weights'"),
    ],
    ids=["lr-word", "batch-0", "other-model", "other-count", "unknown-key"],
)
def test_a_checkpoint_config_is_checked_like_a_yaml_config(config, fragment, tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "user" / "bad.pt", config=config)
    image = photo(tmp_path / "user" / "p.png")
    err = refused(
        ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "o")],
        tmp_path / "user",
        capsys,
    )
    assert fragment in err and "bad.pt" in err, err


def test_weights_missing_an_entry_are_named_before_the_network_is_built(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "c.pt")
    payload = torch.load(checkpoint, weights_only=True)
    del payload["model"]["classifier.bias"]
    torch.save(payload, checkpoint)
    with pytest.raises(PixelwiseError, match=r"do not fit the unet its meta names \(missing clas"):
        load_model(checkpoint, "cpu")


def test_a_checkpoint_without_a_config_is_one_sentence(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "c.pt")
    payload = torch.load(checkpoint, weights_only=True)
    del payload["config"]
    torch.save(payload, checkpoint)
    with pytest.raises(PixelwiseError, match="holds no run configuration"):
        load_model(checkpoint, "cpu")


def test_pretrained_weights_named_in_the_meta_are_not_fetched(tmp_path):
    # The checkpoint's weights replace any pretrained ones; a path or URL there is never read.
    checkpoint = write_checkpoint(
        tmp_path / "c.pt", meta={"model_options": {**OPTIONS, "weights_backbone": "/nonexistent"}}
    )
    loaded = load_model(checkpoint, "cpu")
    assert sum(p.numel() for p in loaded.model.parameters()) > 0


def test_a_run_folder_as_checkpoint_names_the_files_inside(tmp_path, capsys):
    run = tmp_path / "user" / "run"
    write_checkpoint(run / "best.pt")
    write_checkpoint(run / "last.pt")
    image = photo(tmp_path / "user" / "p.png")
    argv = ["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "o")]
    err = refused(argv, tmp_path / "user", capsys)
    assert f"{run} is a folder, not a file; pass {run / 'best.pt'}" in err, err
    assert str(run / "last.pt") in err, err
    (run / "best.pt").unlink()
    (run / "last.pt").unlink()
    err = refused(argv, tmp_path / "user", capsys)
    assert "is a folder without best.pt or last.pt; pass a run's best.pt" in err, err


def test_cuda_asked_on_a_machine_without_it_names_the_flag_used(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checkpoint = write_checkpoint(tmp_path / "user" / "c.pt")
    image = photo(tmp_path / "user" / "p.png")
    argv = ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "o")]
    err = refused([*argv, "--device", "cuda"], tmp_path / "user", capsys)
    assert "--device is 'cuda' but no CUDA device is visible" in err, err
    assert "train.device" not in err, err
    err = refused([*argv, "--device", "gpu"], tmp_path / "user", capsys)
    assert "Device 'gpu' is not one torch knows; set --device to auto" in err, err


# -- memory --------------------------------------------------------------------------------------
def test_the_meta_forward_counts_what_a_real_forward_holds():
    torch.manual_seed(0)
    model = build_model("unet", 6, **OPTIONS).eval()
    x = torch.randn(1, 3, 96, 80)
    params = [*model.parameters(), *model.buffers()]
    with torch.no_grad(), LivePeak(known=[x, *params]) as real:
        out = model(x)
        del out
    # The same operations on shapes only; a few bytes differ (batch norm's saved statistics).
    assert forward_peak_bytes(model, x.shape) == pytest.approx(real.peak, rel=1e-3)
    # U-Net keeps every encoder map for its decoder: at least the first level's two 4-channel
    # maps and the 6-class logits are alive at once.
    assert real.peak >= (2 * 4 + 6) * 96 * 80 * 4


def pointwise() -> nn.Module:
    """Per-pixel (any window gives the whole image's answer) with a wide hidden layer, so that its
    forward, not the probability maps around it, is what a window makes smaller."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.Conv2d(64, 6, 1)).eval()


def test_the_estimate_grows_with_pixels_and_scales():
    model = pointwise()
    small = memory.needed_bytes(model, Request((1, 3, 64, 64), 6), CPU)
    large = memory.needed_bytes(model, Request((1, 3, 128, 128), 6), CPU)
    scaled = memory.needed_bytes(model, Request((1, 3, 64, 64), 6, scales=(1.0, 2.0)), CPU)
    assert small is not None and large is not None and scaled is not None
    assert 3.5 < large / small < 4.5  # four times the pixels
    # The second scale's forward and maps are the 128x128 ones, and it holds a rescaled copy of
    # the input besides; the input's own maps and the running sum stay 64x64.
    assert 0.8 * large / small < scaled / small < 1.2 * large / small


def test_a_request_that_fits_runs_as_asked(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**40)
    request = Request((1, 3, 64, 64), 6, crop=(32, 32), stride=(16, 16))
    assert fit_prediction(pointwise(), request, CPU) == memory.Fit((32, 32), (16, 16))
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: as asked
    assert fit_prediction(pointwise(), Request((1, 3, 64, 64), 6), CPU) == memory.Fit(None, None)


def tight(model: nn.Module, request: Request, window: int) -> int:
    """Free memory under which one pass does not fit but ``window`` windows do."""
    whole = memory.needed_bytes(model, request, CPU)
    windowed = memory.needed_bytes(model, request, CPU, crop=(window, window))
    assert whole is not None and windowed is not None and windowed < whole
    return int((windowed + whole) / 2 / memory.BUDGET_FRACTION)


def test_too_big_for_one_pass_goes_sliding_window_with_the_same_answer(monkeypatch, capsys):
    model = pointwise()
    image = torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8)
    free = tight(model, Request((1, 3, 300, 260), 6, output_size=(300, 260)), 128)
    config = config_from_dict(tiny_config(Path("runs"), iters=1))
    from pixelwise.tasks import build_task

    task = build_task(config, 6, list(SHAPES_CLASSES), SHAPES_PALETTE)
    net = Inference(model, CPU, float32(CPU))
    whole, _ = task.predict_image(net, image)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    windowed, _ = task.predict_image(net, image)
    note = capsys.readouterr().err
    assert note.startswith("note: an image of 300x260 pixels needs about") and note.count("\n") == 1
    assert "in one pass but" in note and "instead (as --crop" in note, note
    assert torch.equal(windowed, whole)


def test_predict_of_a_large_image_goes_sliding_window_and_writes_its_files(
    tmp_path, monkeypatch, capsys
):
    checkpoint = write_checkpoint(tmp_path / "c.pt")
    image = photo(tmp_path / "big.png", (80, 112))
    loaded = load_model(checkpoint, "cpu")
    free = tight(loaded.model, Request((1, 3, 80, 112), 6, output_size=(80, 112)), 64)
    argv = ["predict", "--checkpoint", str(checkpoint), str(image), "--out"]
    with monkeypatch.context() as patch:
        patch.setattr(memory, "available_bytes", lambda device: free)
        assert main([*argv, str(tmp_path / "auto")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: an image of 80x112 pixels needs about") == 1, err
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == [
        "big_label.png",
        "big_overlay.png",
    ]
    # The note's own equivalent, given by hand with the machine's memory, gives the same labels.
    flags = re.search(r"as (--crop \d+ \d+ --stride \d+ \d+) would", err).group(1).split()
    assert main([*argv, str(tmp_path / "asked"), *flags]) == 0
    assert capsys.readouterr().err == ""
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "auto" / "big_label.png")),
        np.asarray(Image.open(tmp_path / "asked" / "big_label.png")),
    )


@pytest.mark.parametrize(
    ("rest", "fragment"),
    [
        (["--scales", "1000"], "at --scales 1000 needs about"),
        (["--scales", "1", "300"], "use --scales no larger than"),
    ],
)
def test_a_request_that_can_never_fit_is_refused_and_nothing_written(
    rest, fragment, tmp_path, monkeypatch, capsys
):
    checkpoint = write_checkpoint(tmp_path / "user" / "c.pt")
    image = photo(tmp_path / "user" / "p.png", (40, 40))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)
    out = tmp_path / "user" / "o"
    argv = ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(out), *rest]
    err = refused(argv, tmp_path / "user", capsys)
    assert fragment in err and "1 GiB are free on cpu" in err, err
    assert "for its rescaled copies and class probabilities alone" in err, err


def test_an_image_too_large_at_its_own_size_is_told_to_be_tiled(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    with pytest.raises(PixelwiseError, match="split the image into tiles and predict each"):
        fit_prediction(pointwise(), Request((1, 3, 1000, 1000), 6), CPU)


def test_a_crop_larger_than_the_image_is_clamped_to_it():
    model = pointwise()
    x = torch.randn(1, 3, 20, 24)
    with torch.no_grad():
        whole = model(x).softmax(1)
    start = time.perf_counter()
    probs = predict_probs(model, x, crop=(100000, 100000))
    assert time.perf_counter() - start < 1  # no 100000x100000 padding
    assert torch.allclose(probs, whole, atol=1e-6)


def test_predict_with_a_huge_crop_runs_on_the_image(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "c.pt")
    image = photo(tmp_path / "p.png")
    out = tmp_path / "o"
    argv = ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(out)]
    assert main([*argv, "--crop", "100000", "100000"]) == 0
    assert main([*argv[:-1], str(tmp_path / "plain")]) == 0
    assert np.array_equal(
        np.asarray(Image.open(out / "p_label.png")),
        np.asarray(Image.open(tmp_path / "plain" / "p_label.png")),
    )


def test_free_memory_is_read_on_this_machine():
    free = memory.available_bytes(CPU)
    assert free is None or free > 0
    assert memory._meminfo_available(Path("/nonexistent")) is None


def test_eval_checks_its_request_against_memory_before_it_starts(tmp_path, monkeypatch, capsys):
    checkpoint = write_checkpoint(tmp_path / "user" / "c.pt")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)
    out = tmp_path / "user" / "o"
    argv = ["eval", "--checkpoint", str(checkpoint), "--out", str(out), "--scales", "1000"]
    err = refused(argv, tmp_path / "user", capsys)
    assert "at --scales 1000 needs about" in err and "1 GiB are free on cpu" in err, err


def test_eval_too_big_for_one_pass_runs_in_windows_and_says_so(tmp_path, monkeypatch, capsys):
    from pixelwise.cli import main

    checkpoint = write_checkpoint(tmp_path / "user" / "c.pt")
    # A batch of four at scale 4 needs 16.7 MiB in one pass; 12 MiB leave room for windows only.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 12 * 2**20)
    rc = main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
               "--scales", "4"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "note: " in err and "windows" in err, err
