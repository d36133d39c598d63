"""Serving: the processes of a running gateway and their life.

launch.py          what ``gateway serve`` does: ports checked, the embedded store
                   started (and stopped last), one worker or the supervisor
worker.py          one serving process (the app on the guarded listener)
supervisor.py      ``--workers N``: restarts, signals forwarded, workers die with it
lifecycle.py       a running app: startup hooks, reload, drain, shutdown
resources.py       the Redis client, the upstream HTTP session, the providers
embedded_redis.py  the redis-server started when no Redis URL is configured
ports.py           is a port free, before anything starts
env.py             the environment variables the processes pass each other
"""
