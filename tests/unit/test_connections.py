"""gateway.http.connections: the connection counts (pure) and the fd bound."""

from __future__ import annotations

import resource

from gateway.http.connections import ConnectionGuard, fd_bounded


def test_guard_caps_the_process_and_each_address() -> None:
    guard = ConnectionGuard(max_total=3, max_per_address=2, header_timeout=1.0)
    assert guard.admit("a")
    assert guard.admit("a")
    assert not guard.admit("a")  # the address is full
    assert guard.admit("b")
    assert not guard.admit("c")  # the process is full
    guard.release("a")
    assert guard.admit("c")
    for address in ("a", "b", "c"):
        guard.release(address)
    assert (guard.total, guard.by_address, guard.refused) == (0, {}, 2)


def test_the_connection_cap_fits_the_fd_limit() -> None:
    got = fd_bounded(10_000_000)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 16 <= got <= max(soft // 2, 16)
    assert fd_bounded(16) == 16
