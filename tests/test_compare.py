"""pixelwise compare: two tiny networks on tiny shapes, the three files, the run folders, one
network's own overrides (--set), the refusals and the checkpoints mode; the flag on a row that
learnt nothing, and several seeds per network (--seeds) as one row of mean ± sample std."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.compare import (
    CompareSettings,
    Comparison,
    NetworkResult,
    command_line,
    format_markdown,
    iterations_for_seconds,
    network_config,
    prediction_flags,
    seed_mean,
    split_network_options,
    split_network_sets,
)
from pixelwise.config import config_from_dict
from pixelwise.errors import PixelwiseError
from pixelwise.models import list_models
from pixelwise.viz import legend

NETWORKS = ["unet", "enet"]
ROWS = 2
SIZE = 32
TINY = [
    f"data.options.image_size=[{SIZE},{SIZE}]", "data.options.num_samples=8",
    "data.val_options.num_samples=3", "data.batch_size=2", "data.val_batch_size=3",
    "data.num_workers=0", "train.device=cpu", "unet.base_channels=2",
]  # fmt: skip
# ENet's own learning rate and batch size, after the shared data.batch_size=2 of TINY
SETS = ["optim.lr=5e-4", "data.batch_size=3"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """One comparison of a narrow U-Net and ENet, 2 iterations each, through the command line;
    ENet with overrides of its own."""
    out = tmp_path_factory.mktemp("compare") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared two-core machine one thread is many times faster
    try:
        argv = ["compare", "--models", ",".join(NETWORKS), "--iters", "2", "--rows", str(ROWS)]
        sets = [word for item in SETS for word in ("--set", f"enet:{item}")]
        assert main([*argv, *sets, "--out", str(out), *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _table(markdown: str, first_header: str) -> list[list[str]]:
    """The rows (cells as text) of the markdown table whose header starts with ``first_header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [rows[0], *rows[2:]]  # header, then the body (no alignment row)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _name(cell: str) -> str:
    """The network's name in a row's first cell, without the flag of a row that learnt nothing."""
    return cell.removesuffix(" ⚠")


@pytest.mark.slow  # the shared comparison trains two networks (~10 s on a busy 2-core machine)
def test_three_files_agree(compared):
    assert all(
        (compared / name).is_file()
        for name in ("comparison.md", "comparison.json", "comparison.png")
    )
    data = json.loads((compared / "comparison.json").read_text())
    markdown = (compared / "comparison.md").read_text()
    assert "- Scored at the labels' size" in markdown  # the size the scores are at
    assert all(n["scored_at"].startswith("scored at the labels' size") for n in data["networks"])
    header, *body = _table(markdown, "network")
    assert [_name(row[0]) for row in body] == NETWORKS == [n["name"] for n in data["networks"]]
    for row, net in zip(body, data["networks"], strict=True):
        cells = dict(zip(header, row, strict=True))
        # a row is flagged in the table exactly where the JSON flags it, and told under it
        assert row[0].endswith(" ⚠") == bool(net["flags"])
        if net["flags"]:
            assert f"⚠ {net['name']}: {'; '.join(net['flags'])}." in markdown
        assert net["seed"] == 0 and net["seeds"] == [] and net["spread"] == {}
        for column, key in (("val mIoU", "mean_iou"), ("pixel acc", "pixel_accuracy"),
                            ("mean acc", "mean_accuracy"), ("fwIoU", "fw_iou")):  # fmt: skip
            assert _number(cells[column]) == round(100 * net[key], 2)
        assert _number(cells["params"]) == net["params"] > 0
        assert _number(cells["GFLOPs"]) == round(net["gflops"], 3)
        assert _number(cells["latency b1 (ms)"]) == round(net["latency_ms"], 2) > 0
        assert _number(cells["iterations"]) == net["iterations"] == 2
        assert _number(cells["train img/s"]) == round(net["train_images_per_s"], 2) > 0
        assert _number(cells["train time (s)"]) == round(net["train_seconds"], 1)
        assert cells["eval size"] == f"{SIZE}x{SIZE}" and net["eval_size"] == [SIZE, SIZE]
    header, *body = _table(markdown, "network | background")
    assert header[1:] == data["classes"]
    for row, net in zip(body, data["networks"], strict=True):
        for name, text in zip(header[1:], row[1:], strict=True):
            value = net["iou"][name]
            assert text == "-" if value is None else _number(text) == round(100 * value, 2)
    assert data["budget"] == {"iters": 2}
    assert "pixelwise compare --models unet,enet --iters 2" in markdown
    assert data["versions"]["torch"] in markdown and data["machine"]["cpu"] in markdown


@pytest.mark.slow  # the shared comparison trains two networks (~10 s on a busy 2-core machine)
def test_picture_is_rows_by_image_truth_and_each_network(compared):
    data = json.loads((compared / "comparison.json").read_text())
    picture = np.asarray(Image.open(compared / "comparison.png").convert("RGB"))
    tile, gap, header = 128, 4, 16  # 32-pixel images are enlarged 4x to reach 128 pixels
    columns = 2 + len(NETWORKS)
    width = columns * tile + (columns - 1) * gap
    strip = legend(data["classes"], [(0, 0, 0)] * len(data["classes"]), width)
    assert picture.shape == (
        header + ROWS * tile + (ROWS - 1) * gap + gap + strip.shape[0],
        width,
        3,
    )


@pytest.mark.slow  # the shared comparison trains two networks (~10 s on a busy 2-core machine)
def test_set_overrides_one_network_only_and_is_recorded(compared):
    data = json.loads((compared / "comparison.json").read_text())
    rows = {net["name"]: net for net in data["networks"]}
    assert rows["enet"]["overrides"] == SETS and rows["unet"]["overrides"] == []
    enet = yaml.safe_load((compared / "enet" / "config.yaml").read_text())
    unet = yaml.safe_load((compared / "unet" / "config.yaml").read_text())
    assert (enet["optim"]["lr"], enet["data"]["batch_size"]) == (5e-4, 3)
    assert (unet["optim"]["lr"], unet["data"]["batch_size"]) == (3e-3, 2)  # the demo's, TINY's
    assert "--set enet:optim.lr=5e-4 --set enet:data.batch_size=3 --out" in data["command"]
    markdown = (compared / "comparison.md").read_text()
    assert "own overrides optim.lr=5e-4 data.batch_size=3;" in markdown


@pytest.mark.slow  # the shared comparison trains two networks (~10 s on a busy 2-core machine)
def test_run_folders_evaluate_with_pixelwise_eval(compared, tmp_path, capsys, one_thread):
    data = json.loads((compared / "comparison.json").read_text())
    for net in data["networks"]:
        run = compared / net["name"]
        assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= {
            p.name for p in run.iterdir()
        }
        scores = tmp_path / f"{net['name']}.json"
        assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", str(scores)]) == 0
        assert json.loads(scores.read_text())["mean_iou"] == pytest.approx(
            net["mean_iou"], abs=1e-12
        )
    # ... and continues with --resume, one iteration more (in a copy: other tests read the run)
    run = shutil.copytree(compared / "enet", tmp_path / "enet")
    resume = ["train", str(run / "config.yaml"), "--resume", str(run / "last.pt"), "train.iters=3"]
    assert main(resume) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3]


@pytest.mark.slow  # the shared comparison trains two networks (~10 s on a busy 2-core machine)
def test_checkpoints_mode_scores_the_same_weights_the_same(compared, tmp_path, capsys, one_thread):
    trained = json.loads((compared / "comparison.json").read_text())
    paths = ",".join(str(compared / n / "last.pt") for n in NETWORKS)
    assert main(["compare", "--checkpoints", paths, "--rows", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["mode"] == "checkpoints"
    for again, net in zip(data["networks"], trained["networks"], strict=True):
        assert again["name"] == net["name"]
        assert again["mean_iou"] == pytest.approx(net["mean_iou"], abs=1e-12)
        assert again["params"] == net["params"]
        assert again["iterations"] is again["train_seconds"] is again["peak_memory_mb"] is None
    assert (tmp_path / "comparison.png").is_file()


def test_the_table_names_the_split_it_scored(compared, tmp_path, one_thread):
    paths = ",".join(str(compared / n / "last.pt") for n in NETWORKS)
    argv = ["compare", "--checkpoints", paths, "--rows", "1", "--split", "test"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    header, *_ = _table((tmp_path / "comparison.md").read_text(), "network")
    assert header[1] == "test mIoU" and "val mIoU" not in header


@pytest.mark.slow  # the shared comparison trains two networks (~10 s on a busy 2-core machine)
def test_an_earlier_comparison_is_never_overwritten(compared, capsys):
    assert (
        main(["compare", "--models", "unet,enet", "--iters", "1", "--out", str(compared), *TINY])
        == 2
    )
    assert "already holds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["--models", "unet,enet", "unet.padding=valid"],
            ["unet as built predicts only the centre", "same pixels as enet", "padding='valid'"],
        ),
        (
            ["--models", "enet,maskrcnn_resnet50_fpn"],
            ["'instance' network", "scored by mask AP rather than per pixel", "leave it out"],
        ),
        (
            ["--models", "enet,unett"],
            ["Unknown model 'unett'", "Did you mean 'unet'", "Valid names:"],
        ),
        (["--models", "enet,enet"], ["enet is named twice"]),
        (["--models", "enet", "unet.base_channels=2"], ["Options are given for unet"]),
        (["--models", "enet", "--checkpoints", "a.pt"], ["not both or neither"]),
        (
            ["--checkpoints", "a.pt", "data.batch_size=2"],
            ["data.batch_size=2 would change nothing"],
        ),
        (["--models", "enet", "--iters", "2", "train.iters=5"], ["--iters N or --seconds S"]),
        (
            ["--models", "enet", "--set", "optim.lr=5e-4"],
            ["--set 'optim.lr=5e-4' names no network", "NAME:key=value"],
        ),
        (
            ["--models", "enet", "--set", "unet:optim.lr=5e-4"],
            ["--set 'unet:optim.lr=5e-4' is for unet, which is not in --models (enet)"],
        ),
        (
            ["--models", "enet", "--set", "enet:optim.lr"],
            ["--set 'enet:optim.lr' has no '='", "--set enet:optim.lr=5e-4"],
        ),
        (
            ["--models", "enet,unet", "--set", "unet:train.epochs=3"],
            ["--set 'unet:train.epochs=3' would give unet a budget", "--iters N or --seconds S"],
        ),
        (
            ["--models", "enet", "--set", "enet:model.name=unet"],
            ["would train another network", "--models"],
        ),
        (
            ["--checkpoints", "a.pt", "--set", "enet:optim.lr=5e-4"],
            ["--set enet:optim.lr=5e-4 would change nothing"],
        ),
        (["--models", "enet", "--seeds", "0"], ["--seeds 0 must be at least 1"]),
        (
            ["--checkpoints", "a.pt", "--seeds", "2"],
            ["--seeds 2 would change nothing", "train with --models"],
        ),
    ],
)
def test_refusals_are_one_sentence_before_any_work(argv, words, tmp_path, capsys):
    if "--iters" not in argv and "--checkpoints" not in argv:
        argv = [*argv, "--iters", "1"]
    out = tmp_path / "out"
    assert main(["compare", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert all(w in err for w in words), err
    assert not out.exists()  # refused before anything was written


def test_without_a_budget_is_refused(capsys, tmp_path):
    assert main(["compare", "--models", "enet", "--out", str(tmp_path / "o")]) == 2
    assert "--iters N or --seconds S" in capsys.readouterr().err


def test_network_options_and_overrides_are_told_apart():
    overrides, options = split_network_options(
        ["unet.base_channels=8", "optim.lr=0.1", "enet.x=[1, 2]", "data.root=/a:b"], list_models()
    )
    assert overrides == ["optim.lr=0.1", "data.root=/a:b"]
    assert options == {"unet": {"base_channels": 8}, "enet": {"x": [1, 2]}}
    sets = split_network_sets(["enet:optim.lr=5e-4", "unet:data.root=/a:b", "enet:loss.name=ce"])
    assert sets == {"enet": ["optim.lr=5e-4", "loss.name=ce"], "unet": ["data.root=/a:b"]}
    with pytest.raises(PixelwiseError, match="names no network"):
        split_network_sets(["data.root=/a:b"])  # the colon is the value's


def test_every_network_shares_the_base_setting_but_its_own_options():
    settings = CompareSettings(models=["unet", "enet"], iters=7, overrides=["optim.lr=0.5"],
                               model_options={"unet": {"base_channels": 2}})  # fmt: skip
    base = {"model": {"name": "unet", "options": {"base_channels": 16, "batch_norm": True}},
            "data": {"dataset": "shapes", "options": {"image_size": [40, 40]}},
            "train": {"epochs": 3}}  # fmt: skip
    settings.network_overrides = {"enet": ["optim.lr=0.25", "data.batch_size=3"]}
    unet_plan = network_config("unet", settings, base, 7)
    enet_plan = network_config("enet", settings, base, 7)
    unet, enet = unet_plan.config, enet_plan.config
    assert unet_plan.source == "shared base config"
    assert unet_plan.overrides == [] and enet_plan.overrides == [
        "optim.lr=0.25",
        "data.batch_size=3",
    ]
    assert unet.model.options == {"base_channels": 2, "batch_norm": True}
    assert enet.model.options == {}  # the base config's options were written for its U-Net
    for cfg in (unet, enet):
        assert (cfg.train.iters, cfg.train.epochs, cfg.train.eval_every) == (7, None, 7)
        assert cfg.data.options == {"image_size": [40, 40]}
    assert (unet.optim.lr, enet.optim.lr) == (0.5, 0.25)  # its own after the shared override
    assert enet.data.batch_size == 3 != unet.data.batch_size
    camvid = network_config(
        "enet", CompareSettings(models=["enet"], dataset="camvid", root="/d"), base, 7
    ).config
    assert (camvid.data.dataset, camvid.data.root, camvid.data.options) == ("camvid", "/d", {})


def test_recipes_are_used_where_present():
    settings = CompareSettings(models=["enet", "unet"], dataset="camvid", iters=5, recipes=True)
    settings.network_overrides = {"enet": ["optim.lr=1e-3"]}
    enet = network_config("enet", settings, {}, 5)
    assert enet.source == "recipe configs/enet_camvid.yaml"
    assert enet.config.optim.name == "adam" and enet.config.loss.class_weights == "enet"
    assert enet.config.optim.lr == 1e-3  # over the recipe's
    assert (enet.config.train.iters, enet.config.train.epochs) == (5, None)
    assert network_config("unet", settings, {}, 5).source == "shared base config"


def test_a_staged_recipe_keeps_its_share_of_classifier_iterations_under_the_budget():
    settings = CompareSettings(models=["decouplednet"], dataset="shapes", iters=100, recipes=True)
    staged = network_config("decouplednet", settings, {}, 100)
    assert staged.config.train.classifier_iters == 75  # the recipe's 3000 of 4000
    assert staged.source == (
        "recipe configs/decouplednet_shapes.yaml (classifier stage 75 of the 100 iterations, "
        "the recipe's share)"
    )
    single = network_config("decouplednet", settings, {}, 1)
    assert single.config.train.classifier_iters == 0 and "both stages at once" in single.source


@pytest.mark.slow  # three networks, 2 iterations each: ~25 s on a busy 2-core machine
def test_semi_supervised_networks_are_compared_with_the_baseline_on_the_same_pixels(
    tmp_path, one_thread
):
    out = tmp_path / "semi"
    argv = [
        "compare", "--models", "unet,decouplednet,gan_ss", "--iters", "2", "--rows", "1",
        "--out", str(out), *TINY, "data.labeled_fraction=0.5",
        "decouplednet.width_divisor=16", "decouplednet.fc_kernel=1", "decouplednet.input_size=64",
        "gan_ss.discriminator=unet", "gan_ss.noise_channels=8", "gan_ss.generator_width=4",
        "gan_ss.discriminator_options={padding: same, base_channels: 2}",
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "comparison.json").read_text())
    rows = {net["name"]: net for net in data["networks"]}
    assert list(rows) == ["unet", "decouplednet", "gan_ss"]
    for net in rows.values():
        assert 0.0 <= net["mean_iou"] <= 1.0 and net["params"] > 0 and net["iterations"] == 2
        assert net["eval_size"] == [SIZE, SIZE]
    # the GAN's count holds its generator, which no prediction runs: the notes say how many
    from pixelwise.models import build_model

    with torch.device("meta"):
        gan = build_model("gan_ss", 6, **rows["gan_ss"]["options"])
    generator = sum(p.numel() for p in gan.parts()["generator"].parameters())
    assert any(f"includes its generator's {generator:,}," in note for note in data["notes"])
    assert rows["decouplednet"]["gflops"] is None and rows["gan_ss"]["gflops"] > 0
    assert any(note.startswith("No GFLOPs for decouplednet:") for note in data["notes"])


def test_recipes_may_train_on_other_data_but_are_scored_on_the_same_validation_images():
    from pixelwise.compare import check_networks

    def config(options: dict, val_options: dict, model: str = "enet"):
        return config_from_dict({
            "model": {"name": model},
            "data": {"dataset": "shapes", "options": options, "val_options": val_options},
            "train": {"iters": 1},
        })  # fmt: skip

    demo = config({"image_size": [64, 64], "num_samples": 2000}, {"num_samples": 200}, "linknet")
    recipe = config({"image_size": [64, 64], "num_samples": 20000}, {"num_samples": 200})
    check_networks(["linknet", "enet"], [demo, recipe])  # 2000 or 20000 to train, the same val
    fewer = config({"image_size": [64, 64], "num_samples": 20000}, {"num_samples": 100})
    with pytest.raises(PixelwiseError, match="enet reads the shapes validation split with options"):
        check_networks(["linknet", "enet"], [demo, fewer])


def test_the_command_runs_the_same_comparison_again():
    settings = CompareSettings(
        models=["unet", "enet"], seconds=30.0, overrides=["data.batch_size=4"],
        model_options={"unet": {"base_channels": 8}},
        network_overrides={"enet": ["optim.lr=5e-4", "data.root=/a b"]},
    )  # fmt: skip
    assert command_line(settings, "runs/c") == (
        "pixelwise compare --models unet,enet --seconds 30 --set enet:optim.lr=5e-4 "
        "--set 'enet:data.root=/a b' --out runs/c data.batch_size=4 unet.base_channels=8"
    )
    settings.seeds = 3
    assert "--seconds 30 --seeds 3 --set" in command_line(settings, "runs/c")


def test_a_seconds_budget_becomes_a_known_number_of_iterations(tmp_path, one_thread):
    cfg = config_from_dict({
        "model": {"name": "unet", "options": {"padding": "same", "base_channels": 2}},
        "data": {"dataset": "shapes", "options": {"image_size": [16, 16], "num_samples": 8},
                 "val_options": {"num_samples": 2}, "batch_size": 2, "num_workers": 0},
        "train": {"iters": 1, "device": "cpu", "out_dir": str(tmp_path)},
    })  # fmt: skip
    short, long = iterations_for_seconds(cfg, 1e-6), iterations_for_seconds(cfg, 1e4)
    assert short == 1 and long > 100
    assert not math.isnan(long) and list(tmp_path.iterdir()) == []  # the timing runs left nothing


# -- rows that learnt nothing -------------------------------------------------------------------
CLASSES = ["background", "disc", "square"]


def test_a_row_that_learnt_one_class_at_most_is_flagged():
    def flags(iou, accuracy=(None, None, None), pixel_accuracy=0.5):
        return prediction_flags(
            dict(zip(CLASSES, iou, strict=True)), dict(zip(CLASSES, accuracy, strict=True)),
            pixel_accuracy,
        )  # fmt: skip

    assert flags([0.8, 0.1, None]) == []  # two classes learnt: rank it
    assert flags([0.7, 0.0, float("nan")], accuracy=(0.9, 0.0, None)) == [
        "learnt nothing: every class but background at 0 IoU"
    ]
    assert flags([0.0, 0.0, None]) == ["learnt nothing: every class at 0 IoU"]
    assert flags([None, None, None]) == []  # nothing scored, nothing to say


def test_a_prediction_of_one_class_everywhere_is_told_from_the_scores_exactly():
    from pixelwise.metrics import ConfusionMatrix

    target = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 1], [0, 255, 0, 0]])  # 255 ignored
    everywhere = torch.zeros_like(target)  # background everywhere
    almost = everywhere.clone()
    almost[0, 0] = 1  # one background pixel called a disc: not one class everywhere
    for prediction, single in ((everywhere, True), (almost, False)):
        matrix = ConfusionMatrix(len(CLASSES))
        matrix.update(prediction, target)
        scores = matrix.compute()
        got = prediction_flags(
            dict(zip(CLASSES, scores.iou, strict=True)),
            dict(zip(CLASSES, scores.class_accuracy, strict=True)),
            scores.pixel_accuracy,
        )
        assert got[0] == "learnt nothing: every class but background at 0 IoU"
        assert ("single class: predicts background everywhere" in got) is single


def _row(name: str, seed: int | None, mean_iou: float, disc: float | None, **kw) -> NetworkResult:
    values = dict(
        name=name, model=name, options={}, overrides=[], source="shared base config",
        checkpoint=f"out/{name}/seed-{seed}/last.pt", run_dir=f"out/{name}/seed-{seed}",
        eval_size=[32, 32], mean_iou=mean_iou, pixel_accuracy=0.9, mean_accuracy=0.5,
        fw_iou=0.8, iou={"background": 0.9, "disc": disc, "square": None}, params=1000,
        gflops=0.5, latency_ms=2.0, iterations=5, train_images_per_s=10.0, train_seconds=1.0,
        peak_memory_mb=None, seed=seed,
    )  # fmt: skip
    values.update(kw)
    return NetworkResult(**values)


def _comparison(networks: list[NetworkResult], seeds: int) -> Comparison:
    return Comparison(
        command="pixelwise compare", mode="train", dataset="shapes", split="val", val_images=3,
        classes=CLASSES, budget={"iters": 5}, networks=networks, versions={"torch": "x"},
        machine={"cpu": "cpu"}, load_average={"start": None, "end": None}, wall_seconds=1.0,
        notes=[], seeds=seeds,
    )  # fmt: skip


def test_a_flagged_row_is_listed_marked_and_told_not_to_rank():
    flag = "learnt nothing: every class but background at 0 IoU"
    good = _row("unet", 0, 0.6, 0.3)
    idle = _row("enet", 0, 0.45, 0.0, flags=[flag, "single class: predicts background everywhere"])
    markdown = format_markdown(_comparison([idle, good], 1))
    _, *body = _table(markdown, "network")
    assert [row[0] for row in body] == ["enet ⚠", "unet"]  # listed, in the order given, marked
    table_end = markdown.index("\n\n", markdown.index("| unet |"))
    note = markdown[table_end:].split("\n\n")[1]  # the paragraph right under the table
    assert note.startswith(f"⚠ enet: {flag}; single class: predicts background everywhere.")
    assert "must not be ranked as better" in note and "unet" not in note
    per_class = _table(markdown, "network | background")
    assert [row[0] for row in per_class[1:]] == ["enet ⚠", "unet"]


def test_seeds_make_one_row_of_the_mean_and_sample_std_keeping_every_run():
    runs = [
        _row("unet", 0, 0.50, 0.0, latency_ms=2.0, flags=["learnt nothing: x"]),
        _row("unet", 1, 0.60, 0.2, latency_ms=4.0),
        _row("unet", 2, 0.70, None, latency_ms=3.0),  # disc neither in truth nor predicted
    ]
    row = seed_mean(runs, "out/unet")
    assert row.mean_iou == pytest.approx(0.6) and row.spread["mean_iou"] == pytest.approx(0.1)
    assert row.latency_ms == pytest.approx(3.0) and row.spread["latency_ms"] == pytest.approx(1.0)
    assert row.iou["disc"] == pytest.approx(0.1)  # over the runs where it is defined
    assert row.spread["iou/disc"] == pytest.approx(math.sqrt(0.02))
    assert row.iou["square"] is None and row.spread["iou/square"] is None
    assert row.peak_memory_mb is None and row.params == 1000 and row.iterations == 5
    assert (row.seed, row.run_dir, row.checkpoint) == (None, "out/unet", runs[0].checkpoint)
    assert row.flags == ["learnt nothing: x (seed 0 of 3)"]
    assert row.seeds == runs
    data = _comparison([row], 3).to_dict()
    assert [run["seed"] for run in data["networks"][0]["seeds"]] == [0, 1, 2]
    assert [run["mean_iou"] for run in data["networks"][0]["seeds"]] == [0.5, 0.6, 0.7]
    markdown = format_markdown(_comparison([row], 3))
    header, body = _table(markdown, "network")
    cells = dict(zip(header, body, strict=True))
    assert cells["val mIoU"] == "60.00 ± 10.00" and cells["latency b1 (ms)"] == "3.00 ± 1.00"
    assert cells["params"] == "1,000" and cells["peak memory (MB)"] == "-"
    assert "mean ± sample std of 3 seeds" in markdown.splitlines()[0]
    assert "`out/unet/seed-0/last.pt`, `out/unet/seed-1/last.pt`" in markdown
    assert "⚠ unet: learnt nothing: x (seed 0 of 3). Its mean includes runs whose" in markdown


@pytest.mark.slow  # two networks, two seeds, one iteration each: ~6 s on a busy 2-core machine
def test_seeds_train_each_network_in_a_run_folder_per_seed(tmp_path, one_thread):
    out = tmp_path / "seeds"
    argv = ["compare", "--models", ",".join(NETWORKS), "--iters", "1", "--seeds", "2"]
    argv += [
        "--rows",
        "1",
        "--out",
        str(out),
        *TINY,
        "train.seed=7",
        "data.val_options.num_samples=1",
    ]
    assert main(argv) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert data["seeds"] == 2 and "--seeds 2" in data["command"]
    markdown = (out / "comparison.md").read_text()
    header, *body = _table(markdown, "network")
    for row, net in zip(body, data["networks"], strict=True):
        name = net["name"]
        assert _name(row[0]) == name and net["run_dir"] == str(out / name)
        assert sorted(p.name for p in (out / name).iterdir()) == ["seed-7", "seed-8"]
        runs = net["seeds"]
        assert [run["seed"] for run in runs] == [7, 8]
        for run in runs:
            assert run["run_dir"] == str(out / name / f"seed-{run['seed']}")
            assert (Path(run["run_dir"]) / "last.pt").is_file()
            saved = yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text())
            assert saved["train"]["seed"] == run["seed"]
        scores = [run["mean_iou"] for run in runs]
        assert net["mean_iou"] == pytest.approx(np.mean(scores))
        assert net["spread"]["mean_iou"] == pytest.approx(np.std(scores, ddof=1))
        cells = dict(zip(header, row, strict=True))
        mean, spread = cells["val mIoU"].split(" ± ")
        assert (_number(mean), _number(spread)) == (
            round(100 * net["mean_iou"], 2),
            round(100 * net["spread"]["mean_iou"], 2),
        )
        assert " ± " in cells["latency b1 (ms)"] and " ± " in cells["train img/s"]
