"""``pixelwise datasets prepare NAME --from ARCHIVE...``: archives you downloaded yourself.

Cityscapes is behind a login, so ``datasets download cityscapes`` cannot fetch it: sign in at
cityscapes-dataset.com, download ``gtFine_trainvaltest.zip`` and ``leftImg8bit_trainvaltest.zip``,
and ``prepare`` does the rest exactly as ``download`` does after its fetch (see
:mod:`pixelwise.data.download`): the root is claimed (absent, empty, or one this command started),
the free space is checked, a published checksum is verified, each archive is unpacked through a
temporary folder inside the root, and ``datasets check`` runs on the result. It works for every
dataset of ``sources.json``, for archives fetched by other means.

Your archives are only read: they are never moved, renamed or deleted, even when one turns out to
be truncated (the message says so and nothing is unpacked from it).

What the readers need after unpacking: nothing more. Cityscapes' ``*_labelIds.png`` are mapped to
the 19 train ids as they are read (``*_labelTrainIds.png`` are used when present, but not needed);
SBD's ``cls/*.mat`` are read as they are (``scipy.io.loadmat``); VOC's palette PNGs are read as
indices. So ``prepare`` is the unpacking, in the layout the reader expects, and the check.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pixelwise.data.download import (
    STATE_FOLDER,
    Archive,
    DownloadResult,
    Source,
    check_downloaded,
    check_free_space,
    claim_root,
    default_root,
    file_digest,
    find_source,
    unpack,
)
from pixelwise.errors import PixelwiseError


def match_archives(source: Source, given: Sequence[str | Path]) -> dict[str, Path]:
    """The user's files by the published name they stand for; every published archive must be
    given once, and each file must exist."""
    expected = {a.name: a for a in source.archives}
    matched: dict[str, Path] = {}
    for item in given:
        path = Path(item).expanduser()
        if path.name not in expected:
            raise PixelwiseError(
                f"{path} is not an archive of {source.key}; it takes "
                f"{', '.join(expected)} (as downloaded from {source.page})."
            )
        if not path.is_file():
            raise PixelwiseError(
                f"{path} does not exist; download {path.name} from {source.page} and give its path."
            )
        matched[path.name] = path
    missing = [name for name in expected if name not in matched]
    if missing:
        raise PixelwiseError(
            f"{source.key} also needs {', '.join(missing)}; download it from {source.page} and "
            "add it to --from."
        )
    return matched


def verify_own(path: Path, archive: Archive) -> None:
    """A published checksum of a user's file, checked without touching the file."""
    if archive.checksum is None:
        return
    algorithm, expected = archive.checksum
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise PixelwiseError(
            f"{path} has {algorithm} {actual}, not the published {expected}; it is left where it "
            f"is but not used: download {archive.name} again ({archive.url})."
        )


def prepare_dataset(
    name: str,
    archives: Sequence[str | Path],
    root: str | Path | None = None,
    *,
    out: TextIO | None = None,
    sources: dict[str, Source] | None = None,
    check: bool = True,
) -> DownloadResult:
    """Unpack the user's ``archives`` of dataset ``name`` into ``root`` and check the result.

    Raises:
        PixelwiseError: for a file that is not one of the dataset's archives, a missing one, a
            checksum that is not the published one, a truncated archive, a root holding other
            files, or a disk too small.
    """
    out = out or sys.stdout
    source = find_source(name, sources)
    given = match_archives(source, archives)
    root = Path(root).expanduser() if root is not None else default_root(source)
    claim_root(root)
    state = root / STATE_FOLDER
    pending = [a for a in source.archives if not (state / f"{a.name}.done").exists()]
    check_free_space(root, sum(given[a.name].stat().st_size for a in pending))
    for archive in pending:
        path = given[archive.name]
        verify_own(path, archive)
        print(f"unpacking {path} into {root / archive.to}", file=out, flush=True)
        unpack(path, archive, root, set_bad_aside=False)
        (state / f"{archive.name}.done").write_text(archive.label + "\n")
    result = DownloadResult(root=root)
    if check:
        result.reports = check_downloaded(source, root, out)
    return result
