"""The metered pipeline a spending route runs, top to bottom: read and validate the
request (request), hold its worst case (hold), forward it and relay the answer while
the meter counts what was produced (meter), settle on the way out (hold)."""
