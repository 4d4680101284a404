"""The pieces every inspector is made of: capture regions, named safety checks, the error.

An inspector sees the image as a stream of chunks, each with the offset it starts
at. It names the byte ranges it wants (``Region``), keeps only those, and decides
three things as soon as it has the bytes: whether the data is its format
(``matched``), the disk's ``virtual_size``, and whether the image passes its named
safety checks. Nothing here reads a file or blocks.
"""

from __future__ import annotations

from typing import Callable

from ..errors import InvalidImageData


class FormatRejected(InvalidImageData):
    """415: the data is not what the image claims, or it failed a named check.

    ``check`` names the failed check(s) (Glance's names where Glance has one, e.g.
    ``backing_file``, ``data_file``, ``unknown_features``, ``descriptor``, ``mbr``,
    ``banned``; ``format_match`` for a declared format the data does not match).
    """

    def __init__(self, check: str, detail: str, *, format: str | None = None) -> None:
        self.check = check
        self.format = format
        self.detail = detail
        where = f" ({format})" if format else ""
        super().__init__(f"Image failed check {check!r}{where}: {detail}")


class Violation(Exception):
    """Raised by a check function; the inspector turns it into a named failure."""


class Malformed(Exception):
    """The data carries this format's signature but its structure cannot be parsed."""


class Region:
    """Bytes ``[offset, offset + length)`` of the stream, captured as chunks pass."""

    __slots__ = ("offset", "length", "data")

    def __init__(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise Malformed(f"region at {offset} of {length} bytes")
        self.offset = offset
        self.length = length
        self.data = bytearray()

    @property
    def complete(self) -> bool:
        return len(self.data) >= self.length

    def capture(self, chunk: memoryview, start: int) -> None:
        """Take what this region wants from ``chunk``, which covers ``[start, start + len(chunk))``."""
        have = len(self.data)
        if have >= self.length:
            return
        want = self.offset + have
        end = start + len(chunk)
        if want >= end:
            return
        if want < start:
            # Bytes already gone by: inspectors only add regions at or after the chunk in hand.
            raise Malformed(f"structure at offset {want} points backwards (stream is at {start})")
        take = min(self.length - have, end - want)
        self.data += chunk[want - start:want - start + take]


Check = Callable[[], None]


class Inspector:
    """One disk format. Subclasses set NAME, add regions in ``_setup`` and decide in ``_progress``."""

    NAME = ""
    #: Safety checks as (name, method name); run only once ``matched`` and ``complete``.
    CHECKS: tuple[tuple[str, str], ...] = ()

    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}
        self.matched: bool | None = None   # None: not decided yet
        self.signature_seen = False        # the magic matched (for "truncated" reports)
        self.invalid: str | None = None    # the signature matched but the structure is broken
        self.truncated = False             # the stream ended before the structures were whole
        self.finished = False
        self.total = 0                     # bytes of the stream seen so far
        self._virtual_size: int | None = None
        self._setup()

    # -- subclass hooks ---------------------------------------------------------

    def _setup(self) -> None:
        """Add the initial regions."""

    def _progress(self) -> None:
        """Called after each capture: decide ``matched``, add regions, parse what is whole."""

    def _at_eof(self) -> None:
        """Called once at the end of the stream, before the verdict."""

    @property
    def _waiting_for_eof(self) -> bool:
        """True while a safety check needs the end of the stream (a footer)."""
        return False

    # -- machinery ----------------------------------------------------------------

    def add_region(self, name: str, offset: int, length: int) -> Region:
        if name in self.regions:
            raise Malformed(f"region {name} added twice")
        region = self.regions[name] = Region(offset, length)
        return region

    def region(self, name: str) -> Region:
        return self.regions[name]

    def has(self, name: str) -> bool:
        region = self.regions.get(name)
        return region is not None and region.complete

    def _reject(self, reason: str) -> None:
        if self.matched:
            self.invalid = reason
        else:
            self.matched = False

    def feed(self, chunk: memoryview, start: int) -> None:
        """Show the inspector the chunk that starts at stream offset ``start``."""
        self.total = start + len(chunk)
        try:
            count = -1
            while count != len(self.regions) and self.needs_data:
                count = len(self.regions)
                for region in list(self.regions.values()):
                    region.capture(chunk, start)
                self._progress()
        except Malformed as exc:
            self._reject(str(exc))

    @property
    def complete(self) -> bool:
        """All the bytes the verdict, virtual size and safety checks need have been seen."""
        if self.matched is None:
            return False
        if not self.matched or self.invalid:
            return True
        return all(r.complete for r in self.regions.values()) and not self._waiting_for_eof

    @property
    def needs_data(self) -> bool:
        return not self.finished and not self.complete

    def finish(self, total: int) -> None:
        """The stream ended after ``total`` bytes."""
        if self.finished:
            return
        self.total = total
        try:
            self._at_eof()
        except Malformed as exc:
            self._reject(str(exc))
        self.finished = True
        if self.matched is None:
            self.matched = False
            self.truncated = self.signature_seen
        elif self.matched and not self.invalid and not all(r.complete for r in self.regions.values()):
            self.truncated = True

    @property
    def usable(self) -> bool:
        """Matched, and whole enough to be the verdict."""
        return bool(self.matched) and not self.invalid and not self.truncated

    @property
    def virtual_size(self) -> int | None:
        return self._virtual_size

    def safety_failures(self) -> dict[str, str]:
        """Run every named check; {check name: reason} for those that failed."""
        failures: dict[str, str] = {}
        for name, method in self.CHECKS:
            try:
                getattr(self, method)()
            except Violation as exc:
                failures[name] = str(exc)
            except Exception as exc:  # a bug in a check must fail closed, never open
                failures[name] = f"check could not run: {type(exc).__name__}: {exc}"
        return failures

    def __repr__(self) -> str:
        return f"<{type(self).__name__} matched={self.matched} invalid={self.invalid!r}>"
