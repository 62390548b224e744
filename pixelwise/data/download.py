"""``pixelwise datasets download NAME``: from the owners' archives to a root its reader accepts.

What is downloaded, from where, with which checksum and into which layout is data, in
``sources.json`` beside this file (see its ``_about``); this module only follows it:

1. The root (``--root``, default the dataset's folder in the data home) must be absent, empty, or a
   root this command started before (it holds ``.pixelwise-download/``); a folder that already
   holds other files is refused, so nothing of the user's is mixed with or overwritten by a
   download.
2. The free space of the disk is checked before the first byte: what is left to download, plus
   the unpacked size when extracting.
3. Each archive goes to ``.pixelwise-download/NAME.part``. A second run continues from the byte
   the first stopped at (HTTP ``Range``), whether it was cut by the network, a timeout or Ctrl-C.
   A bar shows the size and the rate (plain lines where stderr is not a terminal).
4. The finished file is checked against the published checksum (md5, sha1 or sha256) and only
   then renamed to ``.pixelwise-download/NAME``. A mismatch moves it aside to
   ``NAME.bad-<checksum>``, where it stays (never used, never deleted silently).
5. Each archive is unpacked into a temporary folder inside the root and its ``member`` folder is
   then moved to ``to``: the final place never holds half an archive. A truncated or corrupt
   archive is moved aside like a bad checksum.
6. The reader's ``datasets check`` runs on the result (each split named under ``check``).

``--mirror URL`` (or ``$PIXELWISE_MIRROR``) replaces the scheme and host of every URL and keeps
its path, for a proxy or a local copy laid out like the owners' servers. Archives are deleted once
unpacked unless ``--keep-archives``; ``--no-extract`` stops after step 4.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pixelwise.data.home import data_home
from pixelwise.errors import PixelwiseError
from pixelwise.outputs import fsync_folder, human_bytes

SOURCES_FILE = Path(__file__).with_name("sources.json")
MIRROR_VARIABLE = "PIXELWISE_MIRROR"
#: The folder inside a root that holds what a download is still working on (and its markers).
STATE_FOLDER = ".pixelwise-download"
CHECKSUMS = ("md5", "sha1", "sha256")
_CHUNK = 1 << 20
#: Extra room asked for beyond the archives, for the file system's own overhead.
_MARGIN = 1.05


@dataclass(frozen=True)
class Archive:
    """One published file and where its contents go (see ``sources.json``)."""

    name: str
    url: str
    checksum: tuple[str, str] | None
    size: int
    size_exact: bool
    format: str
    member: str
    to: str

    @property
    def label(self) -> str:
        """How the table in the docs and the messages show the checksum."""
        return f"{self.checksum[0]} {self.checksum[1]}" if self.checksum else "none published"


@dataclass(frozen=True)
class Source:
    """A dataset's entry of ``sources.json``."""

    key: str
    title: str
    reader: str
    home: str
    page: str
    archives: tuple[Archive, ...]
    check_splits: tuple[str, ...]
    check_options: dict[str, str] = field(default_factory=dict)
    login: bool = False


@dataclass
class DownloadResult:
    """What :func:`download_dataset` did: the root, the archives fetched and the check reports."""

    root: Path
    downloaded: list[str] = field(default_factory=list)
    reports: list[Any] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return max((r.exit_code for r in self.reports), default=0)


# -- the sources ---------------------------------------------------------------------------------
def load_sources(path: Path = SOURCES_FILE) -> dict[str, Source]:
    """Every entry of ``sources.json`` (or of another file in its format), by name."""
    data = json.loads(Path(path).read_text())
    return {key: _source(key, entry) for key, entry in data["datasets"].items()}


def _source(key: str, entry: dict[str, Any]) -> Source:
    archives = []
    for a in entry["archives"]:
        checksum = None
        if a.get("checksum"):
            ((algorithm, digest),) = a["checksum"].items()
            if algorithm not in CHECKSUMS:
                raise ValueError(f"sources.json: {a['name']} has checksum {algorithm}")
            checksum = (algorithm, digest.lower())
        archives.append(
            Archive(
                name=a["name"], url=a["url"], checksum=checksum, size=int(a["size"]),
                size_exact=bool(a.get("size_exact")), format=a["format"],
                member=a.get("member", ""), to=a.get("to", ""),
            )
        )  # fmt: skip
    check = entry.get("check", {})
    return Source(
        key=key, title=entry["title"], reader=entry["reader"], home=entry["home"],
        page=entry["page"], archives=tuple(archives), check_splits=tuple(check.get("splits", ())),
        check_options=dict(check.get("options", {})), login=bool(entry.get("login")),
    )  # fmt: skip


def find_source(name: str, sources: dict[str, Source] | None = None) -> Source:
    """The entry of ``name``, or one sentence listing the names that exist."""
    sources = sources if sources is not None else load_sources()
    if name not in sources:
        raise PixelwiseError(
            f"There is no download for dataset {name!r}; the datasets with one are: "
            f"{', '.join(sorted(sources))}."
        )
    return sources[name]


def default_root(source: Source) -> Path:
    """The dataset's folder in the data home, where recipes find it without a path."""
    return data_home() / source.home


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by ``mirror``'s (whose path, if any, is put
    before the original path); ``url`` itself without a mirror."""
    if not mirror:
        return url
    base = urllib.parse.urlsplit(mirror.rstrip("/"))
    if not base.scheme or not base.netloc:
        raise PixelwiseError(
            f"The mirror {mirror!r} is not a URL; give one like http://host:port/path "
            f"(--mirror or {MIRROR_VARIABLE})."
        )
    original = urllib.parse.urlsplit(url)
    path = base.path + original.path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, original.query, ""))


def mirror_from_environment() -> str | None:
    return os.environ.get(MIRROR_VARIABLE, "").strip() or None


# -- disk ----------------------------------------------------------------------------------------
def free_space(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(root: Path, needed: int) -> None:
    """Refuse before the first byte when the disk cannot hold ``needed`` bytes."""
    free = free_space(root)
    if needed * _MARGIN > free:
        raise PixelwiseError(
            f"Not enough free space for {root}: the download needs about {human_bytes(needed)} "
            f"and {human_bytes(free)} is free there; free some space or pass --root on a larger "
            "disk (--no-extract needs only the archives)."
        )


def claim_root(root: Path) -> Path:
    """Refuse a root that already holds files this command did not put there."""
    if root.exists() and not root.is_dir():
        raise PixelwiseError(f"The root {root} is a file; give a folder (--root).")
    if root.is_dir() and not (root / STATE_FOLDER).is_dir():
        others = sorted(p.name for p in root.iterdir())
        if others:
            raise PixelwiseError(
                f"The root {root} already holds other files ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); give an empty or new folder with --root, "
                "or check the copy there with `pixelwise datasets check`."
            )
    try:
        (root / STATE_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PixelwiseError(
            f"The root {root} cannot be created ({(error.strerror or str(error)).lower()}); "
            "give a folder you may write to with --root."
        ) from None
    return root


# -- fetching ------------------------------------------------------------------------------------
def fetch(
    url: str,
    part: Path,
    *,
    timeout: float,
    show: str = "auto",
    out: TextIO | None = None,
) -> int:
    """Download ``url`` into ``part``, continuing after the bytes ``part`` already holds.

    Returns the file's size. Raises :class:`PixelwiseError` (``part`` kept, so that a second run
    resumes) for an HTTP error, a refused or dropped connection and a timeout.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pixelwise"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the part is already whole: nothing after its last byte
            return have
        raise PixelwiseError(
            f"{url} answered HTTP {error.code} ({error.reason}); check the URL (or the mirror, "
            f"--mirror / {MIRROR_VARIABLE}) and try again later."
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError | socket.timeout):
            raise _timeout(url, part, timeout) from None
        raise PixelwiseError(
            f"{url} could not be reached ({reason}); check the network or give a mirror with "
            f"--mirror (or {MIRROR_VARIABLE}), then run the same command again."
        ) from None
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored Range: start over rather than append a second copy
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if length is not None:
            # the published size was an estimate for some archives; the server's is exact
            check_free_space(part.parent.parent, int(length))
        try:
            got = _copy(response, part, have, total, url, timeout, show, out)
        except KeyboardInterrupt:
            kept = part.stat().st_size if part.exists() else 0
            print(
                f"interrupted: {human_bytes(kept)} of {url} is kept in {part}; run the same "
                "command again to resume.",
                file=sys.stderr,
                flush=True,
            )
            raise
    if total is not None and got < total:
        raise PixelwiseError(
            f"The connection to {url} closed after {human_bytes(got)} of {human_bytes(total)}; "
            f"the part is kept in {part}: run the same command again to resume."
        )
    return got


def _copy(
    response: Any,
    part: Path,
    have: int,
    total: int | None,
    url: str,
    timeout: float,
    show: str,
    out: TextIO | None,
) -> int:
    """Stream ``response`` onto the end of ``part`` (or over it when ``have`` is 0)."""
    bar = _Meter(part.name.removesuffix(".part"), total, have, show, out)
    got = have
    try:
        with open(part, "ab" if have else "wb") as handle:
            while True:
                try:
                    # read1: what has arrived (up to a chunk), so the bar moves on a slow link
                    chunk = response.read1(_CHUNK)
                except TimeoutError:
                    raise _timeout(url, part, timeout) from None
                except OSError as error:  # reset or dropped: what arrived stays for the resume
                    raise PixelwiseError(
                        f"The connection to {url} broke after {human_bytes(got)} ({error}); the "
                        f"part is kept in {part}: run the same command again to resume."
                    ) from None
                if not chunk:
                    break
                handle.write(chunk)
                handle.flush()
                got += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    return got


def _timeout(url: str, part: Path, timeout: float) -> PixelwiseError:
    kept = human_bytes(part.stat().st_size) if part.exists() else "nothing"
    return PixelwiseError(
        f"{url} sent nothing for {timeout:g} s (timed out); {kept} is kept in {part}: run the "
        "same command again to resume, or pass a longer --timeout."
    )


class _Meter:
    """A byte bar with size and rate on a terminal; a line per tenth elsewhere; nothing if quiet."""

    def __init__(self, name: str, total: int | None, initial: int, show: str, out: TextIO | None):
        stream = out or sys.stderr
        if show == "auto":
            show = "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
        self.show, self.out, self.name, self.total = show, out or sys.stdout, name, total
        self.done, self.start, self.initial = initial, time.monotonic(), initial
        self.next_tenth = self._tenth(initial) + 1
        from tqdm import tqdm  # here: importing pixelwise.data stays light

        self.bar = tqdm(
            total=total, initial=initial, desc=name, unit="B", unit_scale=True,
            unit_divisor=1000, dynamic_ncols=True, leave=False, disable=show != "bar", file=stream,
        )  # fmt: skip

    def _tenth(self, done: int) -> int:
        return 10 * done // self.total if self.total else 0

    def update(self, count: int) -> None:
        self.done += count
        self.bar.update(count)
        if self.show == "lines" and self.total and self._tenth(self.done) >= self.next_tenth:
            self.next_tenth = self._tenth(self.done) + 1
            print(self.line(), file=self.out, flush=True)

    def line(self) -> str:
        seconds = max(time.monotonic() - self.start, 1e-6)
        rate = human_bytes(int((self.done - self.initial) / seconds))
        of = f" of {human_bytes(self.total)}" if self.total else ""
        return f"{self.name}: {human_bytes(self.done)}{of} at {rate}/s"

    def close(self) -> None:
        self.bar.close()
        if self.show == "lines" and self.done > self.initial and self._tenth(self.done) < 10:
            print(self.line(), file=self.out, flush=True)  # where it stopped, or no size known


# -- verifying -----------------------------------------------------------------------------------
def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def set_aside(path: Path, digest: str) -> Path:
    """Move ``path`` to ``NAME.bad-<digest>`` beside it (never over an older one)."""
    target = path.with_name(f"{path.name.removesuffix('.part')}.bad-{digest}")
    counter = 1
    while target.exists():
        target = target.with_name(f"{target.name.split('.bad-')[0]}.bad-{digest}.{counter}")
        counter += 1
    os.replace(path, target)
    return target


def verify(part: Path, archive: Archive, url: str) -> None:
    """Raise, moving ``part`` aside, when its checksum is not the published one."""
    if archive.checksum is None:
        return
    algorithm, expected = archive.checksum
    actual = file_digest(part, algorithm)
    if actual != expected:
        aside = set_aside(part, actual[:12])
        raise PixelwiseError(
            f"{archive.name} from {url} has {algorithm} {actual}, not the published {expected}; "
            f"it was moved aside to {aside} (not used): run the same command again to download "
            "it anew, or try another --mirror."
        )


# -- unpacking -----------------------------------------------------------------------------------
def unpack(
    path: Path, archive: Archive, root: Path, *, set_bad_aside: bool = True, keep: bool = True
) -> None:
    """Put ``archive``'s ``member`` at ``root / archive.to``, through a temporary folder in root.

    A truncated or corrupt archive raises with the temporary folder removed, so nothing of it
    reaches the final place; a downloaded one is moved aside (``NAME.bad-<md5>``), a user's own
    (``set_bad_aside=False``, ``datasets prepare``) is left where it is. A single file
    (``format`` "file") is copied into place, or moved when ``keep`` is False.
    """
    target = root / archive.to if archive.to else root
    if archive.format == "file":
        target.parent.mkdir(parents=True, exist_ok=True)
        _place(path, target, keep_source=keep)
        return
    temp = root / STATE_FOLDER / f"unpack-{archive.name}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        try:
            _extract_all(path, archive.format, temp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
            if not set_bad_aside:
                raise PixelwiseError(
                    f"{path} is truncated or corrupt ({type(error).__name__}: {error}); nothing "
                    "was unpacked: download it again and run the same command."
                ) from None
            aside = set_aside(path, file_digest(path, "md5")[:12])
            raise PixelwiseError(
                f"{archive.name} is truncated or corrupt ({type(error).__name__}: {error}); it was "
                f"moved aside to {aside} and nothing was unpacked: run the same command again to "
                "download it anew."
            ) from None
        content = _content_folder(temp, archive)
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(content.iterdir()):
            _place(entry, target / entry.name, keep_source=False, origin=archive.name)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    fsync_folder(target)


def _extract_all(path: Path, kind: str, temp: Path) -> None:
    if kind in ("tar", "tgz"):
        with tarfile.open(path, "r:gz" if kind == "tgz" else "r:") as tar:
            # filter="data": no absolute paths, no "..", no links out of the folder, no devices
            tar.extractall(temp, filter="data")
        return
    if kind != "zip":
        raise PixelwiseError(f"sources.json: format {kind!r} is not tar, tgz, zip or file.")
    with zipfile.ZipFile(path) as archive:  # a member whose CRC fails raises as it is read
        for name in archive.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise zipfile.BadZipFile(f"the member {name} points outside the folder")
        archive.extractall(temp)


def _content_folder(temp: Path, archive: Archive) -> Path:
    """The folder whose entries go to ``to``: ``member`` inside the archive; for ``member`` ""
    an archive that wraps everything in one folder named like ``to`` is unwrapped."""
    if archive.member:
        content = temp / archive.member
        if not content.is_dir():
            raise PixelwiseError(
                f"{archive.name} holds no folder {archive.member}/; it is not the published "
                "archive: delete it and download it again."
            )
        return content
    entries = list(temp.iterdir())
    if archive.to and len(entries) == 1 and entries[0].is_dir():
        if entries[0].name == Path(archive.to).name:
            return entries[0]
    return temp


def _place(source: Path, target: Path, *, keep_source: bool, origin: str = "") -> None:
    """Move (or copy) ``source`` to ``target``; folders merge, an identical file is left alone,
    and a different file already at ``target`` is never replaced: two archives of one dataset that
    both ship a ``README`` (Cityscapes' zips) keep the second as ``README.from-<archive>``."""
    if target.is_dir() and source.is_dir():
        for entry in sorted(source.iterdir()):
            _place(entry, target / entry.name, keep_source=keep_source, origin=origin)
        return
    if target.exists():
        if target.is_file() and source.is_file() and _same_file(source, target):
            return
        beside = target.with_name(f"{target.name}.from-{origin}")
        if not origin or not source.is_file() or beside.exists():
            raise PixelwiseError(
                f"{target} already exists and differs from the one in the download; move it "
                "away and run the same command again."
            )
        target = beside
    if keep_source:
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, temp)
        os.replace(temp, target)
    else:
        os.replace(source, target)


def _same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and file_digest(a, "md5") == file_digest(b, "md5")


# -- the command ---------------------------------------------------------------------------------
def download_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    mirror: str | None = None,
    keep_archives: bool = False,
    extract: bool = True,
    timeout: float = 60.0,
    show: str = "auto",
    out: TextIO | None = None,
    sources: dict[str, Source] | None = None,
    check: bool = True,
) -> DownloadResult:
    """Download, verify and unpack dataset ``name`` into ``root``, then check it.

    Args:
        name: a key of ``sources.json`` (``pixelwise datasets download --help`` lists them).
        root: the dataset root; default its folder in the data home.
        mirror: replaces the host of every URL; default ``$PIXELWISE_MIRROR``.
        keep_archives: keep the verified archives in ``ROOT/.pixelwise-download/``.
        extract: False stops once the archives are verified.
        timeout: seconds without a byte before a download stops (and can resume).
        show: ``auto``, ``bar``, ``lines`` or ``quiet`` for the progress.
        out: where the lines go (default stdout).
        sources: the entries to use (default ``sources.json``).
        check: run ``datasets check`` on the result.
    """
    out = out or sys.stdout
    source = find_source(name, sources)
    if source.login:
        raise PixelwiseError(
            f"Dataset {name} is behind a login and cannot be downloaded: sign in at {source.page}, "
            f"download {' and '.join(a.name for a in source.archives)}, then run "
            f"`pixelwise datasets prepare {name} --from "
            f"{' '.join(a.name for a in source.archives)}`."
        )
    mirror = mirror or mirror_from_environment()
    mirrored(source.archives[0].url, mirror)  # a malformed mirror is refused before anything
    root = Path(root).expanduser() if root is not None else default_root(source)
    claim_root(root)
    state = root / STATE_FOLDER
    result = DownloadResult(root=root)
    pending = [a for a in source.archives if not _done_marker(state, a).exists()]
    needed = sum(_left_to_fetch(state, a) + (a.size if extract else 0) for a in pending)
    check_free_space(root, needed)
    for archive in pending:
        url = mirrored(archive.url, mirror)
        path = state / archive.name
        if not path.exists():
            part = state / f"{archive.name}.part"
            print(f"downloading {url}", file=out, flush=True)
            fetch(url, part, timeout=timeout, show=show, out=out)
            verify(part, archive, url)
            os.replace(part, path)
            result.downloaded.append(archive.name)
        if not extract:
            result.kept.append(path)
            continue
        print(f"unpacking {archive.name} into {root / archive.to}", file=out, flush=True)
        unpack(path, archive, root, keep=keep_archives)
        _done_marker(state, archive).write_text(archive.label + "\n")
        if keep_archives:
            result.kept.append(path)
        else:
            path.unlink(missing_ok=True)  # a single file was moved into place
    if extract and check:
        result.reports = check_downloaded(source, root, out)
    return result


def _done_marker(state: Path, archive: Archive) -> Path:
    return state / f"{archive.name}.done"


def _left_to_fetch(state: Path, archive: Archive) -> int:
    if (state / archive.name).exists():
        return 0
    part = state / f"{archive.name}.part"
    return max(0, archive.size - (part.stat().st_size if part.exists() else 0))


def check_downloaded(source: Source, root: Path, out: TextIO) -> list[Any]:
    """``datasets check`` of each split named in the source, one summary line each."""
    from pixelwise.data.check import check_dataset

    options = {k: v.replace("{root}", str(root)) for k, v in source.check_options.items()}
    reports = []
    for split in source.check_splits:
        report = check_dataset(source.reader, root, split, options=options)
        state = "problems: none" if report.exit_code == 0 else f"{report.problem_count} problems"
        print(
            f"checked {source.reader} {split}: {report.samples} samples, {state}"
            + ("" if report.exit_code == 0 else f" (see `pixelwise datasets check {source.reader} "
               f"{root} --split {split}`)"),
            file=out, flush=True,
        )  # fmt: skip
        reports.append(report)
    return reports
