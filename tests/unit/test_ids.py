"""Request and reservation ids: unique, uuid4-shaped, and never shared by two workers."""

from __future__ import annotations

import os
import re

from gateway.ids import new_id


def test_ids_are_32_hex_characters_and_unique() -> None:
    ids = [new_id() for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_draws_its_own_prefix() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = new_id()
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child[:16] != mine[:16]
