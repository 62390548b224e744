"""One registry type for models, datasets and tasks: strict about names."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from pixelwise.errors import PixelwiseError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> entry table. Registering a name twice raises; an unknown name lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name.casefold() in (n.casefold() for n in self._entries):
            raise ValueError(f"{self.kind} {name!r} is registered twice (names ignore case)")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry of ``name``; case does not matter (``Enet`` is ``enet``), as no two names
        differ only in case."""
        try:
            return self._entries[self.canonical(name)]
        except KeyError:
            raise PixelwiseError(self.unknown_message(name)) from None

    def canonical(self, name: str) -> str:
        """``name`` as registered (``ENet`` -> ``enet``), or unchanged when nothing matches."""
        if name in self._entries or not isinstance(name, str):
            return name
        folded = [n for n in self._entries if n.casefold() == name.casefold()]
        return folded[0] if len(folded) == 1 else name

    def unknown_message(self, name: str) -> str:
        # Matched without case, so a capitalised typo still finds its name ('Fcn9s' -> 'fcn8s').
        lowered = {n.casefold(): n for n in self._entries}
        close = difflib.get_close_matches(str(name).casefold(), lowered, n=1)
        close = [lowered[c] for c in close]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        valid = ", ".join(sorted(self._entries))
        return f"Unknown {self.kind} {name!r}.{hint} Valid names: {valid}."

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
