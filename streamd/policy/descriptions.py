"""What each of Glance's policy rules decides, in streamd's words (for ``streamd policy-sample``).

The names, check strings, scope types and operations are Glance 33's (``glance_rules.py``,
generated); these sentences are ours. Every rule of ``glance_rules.RULES`` has one (a test
checks it).
"""

from __future__ import annotations

DESCRIPTIONS: dict[str, str] = {
    # -- base rules other rules refer to
    "default": "The rule applied to a rule name that has no check of its own (policy_default_rule names it).",
    "context_is_admin": "Who counts as an administrator: sees every image and passes every admin-only check.",
    "service_api": "Who counts as another OpenStack service calling the Images API on a user's behalf.",
    # -- images
    "add_image": "Create an image record; its owner must be the caller's own project unless admin.",
    "delete_image": "Delete an image and its data.",
    "get_image": "Show one image. An image this rule refuses is answered as if it did not exist (404).",
    "get_images": "List images at all (each image listed must also pass get_image).",
    "modify_image": "Change an image's attributes, tags or properties; also needed to stage and import data.",
    "publicize_image": "Make an image public, at creation or by a change of visibility.",
    "communitize_image": "Make an image community-visible, at creation or by a change of visibility.",
    "download_image": "Read an image's data.",
    "download_from_store": "Read an image's data from a store the caller chooses.",
    "upload_image": "Write an image's data (PUT /file).",
    "delete_image_location": "Remove one of an image's locations, or its data from one store.",
    "get_image_location": "See an image's locations (checked before its data is removed from a store).",
    "set_image_location": "Replace or add locations through a JSON patch.",
    "add_image_location": "Add a location through the locations API (services and the image owner).",
    "fetch_image_location": "Read an image's locations through the locations API (services only).",
    "deactivate": "Deactivate an image: its data can no longer be downloaded by non-admins.",
    "reactivate": "Reactivate a deactivated image.",
    "copy_image": "Copy an active image's data into more stores (import method copy-image).",
    # -- members
    "add_member": "Share an image with another project.",
    "delete_member": "Stop sharing an image with a project.",
    "get_member": "Show one project's membership of an image.",
    "get_members": "List the projects an image is shared with.",
    "modify_member": "Accept or reject an image shared with the caller's project.",
    # -- cache
    "manage_image_cache": "Use the legacy cache routes (/v2/cached_images, /v2/queued_images).",
    "list_cached_nodes": "List the nodes whose cache holds an image.",
    "cache_image": "Queue an image for caching (PUT /v2/cache/{image_id}).",
    "cache_list": "List what is cached and queued (GET /v2/cache).",
    "cache_delete": "Remove an image, or all images, from the cache and its queue.",
    "cache_clean": "Remove stalled and invalid cache entries now.",
    "cache_prune": "Evict cached images until the cache fits its size limit now.",
    # -- tasks
    "get_task": "Show a task (registered for compatibility; access is decided by tasks_api_access).",
    "get_tasks": "List tasks (registered for compatibility; access is decided by tasks_api_access).",
    "add_task": "Create a task (registered for compatibility; access is decided by tasks_api_access).",
    "modify_task": "Delete a task (registered for compatibility; access is decided by tasks_api_access).",
    "tasks_api_access": "Use the /v2/tasks routes at all.",
    # -- discovery
    "stores_info_detail": "See each store's type and driver properties (GET /v2/info/stores/detail).",
    # -- metadata definitions
    "metadef_default": "The base rule of metadata definitions' legacy defaults.",
    "metadef_admin": "Who may change metadata definitions.",
}

_METADEF_WHAT = {
    "namespace": "a metadata definition namespace", "namespaces": "metadata definition namespaces",
    "object": "an object of a metadata definition namespace", "objects": "the objects of a namespace",
    "property": "a property of a metadata definition namespace", "properties": "the properties of a namespace",
    "tag": "a tag of a metadata definition namespace", "tags": "the tags of a namespace",
    "resource_type": "the resource types associated with a namespace",
    "resource_types": "the metadata definition resource types",
    "resource_type_association": "the association of a resource type with a namespace",
}
_METADEF_VERB = {"get": "Show", "list": "List", "add": "Create", "modify": "Change", "delete": "Delete",
                 "remove": "Delete"}


def describe(name: str) -> str:
    """The description of rule ``name``: ours, or for metadef rules made from the name's parts."""
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    verb, _, rest = name.partition("_metadef_")
    if rest in _METADEF_WHAT and verb in _METADEF_VERB:
        action = _METADEF_VERB[verb]
        if verb == "get" and rest.endswith("s") and rest != "resource_types":
            action = "List"
        return f"{action} {_METADEF_WHAT[rest]}."
    raise KeyError(name)
