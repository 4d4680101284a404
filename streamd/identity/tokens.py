"""Keystone v3 token documents (``GET /v3/auth/tokens``) read into what streamd uses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import InvalidToken


@dataclass(frozen=True, slots=True)
class ValidatedToken:
    """What Keystone said about one token: whose it is, its scope and roles, until when."""

    user_id: str
    user_domain_id: str | None
    # The scope: a project, a domain, the system ("all"), or none (an unscoped token).
    project_id: str | None
    project_domain_id: str | None
    domain_id: str | None
    system_scope: str | None
    # Role names, lower-cased as Glance's context middleware does.
    roles: frozenset[str] = field(default_factory=frozenset)
    # Seconds since the epoch (Keystone's expires_at).
    expires_at: float = 0.0

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def parse_token(document: Any) -> ValidatedToken:
    """The token of a v3 validation answer; ``InvalidToken`` when it is not one (as keystonemiddleware)."""
    try:
        token = document["token"]
        user = token["user"]
        project = token.get("project") or {}
        domain = token.get("domain") or {}
        system = token.get("system") or {}
        return ValidatedToken(
            user_id=str(user["id"]),
            user_domain_id=_opt_id((user.get("domain") or {}).get("id")),
            project_id=_opt_id(project.get("id")),
            project_domain_id=_opt_id((project.get("domain") or {}).get("id")),
            domain_id=_opt_id(domain.get("id")),
            # Keystone's only system scope is {"all": true}; keystonemiddleware says "all".
            system_scope="all" if system.get("all") else None,
            roles=frozenset(str(role["name"]).lower() for role in token.get("roles") or ()),
            expires_at=parse_time(token["expires_at"]),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InvalidToken(f"Keystone's token document is unreadable: {exc!r}") from exc


def parse_time(text: str) -> float:
    """Keystone's ISO 8601 times (``2025-01-01T00:00:00.000000Z``) as seconds since the epoch."""
    return datetime.fromisoformat(text).timestamp()


def _opt_id(value: Any) -> str | None:
    return None if value is None else str(value)
