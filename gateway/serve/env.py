"""Environment variables the gateway's processes read, and pass each other."""

from __future__ import annotations

# The log level of every process (default INFO).
LOG_LEVEL_ENV = "GATEWAY_LOG_LEVEL"
# Set in workers of ``serve --workers N``: the supervisor's pid, which a worker signals
# to reload all of them (POST /admin/reload).
SUPERVISOR_PID_ENV = "GATEWAY_SUPERVISOR_PID"
# prometheus-client's multiprocess directory (the lower-case name is its old spelling).
METRICS_DIR_ENVS = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
