"""Consumer-side acks for :class:`~rabbitry.amqp.link.Link`, folded when consecutive.

A consumer with prefetch 1000 acks deliveries 1, 2, 3, ... in order most of the time. Instead of
one frame each, a run of acks that starts right above the lowest unsettled tag becomes a single
``multiple=True`` ack of its last tag, sent at the end of the loop turn. That is exact: by then
every lower tag is settled, by the run or by a frame queued before it. Acks out of order, nacks
and rejects still go one frame each.

Behind a tag that stays unsettled (a slow handler), AMQP has no way to ack a range that does not
start at the bottom, so later acks go one frame each (still one write per turn) until it is
settled; then folding resumes at once. The owner makes sure no tag stays unsettled for good: a
consumer settles every delivery, and the link gives back one whose callback raised. Pure, no I/O.
"""

from __future__ import annotations

from rabbitry.amqp import wire


class AckFolder:
    """Settle bookkeeping for the delivery tags of one channel."""

    def __init__(self, channel: int) -> None:
        self._channel = channel
        self._upto = 0  # every tag <= _upto is settled
        # Tags settled above the lowest unsettled one, as runs: first tag -> last and back.
        # Behind a delivery that stays unsettled (a handler that hangs), later acks keep coming
        # in order and each frame goes alone, but they only extend one run: memory is per gap,
        # not per ack, for however long the gap lasts.
        self._starts: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._run = 0  # tag of the pending multiple ack, 0 when none

    @property
    def gaps(self) -> int:
        """How many runs of settled tags wait above an unsettled one."""
        return len(self._starts)

    def settled(self, tag: int) -> bool:
        """Record that ``tag`` is settled; True when it extends the run from the bottom."""
        if tag != self._upto + 1:
            self._add(tag)
            return False
        end = self._starts.pop(tag + 1, None)
        if end is not None:
            del self._ends[end]
            tag = end
        self._upto = tag
        return True

    def _add(self, tag: int) -> None:
        if tag <= self._upto:
            return  # settled already, by a multiple ack
        starts, ends = self._starts, self._ends
        first = last = tag
        below = ends.pop(tag - 1, None)
        if below is not None:
            del starts[below]
            first = below
        above = starts.pop(tag + 1, None)
        if above is not None:
            del ends[above]
            last = above
        starts[first] = last
        ends[last] = first

    def _settle_upto(self, tag: int) -> None:
        """Every tag <= ``tag`` is settled (a multiple ack)."""
        if tag <= self._upto:
            return
        for first in [first for first in self._starts if first <= tag + 1]:
            last = self._starts.pop(first)
            del self._ends[last]
            tag = max(tag, last)  # a run reaching past it is settled from the bottom now
        self._upto = tag

    def ack(self, tag: int, *, multiple: bool = False) -> bytes | None:
        """Record an ack; the frame to queue now, or None if it was folded into the run."""
        if multiple:
            self._settle_upto(tag)
            self._run = max(self._run, tag)
            return None
        if tag == self._upto + 1:
            self.settled(tag)
            self._run = tag
            return None
        self.settled(tag)
        return wire.encode_ack(self._channel, tag)

    def take_run(self) -> bytes | None:
        """The folded ack frame to send after everything already queued, if any."""
        if not self._run:
            return None
        frame = wire.encode_ack(self._channel, self._run, multiple=True)
        self._run = 0
        return frame
