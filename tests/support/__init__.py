"""What the tests share, one concern per module:

- ``harness``: config directories (``write_config``), credentials, request bodies,
  config edits, the fixtures' types;
- ``upstream``: the scripted fake upstream provider and the payloads it sends
  (OpenAI / Anthropic answers and streams, ``chunk``/``choice``/``sse`` builders);
- ``process``: ``gateway serve`` as a real subprocess;
- ``redis``: a private redis-server and reading budget counters, holds, the ledger;
- ``billing``: what a request costs and what the counters should read (``used``, ``cost``);
- ``sse``: reading the gateway's server-sent events; ``sdk``: an SDK stream's chunks;
- ``metrics``: Prometheus metrics; ``ports``: free ports; ``wait``: polling;
  ``clock``: fixed instants; ``strategies``: hypothesis strategies of the fuzz suites.

The fixtures themselves are in tests/conftest.py.
"""
