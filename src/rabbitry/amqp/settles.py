"""Consumer-side acks for :class:`~rabbitry.amqp.link.Link`, folded when consecutive.

A consumer with prefetch 1000 acks deliveries 1, 2, 3, ... in order most of the time. Instead of
one frame each, a run of acks that starts right above the lowest unsettled tag becomes a single
``multiple=True`` ack of its last tag, sent at the end of the loop turn. That is exact: by then
every lower tag is settled, by the run or by a frame queued before it. Acks out of order, nacks
and rejects still go one frame each. Pure, no I/O.
"""

from __future__ import annotations

from rabbitry.amqp import wire


class AckFolder:
    """Settle bookkeeping for the delivery tags of one channel."""

    def __init__(self, channel: int) -> None:
        self._channel = channel
        self._upto = 0  # every tag <= _upto is settled
        self._above: set[int] = set()  # settled out of order, all > _upto + 1
        self._run = 0  # tag of the pending multiple ack, 0 when none

    def settled(self, tag: int) -> bool:
        """Record that ``tag`` is settled; True when it extends the run from the bottom."""
        if tag != self._upto + 1:
            self._above.add(tag)
            return False
        above = self._above
        while tag + 1 in above:
            tag += 1
            above.discard(tag)
        self._upto = tag
        return True

    def ack(self, tag: int, *, multiple: bool = False) -> bytes | None:
        """Record an ack; the frame to queue now, or None if it was folded into the run."""
        if multiple:
            if tag > self._upto:
                self._above = {above for above in self._above if above > tag}
                self._upto = tag - 1
                self.settled(tag)
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
