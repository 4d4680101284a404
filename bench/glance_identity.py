"""Paste filter for the bench's Glance (no Keystone): a fixed admin identity.

Placed before Glance's ``context`` filter, it sets the headers Keystone's auth_token
middleware would set, when the client sent none. Our own code; uWSGI puts bench/ on
the path of the Glance venv so that paste finds ``glance_identity:filter_factory``.
"""

IDENTITY = {
    "HTTP_X_IDENTITY_STATUS": "Confirmed",
    "HTTP_X_PROJECT_ID": "00000000000000000000000000000001",
    "HTTP_X_USER_ID": "00000000000000000000000000000002",
    "HTTP_X_ROLES": "admin,member,reader",
}


def filter_factory(global_conf, **local_conf):
    def wrap(app):
        def identity(environ, start_response):
            for key, value in IDENTITY.items():
                environ.setdefault(key, value)
            return app(environ, start_response)
        return identity
    return wrap
