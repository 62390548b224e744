"""The zoo: every release in ``convert/releases/``, found by walking the package, by zoo name.

Adding a release is one file there defining ``RELEASE``; nothing here lists them.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import cache
from types import ModuleType

from pixelwise.convert import releases as releases_package
from pixelwise.convert.release import Release
from pixelwise.errors import PixelwiseError

# Release.format -> the reader module under pixelwise.convert (each has read(path) -> object).
READERS: dict[str, str] = {"caffe": "caffe", "t7": "torch7", "npz": "lasagne", "mat": "matconvnet"}


@cache
def releases() -> dict[str, Release]:
    """Every ``RELEASE`` of the ``convert/releases/*.py`` modules, sorted by zoo name.

    Raises:
        ValueError: two modules give the same zoo name (a programming error, not a user's).
    """
    found: dict[str, Release] = {}
    for info in pkgutil.iter_modules(releases_package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{releases_package.__name__}.{info.name}")
        release = getattr(module, "RELEASE", None)
        if not isinstance(release, Release):
            continue
        if release.name in found:
            raise ValueError(f"two releases are named {release.name!r} ({info.name})")
        found[release.name] = release
    return dict(sorted(found.items()))


def get_release(name: str, flag: str = "--model") -> Release:
    """The release called ``name``; an unknown name lists the zoo and the closest name, naming
    where it was given (``flag``: the convert option or the config key)."""
    table = releases()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise PixelwiseError(
        f"{flag} {name!r} is not in the zoo{hint}; choose one of {', '.join(table)} "
        "(pixelwise models --zoo lists them)."
    )


def reader(release: Release) -> ModuleType:
    """The reader module of ``release.format`` (imported on first use)."""
    return importlib.import_module(f"pixelwise.convert.{READERS[release.format]}")


def zoo_table() -> list[str]:
    """The lines `pixelwise models --zoo` prints: per release, its name, network, dataset, format
    and first figure, then its file and licence on a second line."""
    lines = [f"{'zoo name':<24} {'network':<14} {'dataset':<11} {'format':<6} figure"]
    for release in releases().values():
        figure = next(iter(release.figures), None)
        shown = (
            f"{figure.metric} {figure.value:g} on {figure.dataset} {figure.split} ({figure.source})"
            if figure
            else "-"
        )
        lines.append(
            f"{release.name:<24} {release.model:<14} {release.dataset:<11} {release.format:<6} "
            f"{shown}"
        )
        lines.append(f"    file {release.file_name}; licence: {release.licence}")
    lines.append(
        "Convert one: pixelwise convert --model NAME --weights FILE --out model.pt "
        "(docs/model-zoo.md says where each file is published)."
    )
    return lines


def _figure_rows(release: Release) -> list[str]:
    if not release.figures:
        return ["| - | - | - | - | - | - | - |"]
    return [
        f"| {f.source} | {f.metric} | {f.value:g} | {f.dataset} | {f.split} | {f.input_size} | "
        f"{f.scales} |"
        for f in release.figures
    ]


def release_markdown(release: Release) -> list[str]:
    """One release's part of docs/model-zoo.md, from its Release data alone."""
    mean, std = release.input.rgb_unit_mean_std()
    convert = f"pixelwise convert --model {release.name} --weights {release.file_name}"
    convert += " --prototxt DEPLOY.prototxt" if release.needs_prototxt else ""
    convert += f" --out {release.name}.pt"
    evaluate = f"pixelwise eval --checkpoint {release.name}.pt --split {release.eval_split}"
    evaluate += "".join(f" {option}" for option in release.eval_options)
    size = f"{release.size:,} bytes" if release.size else "not published"
    lines = [
        f"### {release.name}",
        "",
        f"- network: `{release.model}` {release.model_options or ''}".rstrip(),
        f"- dataset: `{release.dataset}`, {release.num_classes} classes; scored on split "
        f"`{release.eval_split}`",
        f"- file: `{release.file_name}`, size {size}, sha256 {release.sha256 or 'not published'}",
        f"- published: {release.url or 'no direct link'}; {release.where}",
        f"- licence: {release.licence}",
        f"- input: {release.input.channels.upper()}, full intensity {release.input.scale:g}, "
        f"mean {list(release.input.mean)}, std {list(release.input.std)} in the release's units "
        f"(in the checkpoint: RGB [0, 1], mean {[round(m, 6) for m in mean]}, "
        f"std {[round(s, 6) for s in std]})",
        "",
        "| source | metric | value | dataset | split | input size | scales |",
        "|---|---|---|---|---|---|---|",
        *_figure_rows(release),
        "",
        "```",
        convert,
        evaluate,
        "```",
    ]
    if release.protocol_note:
        lines += ["", release.protocol_note]
    return [*lines, ""]


GENERATED = (
    "<!-- generated from pixelwise/convert/releases by pixelwise.convert.zoo.zoo_markdown -->"
)


def zoo_markdown() -> str:
    """The generated part of docs/model-zoo.md: a summary table, then every release."""
    lines = [
        GENERATED,
        "",
        "| zoo name | network | dataset | format | file | figure | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for release in releases().values():
        figure = next(iter(release.figures), None)
        shown = (
            f"{figure.metric} {figure.value:g} ({figure.split}, {figure.source})" if figure else "-"
        )
        lines.append(
            f"| {release.name} | {release.model} | {release.dataset} | {release.format} | "
            f"{release.file_name} | {shown} | {release.licence} |"
        )
    lines.append("")
    for release in releases().values():
        lines += release_markdown(release)
    return "\n".join(lines)


if __name__ == "__main__":  # python -m pixelwise.convert.zoo > the generated part of the page
    print(zoo_markdown())
