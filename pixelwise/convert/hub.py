"""``model.weights=<zoo name>``: a zoo release as a converted checkpoint, fetched and converted once.

Files live in torch's hub folder, beside the backbones torchvision downloads there, so one
``$TORCH_HOME`` (or ``torch.hub.set_dir``) moves every downloaded weight:

- ``<hub>/pixelwise/<release file name>``: the authors' file, downloaded or put there by hand;
- ``<hub>/pixelwise/<zoo name>.pt``: its conversion (:func:`convert_release`), kept while the
  file's sha256 is the one it was converted from.

Only a release whose authors publish a direct link (``Release.url``) is downloaded, with
``datasets download``'s code (:func:`~pixelwise.data.download.fetch`: HTTP range resume, progress,
``$PIXELWISE_MIRROR``), into ``NAME.part`` that is renamed only once its sha256 (or, where no
sha256 is published, its size) is the published one. Google Drive and Dropbox links are pages,
not files, so those releases (and any download that fails) end in one sentence naming the exact
path to put the file at.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

import torch

from pixelwise.convert.convert import convert_release, sha256_of
from pixelwise.convert.release import Release
from pixelwise.convert.zoo import get_release
from pixelwise.data.download import fetch, file_digest, mirror_from_environment, mirrored, set_aside
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.errors import PixelwiseError
from pixelwise.outputs import output_folder

#: Seconds without a byte before a download stops (a second call resumes it).
TIMEOUT = 60.0


def hub_folder() -> Path:
    """``<torch hub dir>/pixelwise``, where released files and their conversions are kept."""
    return Path(torch.hub.get_dir()) / "pixelwise"


def zoo_checkpoint(
    name: str, *, timeout: float = TIMEOUT, show: str = "auto", out: TextIO | None = None
) -> Path:
    """The converted checkpoint of zoo release ``name``, downloading and converting as needed.

    Raises:
        PixelwiseError: one sentence: the name is not in the zoo, the file is neither in the hub
            folder nor downloadable (naming the path to put it at and where it is published), or
            the download is not the published file.
    """
    release = get_release(name, flag="model.weights")
    folder = output_folder(hub_folder(), f"model.weights {name}: the folder")
    weights, converted = folder / release.file_name, folder / f"{release.name}.pt"
    if weights.is_file() and _converted_from(converted, sha256_of(weights)):
        return converted
    if not weights.is_file() and release.sha256 and _converted_from(converted, release.sha256):
        return converted  # the file was removed to save space; its conversion is still the file's
    if not weights.is_file():
        _download(release, weights, timeout=timeout, show=show, out=out or sys.stdout)
    prototxt = _prototxt(release, folder)
    return convert_release(release.name, weights, converted, prototxt=prototxt, overwrite=True)


def _converted_from(converted: Path, digest: str) -> bool:
    """``converted`` exists and was converted from the file whose sha256 is ``digest``."""
    if not converted.is_file():
        return False
    try:
        origin = load_checkpoint(converted)["meta"].get("release") or {}
    except (PixelwiseError, KeyError):  # damaged or foreign: convert again over it
        return False
    return origin.get("sha256") == digest


def _published_at(release: Release) -> str:
    """``release.where`` without its advice for ``pixelwise convert`` (``pass ... --weights``)."""
    return release.where.split("; download it")[0]


def _download(release: Release, weights: Path, *, timeout: float, show: str, out: TextIO) -> None:
    """Fetch the release's direct link to ``weights`` (through ``NAME.part``) and check it."""
    if release.url is None:  # a page behind a click (Google Drive, Dropbox): no file to fetch
        raise PixelwiseError(
            f"model.weights {release.name} needs {release.file_name}, which its authors publish "
            f"without a direct link; download it yourself and put it at {weights} "
            f"({_published_at(release)})."
        )
    url = mirrored(release.url, mirror_from_environment())
    part = weights.with_name(f"{weights.name}.part")
    print(f"downloading {url}", file=out, flush=True)
    try:
        fetch(url, part, timeout=timeout, show=show, out=out)
    except PixelwiseError as error:
        reason = str(error).split(";")[0]  # fetch's own advice speaks of `datasets download`
        # "resume" only where there are bytes to resume from (a refused connection leaves none).
        again = "run again to resume" if part.is_file() and part.stat().st_size else "run again"
        raise PixelwiseError(
            f"model.weights {release.name}: {reason}; {again}, or download "
            f"{release.file_name} yourself and put it at {weights} ({_published_at(release)})."
        ) from None
    _check_download(release, part, url)
    os.replace(part, weights)


def _check_download(release: Release, part: Path, url: str) -> None:
    """Move ``part`` aside and raise when it is not the published file: the sha256 where the
    authors publish one, else the size where they publish that."""
    if release.sha256 is not None:
        expected, actual = release.sha256, file_digest(part, "sha256")
        what = "sha256"
    elif release.size is not None:
        expected, actual = str(release.size), str(part.stat().st_size)
        what = "size (bytes)"
    else:
        return
    if actual == expected:
        return
    aside = set_aside(part, file_digest(part, "sha256")[:12])
    raise PixelwiseError(
        f"{release.file_name} from {url} has {what} {actual}, not the published {expected}; it "
        f"was moved aside to {aside} (not used): run again to download it anew, or give a mirror "
        "with $PIXELWISE_MIRROR."
    )


def _prototxt(release: Release, folder: Path) -> Path | None:
    """The deploy definition a release needs beside its weights (``<zoo name>.prototxt``)."""
    if not release.needs_prototxt:
        return None
    path = folder / f"{release.name}.prototxt"
    if not path.is_file():
        raise PixelwiseError(
            f"model.weights {release.name} needs the deploy .prototxt published beside "
            f"{release.file_name}; put it at {path} ({_published_at(release)})."
        )
    return path
