"""Every failure a user can cause, fed through the CLI: one sentence, exit 2, nothing of theirs changed.

Each case builds its input in a folder of its own and returns the command line. The test runs it
in-process, then checks the sentence (a distinctive fragment), exit status 2, no traceback, one line
on stderr, and that every file in the folder (and the checkpoint) is byte-identical and that no new
file appeared. ``docs/errors.md`` has one row per case id; ``benchmarks/bad_inputs.py`` runs the same
table as subprocesses against any checkout and counts the answers.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.test_engine import tiny_config
from tests.test_shapes_and_camvid import _write_camvid

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass(frozen=True)
class Case:
    """One failure: ``make(folder, checkpoint)`` writes the input and returns the CLI arguments."""

    id: str
    area: str
    make: Callable[[Path, Path], list[str]]
    fragment: str
    fixed_by: str | None = None  # another change of issue 9 that answers it; xfail until then


# -- inputs ------------------------------------------------------------------------------------
def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
        path
    )
    return path


def _config(folder: Path, overrides: dict | None = None, **train) -> Path:
    data = tiny_config(folder / "runs", iters=1, **train)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _bomb(path: Path) -> Path:
    """A PNG whose header claims 100000x100000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _malicious(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": _Evil(), "meta": {}, "config": {}}))
    return path


def _predict(ckpt: Path, *rest: str) -> list[str]:
    return ["predict", "--checkpoint", str(ckpt), *rest]


def _folder_dataset_with_jpeg_mask(folder: Path) -> Path:
    root = folder / "mydata"
    for stem in ("a", "b"):
        _photo(root / "images" / f"{stem}.png")
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(
            root / "masks" / f"{stem}.jpg", quality=30
        )
    (root / "classes.yaml").write_text("classes: [background, cat]\n")
    return root


def _camvid(folder: Path, names: list[str], **kw) -> Path:
    root = folder / "CamVid"
    _write_camvid(root, names, **kw)
    return root


def _camvid_missing_label(folder: Path) -> Path:
    root = _camvid(folder, ["a.png", "b.png"])
    (root / "trainannot" / "b.png").unlink()
    return root


def _camvid_empty(folder: Path) -> Path:
    root = _camvid(folder, ["a.png"])
    (root / "train.txt").write_text("")
    return root


def _coco_without_annotation_file(folder: Path) -> Path:
    root = folder / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    return root


CASES = [
    # -- configuration
    Case(
        "config-missing", "config", lambda f, c: ["train", str(f / "none.yaml")], "does not exist"
    ),
    Case(
        "config-bad-yaml",
        "config",
        lambda f, c: ["train", str(_text(f / "c.yaml", "train: [x\n"))],
        "not valid YAML",
    ),
    Case(
        "config-not-a-mapping",
        "config",
        lambda f, c: ["train", str(_text(f / "c.yaml", "- 1\n"))],
        "must hold a mapping",
    ),
    Case(
        "config-unknown-key",
        "config",
        lambda f, c: ["train", str(_config(f)), "optim.lrr=0.1"],
        "unknown key 'optim.lrr'",
    ),
    Case(
        "config-no-equals",
        "config",
        lambda f, c: ["train", str(_config(f)), "optim.lr"],
        "has no '='",
    ),
    Case(
        "config-lr-not-a-number",
        "config",
        lambda f, c: ["train", str(_config(f)), "optim.lr=fast"],
        "optim.lr is 'fast' but must be a number",
    ),
    Case(
        "config-mean-not-numbers",
        "config",
        lambda f, c: ["train", str(_config(f)), "data.mean=[a,b,c]"],
        "must be a list of 3 numbers",
    ),
    Case(
        "config-crop-one-number",
        "config",
        lambda f, c: ["train", str(_config(f, {"data.crop_size": [24]}))],
        "must be null or a list of 2",
    ),
    Case(
        "config-options-not-mapping",
        "config",
        lambda f, c: ["train", str(_config(f)), "model.options=3"],
        "must be a mapping",
    ),
    Case(
        "config-epochs-not-int",
        "config",
        lambda f, c: ["train", str(_config(f)), "train.iters=1.5"],
        "must be null or an integer",
    ),
    Case(
        "model-option-it-does-not-take",
        "config",
        lambda f, c: ["train", str(_config(f)), "model.name=enet", "model.options={padding: same}"],
        "'enet' does not take padding; its options are: none.",
    ),
    Case(
        "config-bad-choice",
        "config",
        lambda f, c: ["train", str(_config(f)), "optim.name=lion"],
        "choose one of",
    ),
    Case(
        "config-batch-size-0",
        "config",
        lambda f, c: ["train", str(_config(f)), "data.batch_size=0"],
        "must be at least 1",
    ),
    Case(
        "config-epochs-and-iters",
        "config",
        lambda f, c: ["train", str(_config(f)), "train.epochs=1", "train.iters=2"],
        "exactly one of",
    ),
    Case(
        "config-unknown-model",
        "config",
        lambda f, c: ["train", str(_config(f)), "model.name=fcn9s"],
        "fcn9s",
    ),
    # -- run folder and outputs
    Case(
        "run-out-dir-under-a-file",
        "run folder",
        lambda f, c: [
            "train",
            str(_config(f, {"train.out_dir": str(_text(f / "file", "x") / "runs")})),
        ],
        "cannot be created",
    ),
    Case(
        "predict-out-under-a-file",
        "run folder",
        lambda f, c: _predict(
            c, str(_photo(f / "p.png")), "--out", str(_text(f / "file", "x") / "o")
        ),
        "cannot be created",
    ),
    Case(
        "predict-out-is-a-file",
        "run folder",
        lambda f, c: _predict(c, str(_photo(f / "p.png")), "--out", str(_text(f / "file", "x"))),
        "is a file, not a folder",
    ),
    Case(
        "predict-would-overwrite",
        "run folder",
        lambda f, c: _predict(
            c, str(_photo(f / "p.png")), "--out", str(_text(f / "o" / "p_label.png", "mine").parent)
        ),
        "already exist",
    ),
    Case(
        "eval-json-under-a-file",
        "run folder",
        lambda f, c: [
            "eval",
            "--checkpoint",
            str(c),
            "--json",
            str(_text(f / "file", "x") / "s.json"),
        ],
        "is a file, not a folder",
    ),
    Case(
        "eval-json-is-a-folder",
        "run folder",
        lambda f, c: ["eval", "--checkpoint", str(c), "--json", str(f)],
        "is a folder; give a file name",
    ),
    Case(
        "eval-out-under-a-file",
        "run folder",
        lambda f, c: ["eval", "--checkpoint", str(c), "--out", str(_text(f / "file", "x") / "o")],
        "cannot be created",
    ),
    Case(
        "eval-label-ids-not-cityscapes",
        "run folder",
        lambda f, c: ["eval", "--checkpoint", str(c), "--save-label-ids", str(f / "ids")],
        "--save-label-ids writes Cityscapes labelIds files",
    ),
    # -- checkpoints
    Case(
        "checkpoint-missing",
        "checkpoint",
        lambda f, c: ["eval", "--checkpoint", str(f / "none.pt")],
        "does not exist",
    ),
    Case(
        "checkpoint-is-an-image",
        "checkpoint",
        lambda f, c: ["eval", "--checkpoint", str(_photo(f / "p.png"))],
        "Checkpoint",
    ),
    Case(
        "checkpoint-truncated",
        "checkpoint",
        lambda f, c: ["eval", "--checkpoint", str(_truncated(c, f / "t.pt"))],
        "Checkpoint",
    ),
    Case(
        "checkpoint-malicious-pickle",
        "checkpoint",
        lambda f, c: ["eval", "--checkpoint", str(_malicious(f / "evil.pt"))],
        "never runs code",
    ),
    # -- device
    Case(
        "device-unknown-name",
        "device",
        lambda f, c: _predict(
            c, str(_photo(f / "p.png")), "--out", str(f / "o"), "--device", "gpu"
        ),
        "not one torch knows",
    ),
    Case(
        "device-config-unknown-name",
        "device",
        lambda f, c: ["train", str(_config(f)), "train.device=tpu0"],
        "not one torch knows",
    ),
    # -- images given to predict
    Case(
        "image-missing",
        "predict images",
        lambda f, c: _predict(c, str(f / "none.png"), "--out", str(f / "o")),
        "does not exist",
    ),
    Case(
        "image-is-a-folder",
        "predict images",
        lambda f, c: _predict(c, str(f), "--out", str(f / "o")),
        "is a folder; give image files",
    ),
    Case(
        "image-truncated",
        "predict images",
        lambda f, c: _predict(
            c, str(_truncated(_photo(f / "p.png"), f / "t.png")), "--out", str(f / "o")
        ),
        "could not be decoded",
    ),
    Case(
        "image-not-an-image",
        "predict images",
        lambda f, c: _predict(c, str(_text(f / "x.png", "hello")), "--out", str(f / "o")),
        "could not be decoded",
    ),
    Case(
        "image-header-100000x100000",
        "predict images",
        lambda f, c: _predict(c, str(_bomb(f / "big.png")), "--out", str(f / "o")),
        "big.png",
    ),
    Case(
        "predict-scales-0",
        "predict images",
        lambda f, c: _predict(c, str(_photo(f / "p.png")), "--out", str(f / "o"), "--scales", "0"),
        "every scale must be a number above 0",
    ),
    Case(
        "predict-stride-0",
        "predict images",
        lambda f, c: _predict(
            c,
            str(_photo(f / "p.png")),
            "--out",
            str(f / "o"),
            "--crop",
            "8",
            "8",
            "--stride",
            "0",
            "0",
        ),
        "between 1 and the window",
    ),
    Case(
        "predict-stride-without-crop",
        "predict images",
        lambda f, c: _predict(
            c, str(_photo(f / "p.png")), "--out", str(f / "o"), "--stride", "4", "4"
        ),
        "no --crop H W",
    ),
    Case(
        "predict-crop-0",
        "predict images",
        lambda f, c: _predict(
            c, str(_photo(f / "p.png")), "--out", str(f / "o"), "--crop", "0", "8"
        ),
        "at least 1x1",
    ),
    # -- datasets
    Case(
        "dataset-root-missing",
        "dataset",
        lambda f, c: ["datasets", "check", "camvid", str(f / "none")],
        "does not exist",
    ),
    Case(
        "dataset-root-not-camvid",
        "dataset",
        lambda f, c: ["datasets", "check", "camvid", str(f)],
        "expected the folder",
    ),
    Case(
        "dataset-unknown-name",
        "dataset",
        lambda f, c: ["datasets", "check", "camvidd", str(f)],
        "camvid",
    ),
    Case(
        "dataset-unknown-option",
        "dataset",
        lambda f, c: ["datasets", "check", "voc", str(f), "sbd_rot=/x"],
        "does not take sbd_rot",
    ),
    Case(
        "dataset-option-wrong-type",
        "dataset",
        lambda f, c: ["datasets", "check", "shapes", str(f), "num_samples=many"],
        "must be null or an integer",
    ),
    Case(
        "dataset-empty-split",
        "dataset",
        lambda f, c: ["datasets", "check", "camvid", str(_camvid_empty(f))],
        "no samples",
    ),
    Case(
        "dataset-folder-jpeg-masks",
        "dataset",
        lambda f, c: [
            "datasets",
            "check",
            "folder",
            str(_folder_dataset_with_jpeg_mask(f)),
            "--split",
            "all",
        ],
        "JPEG",
    ),
    Case(
        "dataset-coco-instances-no-annotations",
        "dataset",
        lambda f, c: [
            "datasets",
            "check",
            "coco_instances",
            str(_coco_without_annotation_file(f)),
            "--split",
            "val",
        ],
        "instances_val2017.json does not exist; unpack annotations_trainval2017.zip",
    ),
    Case(
        "train-dataset-root-missing",
        "dataset",
        lambda f, c: [
            "train",
            str(
                _config(
                    f,
                    {
                        "data.dataset": "camvid",
                        "data.root": str(f / "none"),
                        "data.options": {},
                        "data.val_options": {},
                    },
                )
            ),
        ],
        "does not exist",
    ),
]


def _truncated(source: Path, path: Path) -> Path:
    path.write_bytes(source.read_bytes()[: max(16, source.stat().st_size // 3)])
    return path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (or the file itself) with a hash of its bytes."""
    files = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def answered(
    rc: int, err: str, before: dict[str, str], after: dict[str, str], out: str = ""
) -> bool:
    """One sentence: exit 2, a single ``error:`` line, no traceback, nothing changed or added.

    ``out`` is stdout: the malicious checkpoint's code would print ``pwned`` there.
    """
    lines = [line for line in err.splitlines() if line.strip()]
    return (
        rc == 2
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and "Traceback" not in err
        and before == after
        and "pwned" not in out
    )


def _param(case: Case):
    marks = (
        [pytest.mark.xfail(strict=True, reason=f"being fixed by {case.fixed_by}")]
        if case.fixed_by
        else []
    )
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_one_sentence_exit_2_and_changes_nothing(case, tmp_path, checkpoint, capsys):
    from pixelwise.cli import main

    folder = tmp_path / "user"
    folder.mkdir()
    argv = case.make(folder, checkpoint)
    before = snapshot(folder, checkpoint)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert answered(rc, err, before, snapshot(folder, checkpoint), out), (rc, err, out)
    assert case.fragment in err, err


def test_every_case_has_a_row_in_docs_errors_md():
    text = DOCS.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/errors.md lacks rows for {missing}"
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_table_counts_its_cases():
    assert json.loads(json.dumps([c.id for c in CASES])) and len(CASES) >= 40
