"""An image's locations as clients see and change them (Glance's ``show_multiple_locations``,
``show_image_direct_url``, PATCH ``/locations`` and the 2.17 ``/v2/images/{id}/locations``).

A location is shown as Glance's ``{"url": ..., "metadata": {..., "store": <store id>}}``. The
order of the list (and so ``direct_url``, its first entry) is ``location_strategy``'s:
``location_order`` keeps the catalogue's order, then puts stores of higher ``weight`` first
(Glance 33); ``store_type`` orders by ``[store_type_location_strategy] store_type_preference``.

A location a client adds must name data in one of this node's stores (``Store.owns``) whose
size the store can tell; ``file`` locations are refused as Glance refuses them (anyone could
point an image at any file of the store). Knows no HTTP: refusals are ``streamd.errors``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.parse
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..catalog.records import ImageRecord, Location
from ..config import Config
from ..errors import DoesNotExist, InvalidRequest, NotPermitted, QuotaExceeded, StateConflict, StoreFailure
from ..stores.registry import StoreRegistry

# Schemes Glance never accepts in a location a client sets (glance.common.store_utils).
RESTRICTED_SCHEMES = frozenset({"file", "filesystem", "swift+config"})
# Refusing to remove an image's only location (Glance raises it as its own Forbidden, which its
# API wraps as a webob detail: the edge renders it so).
LAST_LOCATION = "Cannot remove last location in the image."
# The URL schemes of each store type's locations.
SCHEMES_OF_TYPE = {"file": ("file",), "rbd": ("rbd",), "s3": ("s3", "s3+http", "s3+https"),
                   "swift": ("swift", "swift+http", "swift+https", "swift+config"), "http": ("http", "https")}
# A check of a web URL a client adds (the API's filtering rules): raises InvalidRequest.
UrlCheck = Callable[[str], None]


def ordered(locations: Iterable[Location], config: Config) -> list[Location]:
    """The image's active locations in ``location_strategy``'s order (stable)."""
    active = [loc for loc in locations if loc.status == "active"]
    types = {s.name: s.type for s in config.stores}
    weights = {s.name: int(getattr(s.options, "weight", 0) or 0) for s in config.stores}
    if config.default.location_strategy == "store_type":
        preference = list(config.store_type_location_strategy.store_type_preference)

        def rank(loc: Location) -> int:
            kind = types.get(loc.store)
            return preference.index(kind) if kind in preference else len(preference)

        return sorted(active, key=lambda loc: (rank(loc), -weights.get(loc.store, 0)))
    return sorted(active, key=lambda loc: -weights.get(loc.store, 0))


def location_view(location: Location) -> dict[str, Any]:
    """``{"url", "metadata"}`` with the store's id in the metadata, as glance_store records it."""
    metadata = dict(location.metadata)
    metadata["store"] = location.store
    return {"url": location.url, "metadata": metadata}


def locations_view(image: ImageRecord, config: Config) -> list[dict[str, Any]]:
    return [location_view(loc) for loc in ordered(image.locations, config)]


@dataclasses.dataclass(frozen=True)
class ResolvedLocation:
    """A URL found in one of this node's stores, with the size of the data there."""

    store: str
    url: str
    size: int


async def resolve(stores: StoreRegistry, config: Config, url: Any, *,
                  check_url: UrlCheck | None = None) -> ResolvedLocation:
    """The store holding ``url`` and the data's size; InvalidRequest("Invalid location") otherwise,
    as Glance answers every URL it cannot use (unknown or restricted scheme, no such data).
    ``check_url`` is run on web (http, https) URLs before anything is fetched."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest("Invalid location")
    scheme = urllib.parse.urlparse(url).scheme
    schemes = {scheme for s in config.stores for scheme in SCHEMES_OF_TYPE.get(s.type, ())}
    if scheme not in schemes or scheme in RESTRICTED_SCHEMES:
        raise InvalidRequest("Invalid location")
    if check_url is not None and scheme in SCHEMES_OF_TYPE["http"]:
        check_url(url)
    for store in stores:
        if scheme not in SCHEMES_OF_TYPE.get(store.type, ()) or not store.owns(url):
            continue
        try:
            reader = await store.reader(url)
        except (DoesNotExist, StoreFailure):
            raise InvalidRequest("Invalid location") from None
        try:
            size = reader.size
        finally:
            reader.close()
        if size <= 0:
            raise InvalidRequest("Invalid location")
        return ResolvedLocation(store.name, url, size)
    raise InvalidRequest("Invalid location")


def check_metadata(metadata: Any) -> dict[str, Any]:
    """glance_store's ``check_location_metadata``: a dict of strings, numbers, lists and dicts."""
    if not isinstance(metadata, dict):
        raise InvalidRequest("The location metadata must be a dict")
    _check_value(metadata)
    return dict(metadata)


def _check_value(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _check_value(item)
    elif isinstance(value, list):
        for item in value:
            _check_value(item)
    elif not isinstance(value, (str, int, float, bool)) and value is not None:
        raise InvalidRequest(f"The location metadata {value!r} is not a string, number, list or dict")


# -- validation_data ----------------------------------------------------------------------------

def merge_validation_data(image: ImageRecord, entries: Sequence[Mapping[str, Any]], hashing_algorithm: str,
                          ) -> dict[str, Any]:
    """Glance's ``_validate_validation_data``: the values of the entries' ``validation_data`` that
    the image does not have yet (checksum, os_hash_algo, os_hash_value); Conflict where they clash."""
    given: dict[str, Any] = {}
    for entry in entries:
        for key, value in (entry.get("validation_data") or {}).items():
            if given.get(key, value) != value:
                raise StateConflict(f"Conflicting values for {key}")
            given[key] = value
    new: dict[str, Any] = {}
    for key, value in given.items():
        current = getattr(image, key)
        if value == current:
            continue
        if current:
            raise StateConflict(f"{key} is already set with a different value")
        new[key] = value
    if not new:
        return {}
    if image.status != "queued":
        raise StateConflict(f"New value(s) for {', '.join(new)} may only be provided when image status is 'queued'")
    if "checksum" in new:
        try:
            checksum = bytes.fromhex(new["checksum"])
        except ValueError:
            raise StateConflict(f"checksum ({new['checksum']}) is not a valid hexadecimal value") from None
        if len(checksum) != 16:
            raise StateConflict(f"checksum ({new['checksum']}) is not the correct size for md5 (should be 16 bytes)")
    algo = new.get("os_hash_algo")
    if algo != hashing_algorithm:
        raise StateConflict(f"os_hash_algo must be {hashing_algorithm}, not {algo}")
    value = new.get("os_hash_value")
    try:
        digest = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        digest = None
    if digest is None:
        raise StateConflict(f"os_hash_value ({value}) is not a valid hexadecimal value")
    want = hashlib.new(algo).digest_size
    if len(digest) != want:
        raise StateConflict(f"os_hash_value ({value}) is not the correct size for {algo} (should be {want} bytes)")
    return new


def check_hashing_data(validation_data: Mapping[str, Any], hashing_algorithm: str) -> None:
    """Glance's ``_validate_hashing_data`` of the 2.17 add-location call (400s)."""
    if "os_hash_value" not in validation_data:
        return
    value = validation_data["os_hash_value"]
    try:
        digest = bytes.fromhex(value)
    except (ValueError, TypeError):
        raise InvalidRequest(f"os_hash_value ({value}) is not a valid hexadecimal value") from None
    algo = validation_data.get("os_hash_algo", hashing_algorithm)
    want = hashlib.new(algo).digest_size
    if len(digest) != want:
        raise InvalidRequest(f"os_hash_value: ({value}) is not the correct size for ({algo}) "
                             f"(should be ({want}) bytes)")


# -- positions --------------------------------------------------------------------------------

def position(pointer: str, count: int, *, allow_end: bool) -> int | None:
    """Glance's ``_get_locations_op_pos``: the index ``/locations/<pointer>`` names, or None."""
    pos = count if allow_end else count - 1
    if pointer.isdigit():
        pos = int(pointer)
    elif pointer != "-":
        return None
    if not (allow_end or 0 <= pos < count):
        return None
    return pos


# -- the location changes of one PATCH ------------------------------------------------------------

class LocationEdits:
    """The ``/locations`` changes of one JSON patch, applied in order to the image as the request
    found it (Glance's ``_do_add_locations``, ``_do_replace_locations``, ``_do_remove_locations``),
    saved with the rest of the patch by the caller: ``locations`` in their new order, ``values``
    (status, size, digests) for the image row, ``before`` to detect a concurrent change, and
    ``removed`` whose data goes once the change is saved."""

    def __init__(self, image: ImageRecord, config: Config, stores: StoreRegistry, *,
                 check_url: UrlCheck | None = None) -> None:
        self.config = config
        self.stores = stores
        self.check_url = check_url
        self.image = image
        self.before = ordered(image.locations, config)
        self.locations = list(self.before)
        self.values: dict[str, Any] = {}
        self.changed = False

    @property
    def status(self) -> str:
        return str(self.values.get("status", self.image.status))

    def _current(self, key: str) -> Any:
        return self.values.get(key, getattr(self.image, key))

    def _visible(self, op: str) -> None:
        if not self.config.default.show_multiple_locations:
            raise NotPermitted(f"It's not allowed to {op} locations if locations are invisible.")

    def _validation_data(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        now = dataclasses.replace(self.image, status=self.status,
                                  **{k: self._current(k) for k in ("checksum", "os_hash_algo", "os_hash_value")})
        return merge_validation_data(now, entries, self.config.default.hashing_algorithm)

    def _check_quota(self, count: int) -> None:
        limit = self.config.default.image_location_quota
        if limit >= 0 and count > limit:
            raise QuotaExceeded("The limit has been exceeded on the number of allowed image locations. "
                                f"Attempted: {count}, Maximum: {limit}")

    async def _new_location(self, entry: Mapping[str, Any]) -> Location:
        resolved = await resolve(self.stores, self.config, entry.get("url"), check_url=self.check_url)
        metadata = check_metadata(entry.get("metadata", {}))
        metadata.pop("store", None)  # the store id is the store's that holds the URL (glance_store sets it)
        size = self._current("size")
        if size and size != resolved.size:
            raise InvalidRequest(f"Invalid location: the data at {resolved.url} is {resolved.size} bytes, "
                                 f"the image {size}")
        if not size:
            self.values["size"] = resolved.size
        return Location(resolved.store, resolved.url, metadata)

    def _activate(self, validation: Mapping[str, Any]) -> None:
        """A queued image that got a location is active, with the validation data given."""
        if self.status != "queued":
            return
        if not (self.image.disk_format and self.image.container_format):
            raise InvalidRequest("Properties disk_format, container_format must be set prior to saving data.")
        self.values.update(validation)
        self.values["status"] = "active"

    async def add(self, pointer: str, entry: Mapping[str, Any]) -> None:
        self._visible("add")
        if self.status not in ("active", "queued"):
            raise StateConflict(f"It's not allowed to add locations if image status is {self.status}.")
        validation = self._validation_data([entry])
        pos = position(pointer, len(self.locations), allow_end=True)
        if pos is None:
            raise InvalidRequest("Invalid position for adding a location.")
        self._check_quota(len(self.locations) + 1)
        location = await self._new_location(entry)
        if any(_same(loc, location) for loc in self.locations):
            raise InvalidRequest(f"The location {location.url} already exists")
        self.locations.insert(pos, location)
        self._activate(validation)
        self.changed = True

    async def replace(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self._visible("update")
        if self.status not in ("active", "queued"):
            raise StateConflict(f"It's not allowed to replace locations if image status is {self.status}.")
        validation = self._validation_data(entries)
        new_urls = sorted(str(e.get("url")) for e in entries)
        old_urls = sorted(loc.url for loc in self.locations)
        if new_urls == old_urls:
            # The same URLs: only their metadata (and order) change, nothing is checked again.
            by_url = {loc.url: loc for loc in self.locations}
            new = [Location(by_url[str(e["url"])].store, str(e["url"]),
                            {k: v for k, v in check_metadata(e.get("metadata", {})).items() if k != "store"})
                   for e in entries]
        else:
            if self.locations:
                shown = [{"url": loc.url, "metadata": location_view(loc)["metadata"], "status": loc.status}
                         for loc in self.locations]
                raise InvalidRequest(f"Original locations is not empty: {shown}")
            self._check_quota(len(entries))
            new = []
            for entry in entries:
                location = await self._new_location(entry)
                if any(_same(loc, location) for loc in new):
                    raise InvalidRequest(f"The location {location.url} already exists")
                new.append(location)
        self.locations = new
        self._activate(validation)
        self.changed = True

    async def remove(self, pointer: str) -> None:
        self._visible("remove")
        if self.status != "active":
            raise StateConflict(f"It's not allowed to remove locations if image status is {self.status}.")
        if len(self.locations) == 1:
            raise NotPermitted(LAST_LOCATION)
        pos = position(pointer, len(self.locations), allow_end=False)
        if pos is None:
            raise InvalidRequest("Invalid position for removing a location.")
        del self.locations[pos]
        self.changed = True

    @property
    def added(self) -> list[Location]:
        """Locations of the new list that ``before`` did not have."""
        had = {(loc.store, loc.url) for loc in self.before}
        return [loc for loc in self.locations if (loc.store, loc.url) not in had]

    @property
    def size(self) -> int:
        return int(self._current("size") or 0)

    @property
    def removed(self) -> list[Location]:
        """Locations of ``before`` whose data no remaining location refers to."""
        kept = {(loc.store, loc.url) for loc in self.locations}
        return [loc for loc in self.before if (loc.store, loc.url) not in kept]

    async def check_removable(self) -> None:
        """StateConflict if the data of a removed location is in use (RBD clones)."""
        for loc in self.removed:
            store = self.stores.for_location(loc.store)
            if store is not None:
                await store.check_deletable(loc.url)

    async def delete_removed(self) -> None:
        """Once saved: the data of the removed locations goes, as Glance's ``locations.pop``."""
        for loc in self.removed:
            store = self.stores.for_location(loc.store)
            if store is not None:
                await store.delete(loc.url)


def _same(a: Location, b: Location) -> bool:
    return a.url == b.url and a.metadata == b.metadata
