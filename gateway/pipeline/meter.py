"""What one call is billed, pure: the README's billing rules in one place.

The relay and the unary path feed a meter what they see (deltas produced, choices
finished, usages reported); the meter alone decides what is billed: the truth the
upstream reported, or an estimate that is never below it. Plain values in, a
:class:`~gateway.usage.Usage` out, so the rules are unit-tested without a socket.
"""

from __future__ import annotations

from gateway.usage import Usage, at_least, estimate


class StreamMeter:
    """One streamed answer of ``choices`` choices, reserved ``output_ceiling`` output
    tokens (all choices together) on an ``input_bound``.

    - A usage is *final* when it comes with, or after, the last choice's finish_reason;
      before that it is a running count (vLLM's continuous_usage_stats, an early
      ``choices: []`` usage chunk): a floor, not the end of the estimate.
    - Every delta carrying generated text is at least one token: with the running
      count, a floor of what was produced. Past the ceiling (an upstream ignoring the
      clamp) the stream is to be cut: :attr:`over_ceiling`.
    - Without a final usage the output is billed at the ceiling (the visible text says
      nothing of reasoning tokens), never below the floor nor a running count.
    """

    __slots__ = (
        "_unfinished",
        "declined",
        "final",
        "input_bound",
        "output_ceiling",
        "produced_tokens",
        "reported",
    )

    def __init__(self, input_bound: int, output_ceiling: int, choices: int = 1) -> None:
        self.input_bound = input_bound
        self.output_ceiling = output_ceiling
        self.reported: Usage | None = None
        self.produced_tokens = 0  # the floor of what was produced
        self.final = False
        self.declined = False  # the provider refused before producing anything: no bill
        self._unfinished = set(range(max(choices, 1)))

    def produced(self) -> None:
        """A delta that carries generated text (content, refusal, reasoning, tool-call
        arguments: anything but the role)."""
        self.produced_tokens += 1

    def finish(self, index: object) -> None:
        """A choice's finish_reason (an index that is no integer names no choice)."""
        if type(index) is int:
            self._unfinished.discard(index)

    def report(self, usage: Usage) -> None:
        """A usage the upstream sent: final once every choice finished."""
        self.reported = usage
        if not self._unfinished:
            self.final = True
        if usage.output_tokens > self.produced_tokens:
            self.produced_tokens = usage.output_tokens

    @property
    def over_ceiling(self) -> bool:
        """Produced past the reserved output, and not finished: cut the stream here."""
        return self.produced_tokens > self.output_ceiling and not self.final

    @property
    def all_finished(self) -> bool:
        return not self._unfinished

    def usage(self) -> Usage:
        """What the call is billed (and the client told): the final usage, else the
        estimate (input bound, output ceiling or the floor past it), never below a
        running count."""
        reported = self.reported
        if self.final and reported is not None:
            return reported
        guess = estimate(self.input_bound, self.output_ceiling, self.produced_tokens)
        return guess if reported is None else at_least(guess, reported)

    def billed(self) -> tuple[Usage | None, str | None]:
        """The usage to bill (None: nothing was consumed) and, for an estimate, why
        (``output_limit``, ``stream_cut``, ``no_usage``; None for the truth)."""
        if self.final and self.reported is not None:
            return self.reported, None
        if self.declined:
            return None, None
        if self.over_ceiling:
            reason = "output_limit"
        elif self._unfinished:
            reason = "stream_cut"
        else:
            reason = "no_usage"
        return self.usage(), reason


def unary_billed(reported: Usage | None, input_bound: int, output_ceiling: int) -> Usage:
    """A unary answer's bill: the usage it reported (even past the ceiling: the truth),
    else the input bound and the output ceiling (no usage says nothing of reasoning)."""
    return reported if reported is not None else estimate(input_bound, output_ceiling)


def worst_case(input_bound: int, output_ceiling: int) -> Usage:
    """The bill of an answer nobody saw (a timeout after the request went out, a client
    gone while the provider worked): the whole reservation."""
    return estimate(input_bound, output_ceiling)
