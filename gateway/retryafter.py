"""An upstream's ``Retry-After``, pure: read as seconds, or not at all.

The header is the provider's (or whatever answers in its place) and is never relayed
as sent: it once carried the provider key. Accepted: a whole number of seconds
(ASCII digits only) or an HTTP date (IMF-fixdate, ``Sun, 06 Nov 1994 08:49:37 GMT``),
turned into the seconds from now (0 when past); either is capped at
RETRY_AFTER_CAP_SECONDS. Anything else (fractions, exponents, signs, lists, other
date formats, trailing text) is dropped: the gateway then uses its own value.
"""

from __future__ import annotations

import math
import re
from email.utils import parsedate_to_datetime

# The longest wait the gateway relays or honours from an upstream: longer hints are
# read as this (a client may retry sooner; the gateway's own retry limit is lower).
RETRY_AFTER_CAP_SECONDS = 60

_SECONDS = re.compile(r"[0-9]{1,10}")
_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def retry_after_seconds(value: str | None, now: float) -> int | None:
    """The seconds ``value`` (a Retry-After header) asks to wait, capped; None when it
    is absent or not one of the accepted forms. ``now``: the Unix time."""
    if value is None:
        return None
    value = value.strip(" \t")
    if _SECONDS.fullmatch(value):
        return min(int(value), RETRY_AFTER_CAP_SECONDS)
    if _IMF_FIXDATE.fullmatch(value):
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (ValueError, OverflowError):  # Feb 30, hour 25
            return None
        return min(max(math.ceil(when - now), 0), RETRY_AFTER_CAP_SECONDS)
    return None
