"""Run every inspector side by side over one stream, and judge the result.

``FormatDetector`` only observes: it feeds chunks to the inspectors that still want
bytes and reports which formats matched. ``ImageInspection`` adds Glance's verdict
rules for an image that declares a ``disk_format`` and raises ``FormatRejected``
(415) the moment the verdict is certain, usually within the first 34 KiB (ISO's
volume descriptor is the furthest signature), so an upload can stop early.

Glance's rules (glance/location.py ``set_data``, with oslo's inspector):
- the detected format is the one non-raw format that matched, or raw if none did;
  iso+gpt together count as iso (bootable ISOs carry a partition table); any other
  combination is refused;
- detected == declared: ``virtual_size`` comes from the inspector;
- detected raw and declared not inspectable (ami, ari, aki, ploop...): allowed;
- declared raw and something else detected: allowed, ``virtual_size`` is the byte
  size, but the detected format's safety checks still run (a qcow2 with a backing
  file claimed as raw is refused);
- any other mismatch is refused when ``require_image_format_match`` is on;
- a failed safety check is refused, except gpt failures named in
  ``gpt_safety_checks_nonfatal`` (and ``mbr`` for aki/ari images).
Where streamd is stricter: with ``require_image_format_match`` off, a mismatch is
allowed but the detected format's safety checks still run (Glance skips them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

from .base import FormatRejected, Inspector
from .inspectors import ALL_FORMATS, ALL_INSPECTORS

log = logging.getLogger(__name__)


class FormatDetector:
    """Feed it the stream; it keeps only what the inspectors asked for."""

    def __init__(self, formats: tuple[str, ...] = ALL_FORMATS) -> None:
        self.inspectors = {name: ALL_INSPECTORS[name]() for name in formats}
        self.position = 0
        self.finished = False
        self._active = [i for i in self.inspectors.values() if i.needs_data]

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._active:
            view = memoryview(chunk)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            start = self.position
            for inspector in self._active:
                inspector.feed(view, start)
            self._active = [i for i in self._active if i.needs_data]
        self.position += len(chunk)

    def drop(self, keep: set[str]) -> None:
        """Stop feeding every inspector but those named: their opinion no longer matters."""
        self._active = [i for i in self._active if i.NAME in keep]

    @property
    def hungry(self) -> bool:
        """Some inspector still wants bytes before the end of the stream."""
        return bool(self._active)

    @property
    def decided(self) -> bool:
        """Every inspector knows whether the data is its format."""
        return self.finished or all(i.matched is not None for i in self.inspectors.values())

    def finish(self) -> None:
        if not self.finished:
            for inspector in self.inspectors.values():
                inspector.finish(self.position)
            self.finished = True
            self._active = []

    def matches(self) -> list[Inspector]:
        """The non-raw inspectors that matched and parsed (only meaningful once decided)."""
        return [i for n, i in self.inspectors.items()
                if n != "raw" and i.matched and not i.invalid and not (self.finished and i.truncated)]

    def next_wanted(self) -> int | None:
        """The first stream offset some inspector still wants (None: only the end of the stream)."""
        starts = [r.offset + len(r.data) for i in self._active for r in i.regions.values() if not r.complete]
        return min(starts, default=None)


@dataclass
class Verdict:
    """What the stream was found to be."""

    detected: str                       # the format the data is (raw if nothing else)
    disk_format: str | None             # what the image declared, if anything
    virtual_size: int | None = None
    matched: tuple[str, ...] = ()       # every non-raw format whose signature matched
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class InspectionPolicy:
    disk_format: str
    require_match: bool = True
    gpt_nonfatal: frozenset[str] = frozenset()


class ImageInspection:
    """Glance's verdict over a stream, raised as early as the bytes allow.

    ``feed`` every chunk before it is stored; it raises ``FormatRejected`` as soon as
    the image is known to be refused. ``finish`` at the end of the stream returns the
    ``Verdict`` (or raises). Once nothing more can be learnt before the end, ``feed``
    only counts bytes."""

    def __init__(self, policy: InspectionPolicy) -> None:
        self.policy = policy
        self.detector = FormatDetector()
        self._chosen: Inspector | None = None
        self._targets: list[Inspector] | None = None   # inspectors whose safety checks apply
        self._checked: set[str] = set()
        self._use_size = False                          # virtual_size from the inspector
        self._warnings: list[str] = []
        self._idle = False

    @property
    def position(self) -> int:
        return self.detector.position

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._idle:
            self.detector.position += len(chunk)
            return
        self.detector.feed(chunk)
        self._evaluate()

    def finish(self) -> Verdict:
        self.detector.finish()
        self._evaluate()
        chosen = self._chosen
        assert chosen is not None and self._targets is not None
        declared = self.policy.disk_format
        if self._use_size:
            size = chosen.virtual_size
        elif declared == "raw":
            size = self.detector.position
        else:
            size = None
        return Verdict(detected=chosen.NAME, disk_format=declared, virtual_size=size or None,
                       matched=tuple(i.NAME for i in self.detector.matches()), warnings=self._warnings)

    # -- the rules ---------------------------------------------------------------------

    def _evaluate(self) -> None:
        det = self.detector
        if self._targets is None:
            if not det.decided:
                return
            self._decide()
        assert self._targets is not None and self._chosen is not None
        declared = self.policy.disk_format
        chosen = self._chosen
        if chosen.NAME == declared and chosen.invalid:
            raise FormatRejected("format_match", f"malformed {declared} image: {chosen.invalid}", format=declared)
        if chosen.NAME == declared and det.finished and chosen.truncated:
            raise FormatRejected("truncated", f"the data ends inside the {declared} structures", format=declared)
        for target in self._targets:
            if target.NAME in self._checked or not (target.complete or det.finished):
                continue
            if target.invalid or target.truncated:
                self._checked.add(target.NAME)   # not really that format after all
                continue
            self._checked.add(target.NAME)
            self._safety(target)
        if not det.finished:
            det.drop({t.NAME for t in self._targets if t.needs_data})
            self._idle = not det.hungry

    def _decide(self) -> None:
        declared = self.policy.disk_format
        det = self.detector
        matches = det.matches()
        names = {i.NAME for i in matches}
        raw = det.inspectors["raw"]
        if names == {"iso", "gpt"}:
            chosen = det.inspectors["iso"]
        elif len(matches) > 1:
            self._mismatch(f"multiple formats detected: {','.join(sorted(names))}", matches)
            self._chosen, self._targets = matches[0], matches
            return
        else:
            chosen = matches[0] if matches else raw
        self._chosen = chosen
        self._targets = [chosen]
        if chosen.NAME == declared:
            self._use_size = True
        elif chosen is raw and declared not in ALL_FORMATS:
            pass  # ami, aki, ari, ploop...: not inspectable, and nothing else matched
        elif declared == "raw":
            self._warnings.append(f"image claims disk_format raw but its data is {chosen.NAME}")
            log.warning("image claims disk_format raw but its data is %s", chosen.NAME)
        else:
            own = det.inspectors.get(declared)
            if own is not None and own.signature_seen and own.invalid:
                raise FormatRejected("format_match", f"malformed {declared} image: {own.invalid}", format=declared)
            if own is not None and own.signature_seen and own.truncated:
                raise FormatRejected("truncated", f"the data ends inside the {declared} structures",
                                     format=declared)
            self._mismatch(f"disk_format is {declared} but the data is {chosen.NAME}", [chosen])

    def _mismatch(self, detail: str, detected: list[Inspector]) -> None:
        if self.policy.require_match:
            raise FormatRejected("format_match", detail, format=self.policy.disk_format)
        self._warnings.append(detail)
        log.warning("image format mismatch allowed (require_image_format_match is off): %s", detail)

    def _safety(self, inspector: Inspector) -> None:
        failures = inspector.safety_failures()
        if not failures:
            return
        fatal = set(failures)
        if inspector.NAME == "gpt":
            fatal -= self.policy.gpt_nonfatal
            if self.policy.disk_format in ("aki", "ari"):
                fatal.discard("mbr")   # kernels and ramdisks may carry a deliberately odd MBR
        if not fatal:
            self._warnings.append(f"non-fatal {inspector.NAME} check failures: {failures}")
            log.warning("non-fatal %s safety check failures: %s", inspector.NAME, failures)
            return
        names = sorted(fatal)
        detail = "; ".join(f"{name}: {failures[name]}" for name in names)
        raise FormatRejected(",".join(names), detail, format=inspector.NAME)


def detect_stream(chunks: Iterable[bytes], disk_format: str | None = None, *,
                  require_match: bool = True) -> Verdict:
    """Judge an iterable of chunks (all of them are consumed) as an image declaring disk_format
    (default raw, which accepts any content that passes its safety checks)."""
    inspection = ImageInspection(InspectionPolicy(disk_format or "raw", require_match=require_match))
    for chunk in chunks:
        inspection.feed(chunk)
    return inspection.finish()


def detect_file(path: str, *, chunk_size: int = 64 * 1024) -> "FileDetection":
    """Detect a file's format, reading only as far as the inspectors need (plus the size).

    Unlike an upload, there is no declared format: the result names what the data is
    and lists every failed safety check of that format. Glance's iso+gpt rule applies;
    several other formats at once is a ``FormatRejected``."""
    import os

    detector = FormatDetector()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        while detector.hungry:
            wanted = detector.next_wanted()
            if wanted is None:
                wanted = max(detector.position, size - chunk_size)  # only a footer is wanted
            if wanted > detector.position:
                # Skip what nobody wants (a VHDX metadata table megabytes in).
                wanted = min(wanted, size)
                handle.seek(wanted)
                detector.position = wanted
            chunk = handle.read(chunk_size)
            if not chunk:
                break
            detector.feed(chunk)
        detector.position = size
    detector.finish()
    matches = detector.matches()
    names = {i.NAME for i in matches}
    if names == {"iso", "gpt"}:
        chosen = detector.inspectors["iso"]
    elif len(matches) > 1:
        raise FormatRejected("format_match", f"multiple formats detected: {','.join(sorted(names))}")
    else:
        chosen = matches[0] if matches else detector.inspectors["raw"]
    return FileDetection(chosen.NAME, chosen.virtual_size, chosen.safety_failures(), chosen)


@dataclass
class FileDetection:
    format: str
    virtual_size: int | None
    failures: dict[str, str]
    inspector: Inspector

    def safety_check(self) -> None:
        if self.failures:
            names = sorted(self.failures)
            raise FormatRejected(",".join(names), "; ".join(f"{n}: {self.failures[n]}" for n in names),
                                 format=self.format)


__all__ = ["FileDetection", "FormatDetector", "ImageInspection", "InspectionPolicy", "Verdict",
           "detect_file", "detect_stream"]
