"""Who is asking: the identity a request runs under.

The API edge builds a ``RequestContext`` from the request (with auth_strategy
noauth from the X-Project-Id/X-User-Id/X-Roles headers or the configured default
identity; with keystone from the validated token, ``streamd.identity``) and the
catalogue decides what that caller may see and do from it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RequestContext:
    project_id: str | None
    user_id: str | None
    roles: frozenset[str] = field(default_factory=frozenset)
    # What a Keystone token adds (noauth leaves the defaults): the scope of the token
    # (``system_scope`` is "all" for a system-scoped token, project_id is then None), the
    # domains, and the service token that came with the user's, if any.
    system_scope: str | None = None
    domain_id: str | None = None
    user_domain_id: str | None = None
    project_domain_id: str | None = None
    service_user_id: str | None = None
    service_roles: frozenset[str] = field(default_factory=frozenset)
    # Glance's context.is_admin: the policy rule context_is_admin, decided once per request by the
    # API edge (streamd.policy). None until then, and for internal contexts: the admin role decides.
    policy_admin: bool | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the catalogue shows this caller everything (Glance's database-layer admin)."""
        return self.policy_admin if self.policy_admin is not None else "admin" in self.roles

    def owns(self, owner: str | None) -> bool:
        return owner is not None and owner == self.project_id

    @classmethod
    def admin(cls) -> "RequestContext":
        """An internal context for housekeeping that must see everything."""
        return cls(project_id=None, user_id=None, roles=frozenset({"admin"}))
