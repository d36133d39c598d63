"""Unique ids for requests and reservations without a system call each.

``uuid.uuid4()`` reads 16 bytes from the kernel every time (three times per
request). Here: a random 64-bit prefix per process (drawn again in a forked child,
so workers never share one) and a counter. Ids are unique, not secret: nothing
authorises anything by knowing one.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count(int.from_bytes(os.urandom(4)))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """32 lowercase hex characters, like ``uuid4().hex``."""
    return f"{_prefix}{next(_counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"
