"""The control plane: API keys managed at runtime, kept in Redis so that every gateway
process sees a change at once (issue #16, first part).

    records.py   an API-managed key as stored, and every key's public view (pure)
    store.py     the Redis layout and the atomic, idempotent writes (one Lua script)
    service.py   the operations (create, list, get, revoke, rotate), HTTP and CLI alike
    cache.py     per process: keys by prefix for the auth path (1 s, invalidated by
                 pub/sub), and last-used times written at most once a minute per key
    routes.py    ``/v1/orgs/{org}/api-keys``: who may call, the JSON API
    cli.py       ``gateway keys list|revoke|rotate`` against the same Redis

Nothing here imports the HTTP middlewares' package at import time of ``records``,
``store`` or ``cache``: the auth middleware imports those.
"""
