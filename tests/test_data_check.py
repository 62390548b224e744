"""``datasets check`` on a miniature CamVid copy (SegNet tutorial layout) with planted problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import build_dataset
from pixelwise.data.check import check_dataset, format_report
from pixelwise.errors import PixelwiseError

H, W = 6, 8
NAMES = [f"0001TP_{k:06d}" for k in range(5)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path) -> Path:
    """Five clean pairs: label row 0 Sky, row 1 Road, the rest Unlabelled (11)."""
    root = tmp_path / "CamVid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    label = np.full((H, W), 11, dtype=np.uint8)
    label[0], label[1] = 0, 3
    for name in NAMES:
        noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "train" / f"{name}.png")
        Image.fromarray(label, mode="L").save(root / "trainannot" / f"{name}.png")
    lines = [f"/SegNet/CamVid/train/{n}.png /SegNet/CamVid/trainannot/{n}.png" for n in NAMES]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def test_clean_copy(root):
    report = check_dataset("camvid", root, "train")
    assert report.exit_code == 0 and report.samples == 5
    assert report.class_pixels[0] == 5 * W and report.class_pixels[3] == 5 * W
    assert sum(report.class_pixels) == 10 * W and report.ignore_pixels == 5 * (H - 2) * W
    text = format_report(report)
    assert "problems: none" in text and "Sky" in text and "exit code 0" in text


def test_broken_copy_counts_each_problem(root):
    (root / "trainannot" / f"{NAMES[1]}.png").unlink()
    truncated = root / "train" / f"{NAMES[2]}.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])  # cut inside the compressed pixel data
    Image.fromarray(np.zeros((H, W + 1), dtype=np.uint8), mode="L").save(
        root / "trainannot" / f"{NAMES[3]}.png"
    )
    label = np.zeros((H, W), dtype=np.uint8)
    label[2, :3] = 17  # not a CamVid value (0..10, 11 = Unlabelled)
    Image.fromarray(label, mode="L").save(root / "trainannot" / f"{NAMES[4]}.png")
    report = check_dataset("camvid", root, "train", max_examples=1)
    counts = {kind: p.count for kind, p in report.problems.items()}
    assert counts["missing_label"] == 1 and counts["missing_image"] == 0
    assert counts["unreadable_image"] == 1
    assert counts["size_mismatch"] == 1
    assert counts["bad_values"] == 1 and counts["unreadable_label"] == 0
    assert report.problem_count == 4
    assert report.exit_code == 1
    assert NAMES[1] in report.problems["missing_label"].examples[0]
    assert NAMES[2] in report.problems["unreadable_image"].examples[0]
    assert "(6, 8)" in report.problems["size_mismatch"].examples[0]
    assert "[17]" in report.problems["bad_values"].examples[0]
    text = format_report(report)
    assert "missing labels: 1" in text and "exit code 1" in text


def test_truncated_label_is_unreadable(root):
    label = root / "trainannot" / f"{NAMES[0]}.png"
    label.write_bytes(label.read_bytes()[:50])
    report = check_dataset("camvid", root, "train", workers=1)
    assert report.problems["unreadable_label"].count == 1 and report.exit_code == 1


def test_an_entry_listed_twice_is_a_problem_naming_it_the_count_and_the_list(root, capsys):
    from pixelwise.cli import main

    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join([*lines, lines[1], lines[3], lines[1]]) + "\n")
    report = check_dataset("camvid", root, "train", workers=1)
    duplicates = report.problems["duplicate_entry"]
    assert duplicates.count == 2 and report.exit_code == 1
    assert NAMES[1] in duplicates.examples[0] and "listed 3 times" in duplicates.examples[0]
    assert str(root / "train.txt") in duplicates.examples[0]
    assert NAMES[3] in duplicates.examples[1] and "listed 2 times" in duplicates.examples[1]
    assert main(["datasets", "check", "camvid", str(root)]) == 1
    assert "entries listed more than once: 2" in capsys.readouterr().out


def test_wrong_root_raises_naming_the_folder(tmp_path):
    with pytest.raises(PixelwiseError, match="expected the folder train/"):
        check_dataset("camvid", tmp_path, "train")


def test_an_rgb_label_has_its_own_problem_kind(root):
    name = NAMES[2]
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[..., 0] = 128
    Image.fromarray(rgb).save(root / "trainannot" / f"{name}.png")
    report = check_dataset("camvid", root, "train", workers=1)
    assert report.problems["rgb_label"].count == 1 and report.problems["bad_values"].count == 0
    assert name in report.problems["rgb_label"].examples[0]
    assert "convert them to single-channel class-index PNGs" in format_report(report)
    assert report.exit_code == 1


def test_a_reader_bug_is_exit_2_not_problems_found(root, monkeypatch, capsys):
    from pixelwise.cli import main
    from pixelwise.data.camvid import CamVid

    def broken(self, sample):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(CamVid, "load_mask", broken)
    report = check_dataset("camvid", root, "train", workers=1)
    assert report.problems["loader_error"].count == len(NAMES) and report.exit_code == 2
    assert "ZeroDivisionError: planted" in report.problems["loader_error"].examples[0]
    assert main(["datasets", "check", "camvid", str(root)]) == 2
    err = capsys.readouterr().err
    assert "bug in pixelwise" in err and len(err.strip().splitlines()) == 1


def test_an_index_crash_is_one_sentence(root, monkeypatch, capsys):
    from pixelwise.cli import main
    from pixelwise.data.camvid import CamVid

    monkeypatch.setattr(CamVid, "build_index", lambda self: {}["trainNdxs"])
    assert main(["datasets", "check", "camvid", str(root)]) == 2
    err = capsys.readouterr().err
    assert "could not be indexed (KeyError" in err and "Traceback" not in err


def test_dataset_options_are_typed_and_checked(tmp_path, capsys):
    from pixelwise.cli import main

    folder = tmp_path / "shapes_root"
    folder.mkdir()
    assert (
        main(["datasets", "check", "shapes", str(folder), "num_samples=3", "image_size=[16, 16]"])
        == 0
    )
    assert "3 samples" in capsys.readouterr().out
    assert main(["datasets", "check", "shapes", str(folder), "num_samples=three"]) == 2
    err = capsys.readouterr().err
    assert "num_samples='three'" in err and "must be null or an integer" in err
    assert main(["datasets", "check", "shapes", str(folder), "sbd_root=/x"]) == 2
    err = capsys.readouterr().err
    assert "does not take sbd_root" in err and "num_samples" in err


def test_an_unknown_option_lists_only_real_options(tmp_path):
    from pixelwise.data import build_dataset

    with pytest.raises(PixelwiseError, match="does not take bogus") as caught:
        build_dataset("folder", tmp_path, split="all", bogus=1)
    assert "val_fraction" in str(caught.value) and "transforms" not in str(caught.value)
    with pytest.raises(PixelwiseError, match=r"does not take bogus; its options are: none\.$"):
        build_dataset("ade20k", tmp_path, split="train", bogus=1)


def test_dataset_options_are_typed_wherever_a_dataset_is_built(tmp_path, capsys):
    # The check lives in build_dataset, so a config's data.options are typed as the check's are.
    with pytest.raises(
        PixelwiseError, match=r"num_samples='many' of dataset 'shapes' must be null or an integer"
    ):
        build_dataset("shapes", split="train", num_samples="many")
    code = main(["train", "pixelwise/configs/demo.yaml", "data.options={num_samples: many}",
                 f"train.out_dir={tmp_path}"])  # fmt: skip
    assert code == 2 and "must be null or an integer" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
