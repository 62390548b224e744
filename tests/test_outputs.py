"""Every output of every command: never replaced without --overwrite, written whole or not at all,
a planted link replaced rather than followed, and a full disk answered in one sentence.

The full-disk cases run the real command on a small tmpfs the test mounts in its own user and mount
namespace (``unshare -rm``) where the kernel allows it, and otherwise in-process with the writer
patched to raise ENOSPC half-way through a file.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise import outputs
from pixelwise.cli import main
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
         "mount -t tmpfs -o size=64k tmpfs /tmp"],
        capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


TMPFS = _can_mount_tmpfs()


def _photo(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# -- the writer ---------------------------------------------------------------------------------
def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "scores.json"
    target.write_text("old")
    outputs.write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_a_write_without_replace_refuses_an_existing_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("mine")
    with pytest.raises(PixelwiseError, match="already exists; pass --overwrite"):
        outputs.write_text(target, "theirs", replace=False)
    assert target.read_text() == "mine"


def test_a_link_at_the_output_name_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p_label.png").symlink_to(outside)
    outputs.write_bytes(out / "p_label.png", b"png")
    assert outside.read_text() == "precious"
    assert not (out / "p_label.png").is_symlink()
    assert (out / "p_label.png").read_bytes() == b"png"


class _FullDisk:
    """A file that takes ``room`` bytes and then raises ENOSPC, like a write to a full device."""

    def __init__(self, path: Path, room: int) -> None:
        self.handle, self.room = open(path, "xb"), room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def fileno(self) -> int:
        return self.handle.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write finds the device full after 10 bytes."""
    monkeypatch.setattr(outputs, "_open_new", lambda path: _FullDisk(path, 10))


def test_a_full_disk_is_one_sentence_and_leaves_the_old_file_and_no_temporary(tmp_path, full_disk):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(PixelwiseError) as caught:
        outputs.write_bytes(target, b"x" * 5000)
    assert f"No space left to write {target}: it needs about 5.0 KB" in str(caught.value)
    assert "free" in str(caught.value)
    assert target.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_full_disk_while_appending_a_log_line_leaves_no_half_line(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n')
    real_open = open

    class _Full:
        def __init__(self, handle):
            self.handle = handle

        def tell(self):
            return self.handle.tell()

        def write(self, data):
            self.handle.write(data[:5])
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            self.handle.flush()

        def truncate(self, size):
            self.handle.flush()
            return self.handle.truncate(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(outputs, "open", lambda p, m: _Full(real_open(p, m)), raising=False)
    with pytest.raises(PixelwiseError, match="No space left to write"):
        outputs.append_line(log, '{"step": 2}')
    assert log.read_text() == '{"step": 1}\n'


# -- commands never replace a file without --overwrite ------------------------------------------
def test_export_refuses_an_existing_out_and_replaces_it_with_overwrite(
    tmp_path, checkpoint, capsys
):
    out = tmp_path / "existing.txt"
    out.write_text("my notes")
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "my notes"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes()[:2] == b"PK"  # a TorchScript archive now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]


def test_eval_json_and_confusion_refuse_existing_files(tmp_path, checkpoint, capsys):
    scores, picture = tmp_path / "scores.json", tmp_path / "c.png"
    scores.write_text("mine")
    picture.write_text("mine too")
    base = ["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "e")]
    assert main([*base, "--json", str(scores)]) == 2
    assert "--json" in capsys.readouterr().err
    assert main([*base, "--confusion", str(picture)]) == 2
    assert "--confusion" in capsys.readouterr().err
    assert scores.read_text() == "mine" and picture.read_text() == "mine too"
    assert main([*base, "--json", str(scores), "--confusion", str(picture), "--overwrite"]) == 0
    assert '"mean_iou"' in scores.read_text() and picture.read_bytes()[:4] == b"\x89PNG"


def test_bench_json_refuses_an_existing_file(tmp_path, capsys):
    report = tmp_path / "bench.json"
    report.write_text("mine")
    argv = ["bench", "--models", "enet", "--size", "32", "32", "--batch", "1", "--runs", "1",
            "--warmup", "0", "--json", str(report)]  # fmt: skip
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert report.read_text() == "mine"


def test_predict_overwrite_replaces_a_planted_link_without_following_it(
    tmp_path, checkpoint, capsys
):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not yours to change")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p_label.png").symlink_to(outside)
    photo = _photo(tmp_path / "p.png")
    argv = ["predict", "--checkpoint", str(checkpoint), str(photo), "--out", str(out)]
    assert main(argv) == 2  # an existing name, even a link, needs --overwrite
    assert main([*argv, "--overwrite"]) == 0
    assert outside.read_bytes() == b"not yours to change"
    assert not (out / "p_label.png").is_symlink()
    assert Image.open(out / "p_label.png").size == (24, 20)


# -- commands on a full disk --------------------------------------------------------------------
def _leftovers(folder: Path) -> list[str]:
    """Temporary or empty files a failed write could leave behind."""
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and (p.name.endswith(".tmp") or p.stat().st_size == 0)
    ]


def _on_tmpfs(tmp_path: Path, kib: int, argv: list[str], mount: Path) -> tuple[int, str, str]:
    """Run ``pixelwise ARGV`` with a ``kib`` KiB tmpfs mounted at ``mount``; return the exit code,
    stderr, and a listing of the tmpfs (name, size) taken before the namespace goes away."""
    mount.mkdir(parents=True, exist_ok=True)
    words = " ".join(f"'{a}'" for a in argv)
    script = (
        f"mount -t tmpfs -o size={kib}k tmpfs '{mount}' || exit 99; "
        f"'{sys.executable}' -m pixelwise.cli {words} 2>'{tmp_path}/stderr'; rc=$?; "
        f"find '{mount}' -type f -printf '%P %s\\n' > '{tmp_path}/listing'; exit $rc"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, timeout=300)
    assert done.returncode != 99, "tmpfs could not be mounted"
    return done.returncode, (tmp_path / "stderr").read_text(), (tmp_path / "listing").read_text()


def _bad_files(listing: str) -> list[str]:
    rows = [line.rsplit(" ", 1) for line in listing.splitlines() if line.strip()]
    return [name for name, size in rows if name.endswith(".tmp") or size == "0"]


@pytest.mark.skipif(not TMPFS, reason="cannot mount a tmpfs here; the patched-writer tests run")
def test_train_on_a_full_tmpfs_says_so_in_one_sentence(tmp_path):
    mount = tmp_path / "disk"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(mount / "runs", iters=2, eval_every=1)))
    code, err, listing = _on_tmpfs(tmp_path, 24, ["train", str(config)], mount)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: No space left to write"), err
    assert "Traceback" not in err
    assert _bad_files(listing) == [], listing


@pytest.mark.skipif(not TMPFS, reason="cannot mount a tmpfs here; the patched-writer tests run")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_on_a_full_tmpfs_says_so_and_leaves_nothing(tmp_path, checkpoint, fmt):
    mount = tmp_path / "disk"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(mount / "m")]
    code, err, listing = _on_tmpfs(tmp_path, 8, argv, mount)
    assert code == 2, err  # before: torchscript aborted natively (-6) and left a 0-byte .tmp
    assert err.startswith("error: No space left to write") and len(err.splitlines()) == 1, err
    assert listing.strip() == ""


@pytest.mark.skipif(not TMPFS, reason="cannot mount a tmpfs here; the patched-writer tests run")
def test_predict_on_a_full_tmpfs_leaves_no_empty_label_that_blocks_the_rerun(tmp_path, checkpoint):
    mount = tmp_path / "disk"
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), np.uint8))
    photo.save(tmp_path / "p.png")
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "p.png"), "--out",
            str(mount / "o")]  # fmt: skip
    code, err, listing = _on_tmpfs(tmp_path, 4, argv, mount)
    assert code != 0 and "No space left to write" in err, err
    assert "Traceback" not in err
    assert _bad_files(listing) == [], listing


def test_train_with_the_writer_full_says_so_and_leaves_no_temporary(tmp_path, full_disk, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "runs", iters=2, eval_every=1)))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left to write") and len(err.splitlines()) == 1, err
    assert _leftovers(tmp_path / "runs") == []


def test_export_with_the_writer_full_leaves_nothing(tmp_path, checkpoint, full_disk, capsys):
    out = tmp_path / "m.pt"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]
    assert main(argv) == 2
    assert "No space left to write" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
