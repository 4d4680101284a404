"""JSON schemas served at ``/v2/schemas/*``, built as Glance builds them.

glanceclient fetches these on nearly every call: it derives its CLI options
and client-side validation from the image schema, so the property names,
types and enums must be Glance's. The same schema validates request bodies.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
from aiohttp import web

from ..config import Config
from ..errors import InvalidRequest, DoesNotExist
from .keys import SERVICES
from .metadefs import metadef_schemas

_UUID_PATTERN = ("^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                 "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$")


def _nullable(kind: str) -> list[str]:
    return ["null", kind]


def image_base_properties(config: Config) -> dict[str, Any]:
    return {
        "id": {"type": "string", "description": "An identifier for the image", "pattern": _UUID_PATTERN},
        "name": {"type": _nullable("string"), "description": "Descriptive name for the image", "maxLength": 255},
        "status": {"type": "string", "readOnly": True, "description": "Status of the image",
                   "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing",
                            "pending_delete", "deactivated"]},
        "visibility": {"type": "string", "description": "Scope of image accessibility",
                       "enum": ["community", "public", "private", "shared"]},
        "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
        "os_hidden": {"type": "boolean",
                      "description": "If true, image will not appear in default image list response."},
        "checksum": {"type": _nullable("string"), "readOnly": True, "description": "md5 hash of image contents.",
                     "maxLength": 32},
        "os_hash_algo": {"type": _nullable("string"), "readOnly": True,
                         "description": "Algorithm to calculate the os_hash_value", "maxLength": 64},
        "os_hash_value": {"type": _nullable("string"), "readOnly": True,
                          "description": "Hexdigest of the image contents using the algorithm specified by "
                                         "the os_hash_algo", "maxLength": 128},
        "owner": {"type": _nullable("string"), "description": "Owner of the image", "maxLength": 255},
        "size": {"type": _nullable("integer"), "readOnly": True, "description": "Size of image file in bytes"},
        "virtual_size": {"type": _nullable("integer"), "readOnly": True,
                         "description": "Virtual size of image in bytes"},
        "container_format": {"type": _nullable("string"), "description": "Format of the container",
                             "enum": [None, *config.image_format.container_formats]},
        "disk_format": {"type": _nullable("string"), "description": "Format of the disk",
                        "enum": [None, *config.image_format.disk_formats]},
        "created_at": {"type": "string", "readOnly": True, "description": "Date and time of image registration"},
        "updated_at": {"type": "string", "readOnly": True,
                       "description": "Date and time of the last image modification"},
        "tags": {"type": "array", "description": "List of strings related to the image",
                 "items": {"type": "string", "maxLength": 255}},
        "direct_url": {"type": "string", "readOnly": True,
                       "description": "URL to access the image file kept in external store"},
        "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
        "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
        "self": {"type": "string", "readOnly": True, "description": "An image self url"},
        "file": {"type": "string", "readOnly": True, "description": "An image file url"},
        "stores": {"type": "string", "readOnly": True,
                   "description": "Store in which image data resides.  Only present when the operator has "
                                  "enabled multiple stores.  May be a comma-separated list of store identifiers."},
        "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
        "locations": {
            "type": "array",
            "items": {"type": "object",
                      "properties": {
                          "url": {"type": "string", "maxLength": 255},
                          "metadata": {"type": "object"},
                          "validation_data": {
                              "description": "Values to be used to populate the corresponding image properties. "
                                             "If the image status is not 'queued', values must exactly match "
                                             "those already contained in the image properties.",
                              "type": "object", "writeOnly": True, "additionalProperties": False,
                              "properties": {"checksum": {"type": "string", "minLength": 32, "maxLength": 32},
                                             "os_hash_algo": {"type": "string", "maxLength": 64},
                                             "os_hash_value": {"type": "string", "maxLength": 128}},
                              "required": ["os_hash_algo", "os_hash_value"]}},
                      "required": ["url", "metadata"]},
            "description": "A set of URLs to access the image file kept in external store"},
    }


# Glance ships these in etc/schema-image.json; glanceclient knows them as image options.
_CUSTOM_PROPERTIES: dict[str, Any] = {
    "kernel_id": {"type": _nullable("string"), "pattern": _UUID_PATTERN,
                  "description": "ID of image stored in Glance that should be used as the kernel when booting "
                                 "an AMI-style image."},
    "ramdisk_id": {"type": _nullable("string"), "pattern": _UUID_PATTERN,
                   "description": "ID of image stored in Glance that should be used as the ramdisk when booting "
                                  "an AMI-style image."},
    "instance_uuid": {"type": "string",
                      "description": "Metadata which can be used to record which instance this image is "
                                     "associated with. (Informational only, does not create an instance snapshot.)"},
    "architecture": {"type": "string", "description": "Operating system architecture"},
    "os_distro": {"type": "string", "description": "Common name of operating system distribution"},
    "os_version": {"type": "string", "description": "Operating system version as specified by the distributor."},
    "description": {"type": "string", "description": "A human-readable string describing this image."},
    "cinder_encryption_key_id": {"type": "string",
                                 "description": "Identifier in the OpenStack Key Management Service for the "
                                                "encryption key for the Block Storage Service"},
    "cinder_encryption_key_deletion_policy": {"type": "string", "enum": ["on_image_deletion", "do_not_delete"],
                                              "description": "When the Image Service deletes the key named by "
                                                             "cinder_encryption_key_id"},
}

_IMAGE_LINKS = [
    {"rel": "self", "href": "{self}"},
    {"rel": "enclosure", "href": "{file}"},
    {"rel": "describedby", "href": "{schema}"},
]

_MEMBER_PROPERTIES: dict[str, Any] = {
    "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
    "image_id": {"type": "string", "description": "An identifier for the image", "pattern": _UUID_PATTERN},
    "created_at": {"type": "string", "description": "Date and time of image member creation"},
    "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
    "status": {"type": "string", "description": "The status of this image member",
               "enum": ["pending", "accepted", "rejected"]},
    "schema": {"readOnly": True, "type": "string"},
}


def image_schema(config: Config) -> dict[str, Any]:
    properties = image_base_properties(config)
    for name, spec in _CUSTOM_PROPERTIES.items():
        properties[name] = dict(spec, is_base=False)
    return {"name": "image", "properties": properties, "additionalProperties": {"type": "string"},
            "links": copy.deepcopy(_IMAGE_LINKS)}


def _collection(name: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


def member_schema() -> dict[str, Any]:
    return {"name": "member", "properties": copy.deepcopy(_MEMBER_PROPERTIES), "additionalProperties": False}


# Glance's task schema (glance/api/v2/tasks.py ``_TASK_SCHEMA``), with the fields API 2.12 added
# (image_id, request_id, user_id). glanceclient's task-list/task-show validate every task against
# it (warlock), so the fields streamd may leave null are nullable here.
_TASK_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "pattern": _UUID_PATTERN, "description": "An identifier for the task"},
    "type": {"type": "string", "enum": ["import", "api_image_import", "location_import"],
             "description": "The type of task represented by this content"},
    "status": {"type": "string", "enum": ["pending", "processing", "success", "failure"],
               "description": "The current status of this task"},
    "input": {"type": _nullable("object"), "description": "The parameters required by task, JSON blob"},
    "result": {"type": _nullable("object"), "description": "The result of current task, JSON blob"},
    "owner": {"type": _nullable("string"), "description": "An identifier for the owner of this task"},
    "message": {"type": _nullable("string"), "description": "Human-readable informative message only included "
                                                            "when appropriate (usually on failure)"},
    "image_id": {"type": _nullable("string"), "description": "Image associated with the task"},
    "request_id": {"type": _nullable("string"), "description": "Request ID of the request that created the task"},
    "user_id": {"type": _nullable("string"), "description": "User associated with the task"},
    "expires_at": {"type": _nullable("string"),
                   "description": "Datetime when this resource would be subject to removal"},
    "created_at": {"type": "string", "description": "Datetime when this resource was created"},
    "updated_at": {"type": "string", "description": "Datetime when this resource was updated"},
    "self": {"type": "string"},
    "schema": {"type": "string"},
}


def task_schemas() -> dict[str, dict[str, Any]]:
    task = {"name": "task", "properties": copy.deepcopy(_TASK_PROPERTIES)}
    # The list shows tasks without input, result and message (Glance's partial task schema).
    partial = {"name": "task", "properties": {k: copy.deepcopy(v) for k, v in _TASK_PROPERTIES.items()
                                              if k not in ("input", "result", "message")}}
    return {"task": task, "tasks": _collection("tasks", partial)}


def _metadef_schemas() -> dict[str, dict[str, Any]]:
    """Glance 33's metadefs schemas, as it serves them (glanceclient builds its ``md-*`` options
    from them; the metadefs handlers validate bodies against the same documents)."""
    return {f"metadefs/{name}": schema for name, schema in metadef_schemas().items()}


def all_schemas(config: Config) -> dict[str, dict[str, Any]]:
    image = image_schema(config)
    member = member_schema()
    return {
        **_metadef_schemas(),
        **task_schemas(),
        "image": image,
        "images": _collection("images", image),
        "member": member,
        "members": {"name": "members",
                    "properties": {"members": {"type": "array", "items": member}, "schema": {"type": "string"}},
                    "links": [{"rel": "describedby", "href": "{schema}"}]},
    }


@functools.lru_cache(maxsize=8)
def _validator(config: Config) -> jsonschema.Draft4Validator:
    schema = image_schema(config)
    # is_base is Glance's annotation, not a JSON-schema keyword; drop it for validation.
    for spec in schema["properties"].values():
        spec.pop("is_base", None)
    return jsonschema.Draft4Validator(schema)


def validate_image(config: Config, document: dict[str, Any]) -> None:
    """Validate a whole or partial image document; 400 naming the first problem."""
    error = jsonschema.exceptions.best_match(_validator(config).iter_errors(document))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "image"
        raise InvalidRequest(f"Provided object does not match schema '{where}': {error.message}")


async def get_schema(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if request.match_info.get("kind"):
        name = f"{request.match_info['kind']}/{name}"
    schemas = all_schemas(request.app[SERVICES].config)
    if name not in schemas:
        raise DoesNotExist(f"No schema named {name}")
    return web.json_response(schemas[name])


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "/schemas/{name}", get_schema)
    app.router.add_get(prefix + "/schemas/{kind:metadefs}/{name}", get_schema)
