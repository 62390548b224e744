"""pixelwise bench: the figures' structure and sanity (never their speed), and the command's exits."""

from __future__ import annotations

import json

import pytest
import torch

from pixelwise import bench
from pixelwise.bench import BenchSettings, bench_models, format_table
from pixelwise.cli import main
from pixelwise.models import build_model
from pixelwise.models.complexity import count_flops, count_parameters

SMALL_UNET = {"padding": "same", "base_channels": 8}
QUICK = {"batch": 2, "runs": 1, "warmup": 0, "device": "cpu"}


@pytest.mark.slow  # ENet's FLOP count walks ~3000 ops through Python: seconds on a busy machine
def test_figures_of_two_small_networks(one_thread):
    settings = BenchSettings(size=(64, 64), model_options={"unet": SMALL_UNET}, **QUICK)
    results = bench_models(["enet", "unet"], settings)
    assert [r.model for r in results] == ["enet", "unet"]
    for r, options in zip(results, [{}, SMALL_UNET], strict=True):
        assert r.error is None
        built = build_model(r.model, r.num_classes, **options)
        assert r.params == count_parameters(built)
        assert r.gflops > 0
        assert r.latency_ms > 0 and r.latency_batch_ms > 0 and r.train_images_per_s > 0
        assert r.peak_memory_mb is None or r.peak_memory_mb >= 0
        assert (r.device, r.size, r.batch, r.amp) == ("cpu", [64, 64], 2, False)
    assert results[0].num_classes == 11 and results[1].num_classes == 2  # the papers' settings
    with torch.device("meta"):  # the small U-Net's count (ENet's takes seconds even on meta)
        meta = build_model("unet", 2, **SMALL_UNET)
    assert results[1].gflops == pytest.approx(count_flops(meta, (64, 64)) / 1e9)
    table = format_table(results, settings)
    assert "enet" in table and "unet" in table and "peak RSS growth" in table


def test_classes_and_a_given_model_are_measured_as_given(one_thread):
    settings = BenchSettings(size=(32, 32), num_classes=5, **QUICK)
    model = build_model("unet", 5, **SMALL_UNET)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = bench.bench_model("unet", settings, model=model)
    assert result.error is None and result.num_classes == 5
    assert result.params == count_parameters(model)
    # Training ran on a copy: the caller's weights and mode are as they were.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_amp_not_in_effect_is_said(one_thread, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CPU_BF16", "0")
    settings = BenchSettings(size=(32, 32), amp=True, model_options={"unet": SMALL_UNET}, **QUICK)
    results = bench_models(["unet"], settings)
    assert results[0].amp is False and results[0].error is None
    assert "AMP was asked for but is not in effect" in format_table(results, settings)
    assert "note" in bench.bench_report(results, settings)


def test_cli_prints_the_table_and_writes_json(one_thread, tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    argv = ["bench", "--models", "unet", "--size", "32", "32", "--batch", "2", "--runs", "1"]
    argv += ["--warmup", "0", "--device", "cpu", "unet.padding=same", "unet.base_channels=8"]
    code = main([*argv, "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.splitlines()[0].split()[:2] == ["model", "params"]
    assert "unet" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["model"] == "unet" and row["latency_ms"] > 0 and row["train_images_per_s"] > 0
    assert report["settings"]["size"] == [32, 32] and report["settings"]["batch"] == 2
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["threads"] == 1
    assert report["command"].startswith("pixelwise ")


def test_cli_network_options_reach_the_builder(one_thread, capsys):
    argv = ["bench", "--models", "unet", "--size", "32", "32", "--runs", "1", "--warmup", "0"]
    code = main(
        [*argv, "--batch", "1", "--device", "cpu", "unet.padding=same", "unet.base_channels=8"]
    )
    assert code == 0
    params = count_parameters(build_model("unet", 2, **SMALL_UNET))
    assert f"{params:,}" in capsys.readouterr().out


def one_error_line(capsys) -> str:
    return one_error_line_of(capsys.readouterr().err)


def test_cli_unknown_network_is_one_sentence_and_exit_2(capsys):
    assert main(["bench", "--models", "enet,enett", "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert "enett" in line and "enet" in line


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--models", "maskrcnn_resnet50_fpn"], ["maskrcnn_resnet50_fpn", "per-pixel logits"]),
        (["--models", "enet", "unet.padding=same"], ["unet", "--models"]),
        (["--models", "enet", "padding=same"], ["network.option=value"]),
        (["--models", "enet", "--size", "0", "32"], ["--size 0 32"]),
        (["--models", ","], ["--models"]),
        (["--models", "enet", "--threads", "0"], ["--threads 0"]),
    ],
    ids=["instance", "options_of_another", "option_without_network", "size", "empty", "threads"],
)
def test_cli_refusals_before_any_work(argv, words, capsys):
    assert main(["bench", *argv, "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert all(word in line for word in words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cli_cuda_without_cuda(capsys):
    assert main(["bench", "--models", "enet", "--device", "cuda"]) == 2
    assert "no" in one_error_line(capsys).lower()


def test_a_size_the_network_refuses_is_its_sentence_before_any_work(capsys):
    # The paper's valid-padding U-Net cannot take 32x32; enet, named first, is not timed.
    argv = ["bench", "--models", "enet,unet", "--size", "32", "32", "--device", "cpu"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "padding='same'" in one_error_line_of(captured.err)


def one_error_line_of(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_a_failure_while_measuring_is_a_row_and_exit_1(one_thread, capsys, monkeypatch):
    def out_of_memory(model, batch, *args):
        if batch == 1 and model.classifier.in_channels == 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return original(model, batch, *args)

    original = bench.time_inference
    monkeypatch.setattr(bench, "time_inference", out_of_memory)
    # Two small U-Nets (the registry has one name; options tell them apart) are not possible in
    # one bench, so the failing one is told apart by its width: 4 channels fail, 8 run.
    argv = ["bench", "--models", "unet", "--size", "32", "32", "--runs", "1", "--warmup", "0"]
    argv += ["--batch", "1", "--device", "cpu", "unet.padding=same"]
    assert main([*argv, "unet.base_channels=4"]) == 1
    captured = capsys.readouterr()
    (row,) = [line for line in captured.out.splitlines() if line.startswith("unet")]
    assert "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in row
    assert "more detail" not in captured.out
    assert "unet could not be measured" in captured.err
    assert main([*argv, "unet.base_channels=8"]) == 0
