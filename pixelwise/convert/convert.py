"""A released weight file -> a pixelwise checkpoint that eval, predict, export and compare load.

:func:`convert_release` reads the file with its format's reader, maps it with the release's
``to_state_dict``, loads the result strictly into the pixelwise network the release names, and
writes a checkpoint shaped like a trained one (``model``, ``meta``, ``config``, ``step``): the
dataset's classes and palette, the release's input convention as ``data.mean``/``data.std`` in
pixelwise's RGB [0, 1] units (a BGR release's first convolution is reversed by its mapping), the
size the release evaluated at, and the file's name and sha256 under ``meta["release"]``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pixelwise.convert.release import Release
from pixelwise.convert.zoo import get_release, reader
from pixelwise.data import dataset_class
from pixelwise.engine.checkpoint import save_checkpoint
from pixelwise.engine.provenance import versions
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model
from pixelwise.models.backbones import load_strict
from pixelwise.outputs import claim_output


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, read in chunks (releases are up to a few hundred MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_inputs(release: Release, weights: Path, prototxt: Path | None) -> None:
    """The weights file exists (and the prototxt where the release needs one), before any work."""
    if not weights.is_file():
        raise PixelwiseError(f"--weights {weights} does not exist; {release.where}")
    if release.needs_prototxt and prototxt is None:
        raise PixelwiseError(
            f"Release {release.name} needs its deploy definition to convert: pass --prototxt with "
            f"the .prototxt published beside {release.file_name}."
        )
    if prototxt is not None and not prototxt.is_file():
        raise PixelwiseError(
            f"--prototxt {prototxt} does not exist; pass the deploy .prototxt of {release.name}."
        )


def check_digest(release: Release, weights: Path, digest: str) -> None:
    """A file whose sha256 differs from the published one is another file (or a damaged one)."""
    if release.sha256 is not None and digest != release.sha256:
        raise PixelwiseError(
            f"--weights {weights} has sha256 {digest}, not the {release.sha256} published for "
            f"{release.file_name} of {release.name}; download the file again or pass the right one."
        )


def read_release(release: Release, weights: Path, prototxt: Path | None = None) -> Any:
    """The file parsed by its format's reader (a Caffe release's definition attached when given)."""
    parsed = reader(release).read(weights)
    if prototxt is not None and release.format == "caffe":
        from pixelwise.convert.caffe import read_prototxt

        parsed.definition = read_prototxt(prototxt)
    return parsed


def converted_model(release: Release, parsed: Any, weights: Path) -> torch.nn.Module:
    """The release's network with the file's weights loaded strictly, in eval mode."""
    model = build_model(release.model, release.num_classes, **release.model_options)
    try:
        state = release.to_state_dict(parsed, model)
    except (ValueError, KeyError, IndexError) as error:
        reason = " ".join(str(error).split())[:200]
        raise PixelwiseError(
            f"--weights {weights} does not hold the {release.name} release ({reason}); pass "
            f"{release.file_name}, or the --model its file belongs to."
        ) from None
    try:
        load_strict(model, state, str(weights))
    except PixelwiseError as error:
        # load_strict's own sentence ends with a fix meant for backbones; ours replaces it.
        detail = str(error).split(": ", 1)[-1].split(". Pass weights")[0]
        reason = " ".join(detail.split())[:200]
        raise PixelwiseError(
            f"--weights {weights} does not fit {release.name} ({reason}); pass "
            f"{release.file_name}, or the --model its file belongs to."
        ) from None
    return model.eval()


def checkpoint_payload(
    release: Release, model: torch.nn.Module, weights: Path, digest: str
) -> dict[str, Any]:
    """A checkpoint like `pixelwise train` writes, for the converted network."""
    dataset = dataset_class(release.dataset)
    classes, palette = list(dataset.classes), [list(c) for c in dataset.palette]
    if len(classes) != release.num_classes:
        raise ValueError(
            f"release {release.name}: {release.dataset} has {len(classes)} classes, "
            f"the release {release.num_classes}"
        )
    mean, std = release.input.rgb_unit_mean_std()
    size = list(release.input_size) if release.input_size else None
    origin = {
        "name": release.name,
        "file": weights.name,
        "sha256": digest,
        "format": release.format,
        "input_size": size,
        "licence": release.licence,
    }
    config = {
        "name": release.name,
        "model": {
            "name": release.model,
            "num_classes": release.num_classes,
            "weights_backbone": None,
            "options": dict(release.model_options),
        },
        "data": {
            "dataset": release.dataset,
            "mean": mean,
            "std": std,
            "crop_size": size,
            "val_split": release.eval_split,
        },
        # A config names one run length; the release's own training happened elsewhere.
        "train": {"epochs": 1},
    }
    from pixelwise.config import config_from_dict

    config_dict = config_from_dict(config, f"release {release.name}").to_dict()
    meta = {
        "model": release.model,
        "num_classes": release.num_classes,
        "classes": classes,
        "palette": palette,
        "category_ids": [],
        "dataset": release.dataset,
        "mean": mean,
        "std": std,
        "model_options": dict(release.model_options),
        "run": {"converted_from": origin, "versions": versions()},
        "train_image_size": size,
        "release": origin,
    }
    return {
        "model": model.state_dict(),
        "step": 0,
        "best_score": float("-inf"),
        "config": config_dict,
        "meta": meta,
    }


def convert_release(
    name: str,
    weights: str | Path,
    out: str | Path,
    *,
    prototxt: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the file ``weights`` of zoo release ``name`` into the checkpoint ``out``.

    Every check runs before anything is written: the zoo name, ``out`` (refused when it exists
    without ``overwrite``), the files, the sha256 where published, the reader and the mapping.

    Raises:
        PixelwiseError: one sentence naming the file or value and the fix.
    """
    release = get_release(name)
    weights, out = Path(weights), Path(out)
    prototxt = Path(prototxt) if prototxt is not None else None
    claim_output(out, "--out", overwrite=overwrite, example="model.pt")
    check_inputs(release, weights, prototxt)
    digest = sha256_of(weights)
    check_digest(release, weights, digest)
    parsed = read_release(release, weights, prototxt)
    model = converted_model(release, parsed, weights)
    save_checkpoint(out, checkpoint_payload(release, model, weights, digest))
    return out
