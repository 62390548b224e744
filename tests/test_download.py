"""``pixelwise datasets download`` against a local HTTP server (nothing leaves 127.0.0.1).

The server serves small archives built in each dataset's published layout: the tiny roots of the
reader tests (tests/test_data_*.py) are packed by :func:`pack` following ``sources.json``'s
``member``/``to`` in reverse, so an archive holds exactly the folders the owners' archive holds.
Published checksums cannot match these small files, so :func:`local_sources` swaps each checksum
for the small file's own (same algorithm) and keeps everything else of the entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import download as dl
from pixelwise.data.download import STATE_FOLDER, Archive, Source, download_dataset, load_sources
from pixelwise.errors import PixelwiseError
from tests import test_data_ade20k as ade
from tests import test_data_camvid32 as cv32
from tests import test_data_coco as coco
from tests import test_data_coco_stuff as cstuff
from tests import test_data_nyudv2 as nyu
from tests import test_data_sunrgbd as sun
from tests import test_data_voc as voc


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path / "home"))
    monkeypatch.delenv("PIXELWISE_MIRROR", raising=False)


# -- the server ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Served:
    """What the server answers: files by URL path, and the faults to inject."""

    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    drop_after: dict[str, int] = dataclasses.field(default_factory=dict)  # first answer only
    status: dict[str, int] = dataclasses.field(default_factory=dict)
    delay: float = 0.0  # seconds before each 1 KB chunk
    ignore_range: bool = False  # answer 200 and the whole file to a Range request
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            served.requests.append((self.path, self.headers.get("Range")))
            if self.path in served.status:
                self.send_error(served.status[self.path])
                return
            data = served.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            ranged = None if served.ignore_range else self.headers.get("Range")
            if ranged:
                start = int(ranged.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            stop = served.drop_after.pop(self.path, None)
            if stop is not None:
                body = body[:stop]
                self.close_connection = True
            for offset in range(0, len(body), 1024):
                if served.delay:
                    time.sleep(served.delay)
                try:
                    self.wfile.write(body[offset : offset + 1024])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def url_path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


# -- archives in the published layout ------------------------------------------------------------
def pack(root: Path, archive: Archive) -> bytes:
    """The archive whose unpacking (``member`` -> ``to``) gives ``root / archive.to`` back."""
    content = root / archive.to if archive.to else root
    if archive.format == "file":
        return content.read_bytes()
    prefix = f"{archive.member}/" if archive.member else ""
    files = sorted(p for p in content.rglob("*") if p.is_file() and STATE_FOLDER not in p.parts)
    buffer = io.BytesIO()
    if archive.format == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
            for path in files:
                out.write(path, prefix + path.relative_to(content).as_posix())
    else:
        mode = "w:gz" if archive.format == "tgz" else "w"
        with tarfile.open(fileobj=buffer, mode=mode) as out:
            for path in files:
                out.add(path, prefix + path.relative_to(content).as_posix())
    return buffer.getvalue()


def local_sources(
    name: str, built: Path, served: Served, *, splits: tuple[str, ...] | None = None
) -> dict[str, Source]:
    """``sources.json`` with ``name``'s archives packed from ``built``, served at their published
    URL paths, and their checksums (same algorithm) and sizes those of the small files."""
    sources = load_sources()
    source = sources[name]
    archives = []
    for archive in source.archives:
        data = pack(built, archive)
        served.files[url_path(archive.url)] = data
        algorithm = archive.checksum[0] if archive.checksum else None
        checksum = (algorithm, hashlib.new(algorithm, data).hexdigest()) if algorithm else None
        archives.append(dataclasses.replace(archive, checksum=checksum, size=len(data)))
    sources[name] = dataclasses.replace(
        source, archives=tuple(archives), check_splits=splits or source.check_splits
    )
    return sources


# -- tiny roots of each dataset, written by the reader tests' own helpers ------------------------
def build_voc(root: Path) -> None:
    for k, image_id in enumerate(voc.VOC_TRAIN + voc.VOC_VAL):
        voc.write_jpg(root / "JPEGImages" / f"{image_id}.jpg")
        voc.write_palette_png(root / "SegmentationClass" / f"{image_id}.png", voc.label_array(k))
    sets = root / "ImageSets" / "Segmentation"
    voc.write_list(sets / "train.txt", voc.VOC_TRAIN)
    voc.write_list(sets / "val.txt", voc.VOC_VAL)
    voc.write_list(sets / "trainval.txt", voc.VOC_TRAIN + voc.VOC_VAL)


def build_sbd(root: Path) -> None:
    for k, image_id in enumerate(voc.SBD_TRAIN + voc.SBD_VAL):
        voc.write_jpg(root / "img" / f"{image_id}.jpg")
        voc.write_sbd_mat(root / "cls" / f"{image_id}.mat", voc.sbd_array(k))
    voc.write_list(root / "train.txt", voc.SBD_TRAIN)
    voc.write_list(root / "val.txt", voc.SBD_VAL)


def build_camvid(root: Path) -> None:
    for split, names in {"train": ["0001TP_006690"], "val": ["0016E5_07959"],
                         "test": ["0001TP_008550"]}.items():  # fmt: skip
        lines = []
        for name in names:
            for folder in (split, f"{split}annot"):
                (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(root / split / f"{name}.png")
            label = np.arange(48, dtype=np.uint8).reshape(6, 8) % 12  # 0..10 and 11 Unlabelled
            Image.fromarray(label, mode="L").save(root / f"{split}annot" / f"{name}.png")
            lines.append(
                f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png"
            )
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def build_camvid32(root: Path) -> None:
    (root / "701_StillsRaw_full").mkdir(parents=True)
    (root / "LabeledApproved_full").mkdir()
    for k, frame in enumerate(cv32.TEST_FRAMES):
        cv32.write_frames(root, [frame], cv32.png_bytes(cv32.colour_label(k + 1)[0]))
    (root / "label_colors.txt").write_text(cv32.LABEL_COLORS_TXT)


def build_ade20k(root: Path) -> None:
    for split, names in ade.FRAMES.items():
        for k, name in enumerate(names):
            ade.write_pair(root, split, name, ade.annotation(k))
    (root / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n")
    (root / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")


def build_coco(root: Path) -> None:
    coco._write(root, "val")
    (root / "train2017").mkdir()
    (root / "train2017" / "000000000009.jpg").write_bytes(
        (root / "val2017/000000000001.jpg").read_bytes()
    )


def build_coco_stuff(root: Path) -> None:
    raw = np.zeros((cstuff.H, cstuff.W), np.uint8)
    raw[0, :3] = (0, 91, 255)
    for split in ("train", "val"):
        cstuff._write(root, raw, split, "000000000139")


def build_nyudv2(root: Path) -> None:
    root.mkdir(parents=True)
    nyu._write_labeled_mat(root / "nyu_depth_v2_labeled.mat", *nyu._frames(3))
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [3]], np.uint16),
                                           "testNdxs": np.array([[2]], np.uint16)})  # fmt: skip
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": nyu._mapping40()})


def build_sunrgbd(root: Path) -> None:
    sun._write(root)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "voc": build_voc, "sbd": build_sbd, "camvid": build_camvid, "camvid32": build_camvid32,
    "ade20k": build_ade20k, "coco": build_coco, "coco_stuff": build_coco_stuff,
    "nyudv2": build_nyudv2, "sunrgbd": build_sunrgbd,
}  # fmt: skip
#: The splits the tiny roots hold, where they do not hold every split that sources.json checks.
TINY_SPLITS = {"camvid32": ("test",), "coco": ("val",)}


def built(name: str, tmp_path: Path) -> Path:
    root = tmp_path / "built" / name
    BUILDERS[name](root)
    return root


def test_every_downloadable_dataset_has_a_builder() -> None:
    downloadable = {k for k, s in load_sources().items() if not s.login}
    assert downloadable == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_dataset_downloads_into_a_root_its_reader_and_check_accept(
    name: str, tmp_path: Path, server, capsys
) -> None:
    base, served = server
    sources = local_sources(name, built(name, tmp_path), served, splits=TINY_SPLITS.get(name))
    result = download_dataset(name, mirror=base, sources=sources, show="quiet")
    home = tmp_path / "home" / load_sources()[name].home
    assert result.root == home
    assert result.reports and all(r.exit_code == 0 and r.samples > 0 for r in result.reports)
    # the archives were deleted once unpacked; only the small markers stay
    assert sorted(p.name for p in (home / STATE_FOLDER).iterdir()) == sorted(
        f"{a.name}.done" for a in sources[name].archives
    )
    expected = {str(p.relative_to(tmp_path / "built" / name)) for p in
                (tmp_path / "built" / name).rglob("*") if p.is_file()}  # fmt: skip
    got = {str(p.relative_to(home)) for p in home.rglob("*")
           if p.is_file() and STATE_FOLDER not in p.parts}  # fmt: skip
    assert got == expected


# -- one archive, every fault --------------------------------------------------------------------
@pytest.fixture
def voc_setup(tmp_path: Path, server) -> tuple[dict[str, Source], Served, str, bytes]:
    base, served = server
    sources = local_sources("voc", built("voc", tmp_path), served)
    path = url_path(sources["voc"].archives[0].url)
    return sources, served, base, served.files[path]


def test_a_dropped_connection_resumes_from_the_byte_it_stopped_at(voc_setup, tmp_path) -> None:
    sources, served, base, data = voc_setup
    path = url_path(sources["voc"].archives[0].url)
    half = len(data) // 2
    served.drop_after[path] = half
    root = tmp_path / "voc"
    with pytest.raises(PixelwiseError, match=r"closed after .* run the same command again"):
        download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    part = root / STATE_FOLDER / "VOCtrainval_11-May-2012.tar.part"
    assert part.read_bytes() == data[:half]
    result = download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    assert served.requests[-1] == (path, f"bytes={half}-")
    assert result.exit_code == 0 and (root / "JPEGImages" / "2007_000033.jpg").is_file()
    assert result.downloaded == ["VOCtrainval_11-May-2012.tar"]


def test_an_interrupted_run_is_resumed_by_the_next(
    voc_setup, tmp_path, monkeypatch, capsys
) -> None:
    sources, served, base, data = voc_setup
    calls = []
    original = dl._Meter.update

    def interrupt(self, count: int) -> None:
        original(self, count)
        calls.append(count)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(dl._Meter, "update", interrupt)
    monkeypatch.setattr(dl, "_CHUNK", 256)  # several reads for the small archive
    root = tmp_path / "voc"
    with pytest.raises(KeyboardInterrupt):
        download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    part = root / STATE_FOLDER / "VOCtrainval_11-May-2012.tar.part"
    have = part.stat().st_size
    assert f"is kept in {part}; run the same command again to resume" in capsys.readouterr().err
    assert 0 < have < len(data)
    assert not (root / "JPEGImages").exists()
    monkeypatch.setattr(dl._Meter, "update", original)
    assert download_dataset("voc", root, mirror=base, sources=sources, show="quiet").exit_code == 0
    assert served.requests[-1][1] == f"bytes={have}-"


def test_a_wrong_checksum_is_set_aside_and_nothing_is_unpacked(voc_setup, tmp_path) -> None:
    sources, served, base, data = voc_setup
    archive = sources["voc"].archives[0]
    sources["voc"] = dataclasses.replace(
        sources["voc"], archives=(dataclasses.replace(archive, checksum=("md5", "0" * 32)),)
    )
    root = tmp_path / "voc"
    with pytest.raises(
        PixelwiseError, match=r"has md5 .*, not the published 0{32}; it was moved aside"
    ):
        download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    actual = hashlib.md5(data).hexdigest()
    aside = root / STATE_FOLDER / f"VOCtrainval_11-May-2012.tar.bad-{actual[:12]}"
    assert aside.read_bytes() == data
    assert sorted(p.name for p in root.iterdir()) == [STATE_FOLDER]
    assert not (root / STATE_FOLDER / "VOCtrainval_11-May-2012.tar").exists()


def test_a_404_names_the_url(voc_setup, tmp_path) -> None:
    sources, served, base, _ = voc_setup
    served.files.clear()
    with pytest.raises(
        PixelwiseError, match=r"/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar answered HTTP 404"
    ):
        download_dataset("voc", tmp_path / "voc", mirror=base, sources=sources, show="quiet")


def test_a_refused_connection_says_so(voc_setup, tmp_path) -> None:
    sources, _, _, _ = voc_setup
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PixelwiseError, match=r"could not be reached .*refused.*--mirror"):
        download_dataset("voc", tmp_path / "voc", mirror=f"http://127.0.0.1:{port}",
                         sources=sources, show="quiet")  # fmt: skip


def test_a_slow_server_moves_the_progress_and_a_stall_times_out(voc_setup, tmp_path) -> None:
    sources, served, base, data = voc_setup
    served.delay = 0.002
    lines = io.StringIO()
    download_dataset("voc", tmp_path / "a", mirror=base, sources=sources, show="lines", out=lines)
    progress = [x for x in lines.getvalue().splitlines() if x.startswith("VOCtrainval")]
    assert len(progress) >= 5 and all("/s" in x and " of " in x for x in progress)
    assert progress[-1].startswith(f"VOCtrainval_11-May-2012.tar: {dl.human_bytes(len(data))}")
    served.delay = 0.5
    with pytest.raises(PixelwiseError, match=r"sent nothing for 0.2 s \(timed out\).*resume"):
        download_dataset("voc", tmp_path / "b", mirror=base, sources=sources, show="quiet",
                         timeout=0.2)  # fmt: skip


def test_a_disk_too_small_is_refused_before_the_first_byte(
    voc_setup, tmp_path, monkeypatch
) -> None:
    sources, served, base, data = voc_setup
    monkeypatch.setattr(dl, "free_space", lambda path: len(data))  # not room for archive + files
    with pytest.raises(PixelwiseError, match=r"Not enough free space .* needs about"):
        download_dataset("voc", tmp_path / "voc", mirror=base, sources=sources, show="quiet")
    assert served.requests == []


def test_a_truncated_archive_is_set_aside(tmp_path, server) -> None:
    base, served = server
    sources = local_sources("sunrgbd", built("sunrgbd", tmp_path), served)
    labels = sources["sunrgbd"].archives[2]
    assert labels.checksum is None  # none published: only unpacking can tell
    served.files[url_path(labels.url)] = served.files[url_path(labels.url)][:200]
    root = tmp_path / "sun"
    with pytest.raises(
        PixelwiseError, match=r"sunrgbd_train_test_labels.tar.gz is truncated or corrupt"
    ):
        download_dataset("sunrgbd", root, mirror=base, sources=sources, show="quiet")
    assert not (root / "sunrgbd_train_test_labels").exists()
    assert not any(p.name.startswith("unpack-") for p in (root / STATE_FOLDER).iterdir())
    assert [p.name for p in (root / STATE_FOLDER).glob("*.bad-*")]


def test_an_existing_root_with_other_files_is_refused(voc_setup, tmp_path) -> None:
    sources, served, base, _ = voc_setup
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(PixelwiseError, match=r"already holds other files \(notes.txt\)"):
        download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    assert served.requests == []


def test_keep_archives_no_extract_and_the_mirror_variable(voc_setup, tmp_path, monkeypatch) -> None:
    sources, served, base, data = voc_setup
    monkeypatch.setenv("PIXELWISE_MIRROR", base + "/")
    root = tmp_path / "voc"
    result = download_dataset("voc", root, sources=sources, show="quiet", extract=False)
    kept = root / STATE_FOLDER / "VOCtrainval_11-May-2012.tar"
    assert result.kept == [kept] and kept.read_bytes() == data and result.reports == []
    assert not (root / "JPEGImages").exists()
    result = download_dataset("voc", root, sources=sources, show="quiet", keep_archives=True)
    assert len(served.requests) == 1  # the verified archive was not fetched again
    assert result.kept == [kept] and (root / "JPEGImages").is_dir()


def test_mirror_replaces_scheme_and_host_only() -> None:
    url = "http://images.cocodataset.org/zips/val2017.zip"
    assert (
        dl.mirrored(url, "https://proxy:8080/cache/") == "https://proxy:8080/cache/zips/val2017.zip"
    )
    assert dl.mirrored(url, None) == url
    with pytest.raises(PixelwiseError, match="is not a URL"):
        dl.mirrored(url, "proxy")


def test_cli_exit_codes_and_one_sentence(voc_setup, tmp_path, monkeypatch, capsys) -> None:
    sources, served, base, _ = voc_setup
    monkeypatch.setattr(dl, "load_sources", lambda path=None: sources)
    root = tmp_path / "voc"
    assert main(["datasets", "download", "voc", "--root", str(root), "--mirror", base]) == 0
    assert f"voc is in {root}" in capsys.readouterr().out
    assert main(["datasets", "download", "cityscapes"]) == 2
    err = capsys.readouterr().err
    assert "cityscapes-dataset.com" in err and "pixelwise datasets prepare cityscapes --from" in err
    assert err.count("\n") == 1


def test_the_servers_size_is_checked_when_the_published_one_was_an_estimate(
    voc_setup, tmp_path, monkeypatch
) -> None:
    sources, served, base, data = voc_setup
    archive = sources["voc"].archives[0]
    sources["voc"] = dataclasses.replace(
        sources["voc"], archives=(dataclasses.replace(archive, size=10),)
    )
    monkeypatch.setattr(dl, "free_space", lambda path: len(data) // 2)
    root = tmp_path / "voc"
    with pytest.raises(PixelwiseError, match=r"Not enough free space"):
        download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    assert len(served.requests) == 1  # asked, but nothing written
    assert not (root / STATE_FOLDER / "VOCtrainval_11-May-2012.tar.part").exists()


def test_a_second_run_on_a_finished_root_downloads_nothing_and_checks_again(
    voc_setup, tmp_path
) -> None:
    sources, served, base, _ = voc_setup
    root = tmp_path / "voc"
    download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    again = download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    assert len(served.requests) == 1 and again.downloaded == []
    assert [r.samples for r in again.reports] == [2, 1]


def test_a_server_that_ignores_range_is_downloaded_anew_not_appended(voc_setup, tmp_path) -> None:
    sources, served, base, data = voc_setup
    path = url_path(sources["voc"].archives[0].url)
    served.drop_after[path] = 1000
    root = tmp_path / "voc"
    with pytest.raises(PixelwiseError, match="closed after"):
        download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    served.ignore_range = True
    result = download_dataset("voc", root, mirror=base, sources=sources, show="quiet")
    assert served.requests[-1] == (path, "bytes=1000-")  # asked, but got the whole file back
    assert result.exit_code == 0  # the checksum matched: no second copy was appended


def test_an_archive_without_the_readers_folder_is_refused(tmp_path, server) -> None:
    base, served = server
    sources = local_sources("ade20k", built("ade20k", tmp_path), served)
    archive = sources["ade20k"].archives[0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as repack:  # a repack without the top folder
        repack.writestr("images/training/ADE_train_00000001.jpg", b"x")
    served.files[url_path(archive.url)] = buffer.getvalue()
    sources["ade20k"] = dataclasses.replace(
        sources["ade20k"],
        archives=(
            dataclasses.replace(
                archive, checksum=("sha1", hashlib.sha1(buffer.getvalue()).hexdigest())
            ),
        ),
    )
    root = tmp_path / "ade"
    with pytest.raises(
        PixelwiseError,
        match=r"holds no folder ADEChallengeData2016/; it is not the published archive",
    ):
        download_dataset("ade20k", root, mirror=base, sources=sources, show="quiet")
    assert sorted(p.name for p in root.iterdir()) == [STATE_FOLDER]


def test_single_files_are_moved_not_copied_unless_kept(tmp_path, server) -> None:
    base, served = server
    sources = local_sources("nyudv2", built("nyudv2", tmp_path), served)
    root = tmp_path / "nyu"
    download_dataset("nyudv2", root, mirror=base, sources=sources, show="quiet", check=False)
    assert not list((root / STATE_FOLDER).glob("*.mat"))
    kept = tmp_path / "kept"
    download_dataset("nyudv2", kept, mirror=base, sources=sources, show="quiet", keep_archives=True)
    for name in ("nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"):
        assert (kept / STATE_FOLDER / name).read_bytes() == (kept / name).read_bytes()
