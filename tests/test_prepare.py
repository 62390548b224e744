"""``pixelwise datasets prepare NAME --from ARCHIVE...``: Cityscapes' zips, as the site ships them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from pixelwise.cli import main
from pixelwise.data.download import STATE_FOLDER
from pixelwise.data.prepare import prepare_dataset
from pixelwise.errors import PixelwiseError
from tests import test_data_cityscapes as cs

FRAMES = {
    "train": ("aachen", "aachen_000000_000019"),
    "val": ("frankfurt", "frankfurt_000000_000294"),
}


@pytest.fixture(autouse=True)
def _private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path / "home"))


@pytest.fixture
def zips(tmp_path: Path) -> tuple[Path, Path]:
    """gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip: gtFine/ and leftImg8bit/ at the
    top of each, with the README and license.txt both zips carry (here with different READMEs)."""
    built = tmp_path / "built"
    for k, (split, (city, base)) in enumerate(FRAMES.items()):
        cs.write_frame(built, "gtFine", split, city, base, cs.label_ids(k))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    paths = []
    for name, folder in (("gtFine_trainvaltest.zip", "gtFine"),
                         ("leftImg8bit_trainvaltest.zip", "leftImg8bit")):  # fmt: skip
        path = downloads / name
        with zipfile.ZipFile(path, "w") as out:
            for file in sorted((built / folder).rglob("*.png")):
                out.write(file, file.relative_to(built).as_posix())
            out.writestr("README", f"the {folder} package\n")
            out.writestr("license.txt", "the Cityscapes license\n")
        paths.append(path)
    return paths[0], paths[1]


def test_prepare_unpacks_checks_and_leaves_the_archives_alone(zips, tmp_path, capsys) -> None:
    before = {p: p.read_bytes() for p in zips}
    result = prepare_dataset("cityscapes", [str(p) for p in zips])
    root = tmp_path / "home" / "cityscapes"
    assert result.root == root and [r.samples for r in result.reports] == [1, 1]
    assert all(r.exit_code == 0 for r in result.reports)
    assert {p: p.read_bytes() for p in zips} == before  # the user's files: read only
    assert (root / "README").read_text() == "the gtFine package\n"
    assert (
        root / "README.from-leftImg8bit_trainvaltest.zip"
    ).read_text() == "the leftImg8bit package\n"
    assert (root / "license.txt").read_text() == "the Cityscapes license\n"
    assert not (root / "license.txt.from-leftImg8bit_trainvaltest.zip").exists()
    city, base = FRAMES["val"]
    assert (root / "gtFine" / "val" / city / f"{base}_gtFine_labelIds.png").is_file()


def test_prepare_names_a_missing_a_foreign_and_an_absent_archive(zips, tmp_path) -> None:
    gt, left = zips
    with pytest.raises(
        PixelwiseError,
        match=r"cityscapes also needs leftImg8bit_trainvaltest.zip; download it from https://www.cityscapes-dataset.com",
    ):
        prepare_dataset("cityscapes", [gt])
    other = tmp_path / "gtCoarse.zip"
    other.write_bytes(b"")
    with pytest.raises(
        PixelwiseError,
        match=r"gtCoarse.zip is not an archive of cityscapes; it takes gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip",
    ):
        prepare_dataset("cityscapes", [gt, left, other])
    with pytest.raises(PixelwiseError, match=r"nowhere/gtFine_trainvaltest.zip does not exist"):
        prepare_dataset("cityscapes", [tmp_path / "nowhere" / gt.name, left])
    assert not (tmp_path / "home").exists()


def test_a_truncated_archive_is_refused_and_kept_where_it_is(zips, tmp_path) -> None:
    gt, left = zips
    data = left.read_bytes()
    left.write_bytes(data[: len(data) // 2])
    root = tmp_path / "cs"
    with pytest.raises(
        PixelwiseError,
        match=r"leftImg8bit_trainvaltest.zip is truncated or corrupt .* download it again",
    ):
        prepare_dataset("cityscapes", [gt, left], root)
    assert left.stat().st_size == len(data) // 2  # not moved, not deleted
    assert not (root / "leftImg8bit").exists()
    assert not any(p.name.startswith("unpack-") for p in (root / STATE_FOLDER).iterdir())
    left.write_bytes(data)
    result = prepare_dataset("cityscapes", [gt, left], root)  # the run goes on where it stopped
    assert all(r.exit_code == 0 for r in result.reports)


def test_prepare_refuses_a_root_with_other_files(zips, tmp_path) -> None:
    root = tmp_path / "cs"
    root.mkdir()
    (root / "mine.png").write_bytes(b"x")
    with pytest.raises(PixelwiseError, match=r"already holds other files \(mine.png\)"):
        prepare_dataset("cityscapes", list(zips), root)


def test_cli_prepare(zips, tmp_path, capsys) -> None:
    root = tmp_path / "cs"
    assert (
        main(["datasets", "prepare", "cityscapes", "--from", *map(str, zips), "--root", str(root)])
        == 0
    )
    assert f"cityscapes is in {root}" in capsys.readouterr().out
    assert main(["datasets", "prepare", "cityscapes", "--from", str(zips[0])]) == 2
    assert "also needs leftImg8bit_trainvaltest.zip" in capsys.readouterr().err


def test_labels_are_read_as_shipped_no_conversion_needed(zips, tmp_path) -> None:
    from pixelwise.data import build_dataset

    prepare_dataset("cityscapes", list(zips), tmp_path / "cs", check=False)
    mask = build_dataset("cityscapes", tmp_path / "cs", split="val")[0][1].numpy()
    np.testing.assert_array_equal(mask, cs.expected_train_ids(cs.label_ids(1)))
