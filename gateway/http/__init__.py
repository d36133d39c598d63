"""The HTTP side: the aiohttp application, its routes and middlewares, and the
listener every request arrives on.

    app.py               the application and its routes table
    probes.py            GET /healthz, GET /readyz
    admin.py             POST /admin/reload (the operator token)
    middleware/          what crosses every route: errors (JSON bodies), observe
                         (request ids, access log, metrics), auth, inflight (caps)
    connections.py       connection caps (per process, per address), header deadline
    runner.py            the listener's run loop, with guarded connections
    malformed.py         JSON answers to requests that never reach the application
    metrics_listener.py  GET /metrics on its own address
"""
