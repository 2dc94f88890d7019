"""Delivery of finished updates: kept until the orchestrator says it has journaled them.

A PUBACK only says that the broker took a message. A broker killed before its next save,
or a queue that overflows while the orchestrator is away, still loses it (issue 13: 7 of
6,613 updates after ``kill -9``, 1,000 of 2,000 behind a full queue, every one with a
"success" PUBACK). So an update leaves the outbox only on the orchestrator's own
acknowledgement (``UpdateAck``, on the device's ack topic), and until then it is sent again:

- on every reconnect (what a broker crash lost comes back at once);
- ``resend_after_s`` after a send that brought no acknowledgement, the wait doubling up to
  ``resend_max_s`` (a queue that overflowed; an orchestrator away for hours does not get
  its queue filled with copies);
- soon after a PUBACK that was not delivery (0x10 "no matching subscribers": the
  orchestrator has no subscription yet, e.g. right after a broker restart; >= 0x80: refused),
  from ``REFUSED_RETRY_S`` doubling up to ``resend_max_s`` (an orchestrator gone for days
  is not asked every second). Refusals are counted by reason.

Resending is always safe: the orchestrator acknowledges a copy of an update it already
journaled as a duplicate and never applies it twice.

Clock-free and transport-free, like the engine: the owner passes ``now`` and a ``publish``
function returning the publish's message id (the agent's MQTT link, or the delivery
benchmark's protocol-level devices), and calls ``on_published`` with every PUBACK.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.outbox import Outbox
from ftte.errors import Rejected
from ftte.transport.mqtt import delivered, reason_name
from ftte.wire import decode_update
from ftte.wire.control import UpdateAck

log = logging.getLogger("ftte.agent.delivery")

REFUSED_RETRY_S = 1.0  # first retry after a PUBACK that was not delivery
_SENDING = -1  # an entry's mid while a publish of it is under way
_EARLY_PUBACKS = 1024  # PUBACKs kept for publishes not yet recorded (or not updates)


@dataclass
class PendingUpdate:
    """One finished update waiting for the orchestrator's acknowledgement."""

    update_id: str
    assignment_id: str
    payload: bytes
    due: float  # when to send it again if nothing settles it first
    wait_s: float  # the wait before the next resend (grows after each one)
    mid: int | None = None  # a publish the broker has not acknowledged yet (or is under way)
    refusals: int = 0  # PUBACKs in a row that were not delivery


class UpdateDelivery:
    """The outbox's entries, their publishes, PUBACKs and acknowledgements."""

    def __init__(
        self,
        outbox: Outbox,
        publish: Callable[[bytes], int],
        resend_after_s: float,
        resend_max_s: float,
        now: float,
    ) -> None:
        self.outbox = outbox
        self._publish = publish
        self.resend_after_s = resend_after_s
        self.resend_max_s = resend_max_s
        self._lock = threading.Lock()
        self._entries: dict[str, PendingUpdate] = {}
        self._by_mid: dict[int, str] = {}
        self._early: OrderedDict[int, int] = OrderedDict()  # mid -> PUBACK reason code
        self.sent = 0  # first sends
        self.resent = 0  # sends after the first: reconnects, no acknowledgement, refusals
        self.refused: Counter[str] = Counter()  # PUBACKs that were not delivery, by reason
        self.acks: Counter[str] = Counter()  # acknowledgements by verdict ("unknown": none held)
        for update_id, payload in outbox.pending():
            try:
                assignment_id = decode_update(payload).assignment_id
            except Rejected as exc:  # only a disk fault makes an atomically written entry bad
                log.error("outbox entry %s is unreadable (%s); left on disk", update_id, exc)
                continue
            # Sent again at the first connect, like everything else not yet acknowledged.
            self._entries[update_id] = PendingUpdate(
                update_id, assignment_id, payload, now, resend_after_s
            )

    def submit(self, update_id: str, assignment_id: str, payload: bytes, now: float) -> None:
        """Persist a finished update (fsync) and send it."""
        self.outbox.put(update_id, payload)
        entry = PendingUpdate(
            update_id, assignment_id, payload, now, self.resend_after_s, mid=_SENDING
        )
        with self._lock:
            self._entries[update_id] = entry
        self.sent += 1
        self._send(entry, now)

    def held(self) -> list[str]:
        """Assignment ids of the updates not yet acknowledged, oldest first."""
        with self._lock:
            return [e.assignment_id for e in self._entries.values()]

    def pending(self) -> int:
        """Updates not yet acknowledged by the orchestrator."""
        with self._lock:
            return len(self._entries)

    def on_ack(self, ack: UpdateAck) -> PendingUpdate | None:
        """The orchestrator settled an update: forget it (whatever the verdict)."""
        with self._lock:
            entry = self._entries.pop(ack.update_id, None)
            if entry is not None and entry.mid is not None:
                self._by_mid.pop(entry.mid, None)
        self.acks[ack.verdict.value if entry is not None else "unknown"] += 1
        if entry is not None:
            self.outbox.done(ack.update_id)
        return entry

    def on_published(self, mid: int, reason: int, now: float) -> None:
        """A PUBACK (paho's network thread): delivery only if ``delivered(reason)``."""
        with self._lock:
            update_id = self._by_mid.pop(mid, None)
            entry = self._entries.get(update_id) if update_id is not None else None
            if entry is None:
                self._early[mid] = reason
                while len(self._early) > _EARLY_PUBACKS:
                    self._early.popitem(last=False)
                return
            self._puback(entry, reason, now)

    def on_connect(self, now: float) -> None:
        """After a (re)connect: send everything the broker has not acknowledged since."""
        for entry in self._take(lambda _e: True, backoff=False):
            self._send(entry, now)

    def resend_answer(self, assignment_id: str, now: float) -> int:
        """The orchestrator sent this assignment again, so it lacks the answer held here:
        send that now, whatever the backoff says; return how many were sent."""
        answers = self._take(lambda e: e.assignment_id == assignment_id, backoff=False)
        for entry in answers:
            self._send(entry, now)
        return len(answers)

    def resend_due(self, now: float) -> int:
        """Send again what waited past its due time; return how many were sent."""
        due = self._take(lambda e: e.due <= now, backoff=True)
        for entry in due:
            self._send(entry, now)
        return len(due)

    def _take(self, wanted: Callable[[PendingUpdate], bool], backoff: bool) -> list[PendingUpdate]:
        """Entries to send again, marked as being sent so no other thread sends them too.

        A publish still waiting for its PUBACK is paho's: it resends that after a reconnect.
        """
        with self._lock:
            chosen = [e for e in self._entries.values() if e.mid is None and wanted(e)]
            for entry in chosen:
                entry.mid = _SENDING
                self.resent += 1
                if backoff and entry.refusals == 0:
                    entry.wait_s = min(2 * entry.wait_s, self.resend_max_s)
        return chosen

    def _send(self, entry: PendingUpdate, now: float) -> None:
        # Outside the lock: paho may take its own locks and call back into on_published.
        try:
            mid = self._publish(entry.payload)
        except ValueError as exc:  # e.g. over the broker's packet size: it stays, and is logged
            log.error("update %s could not be sent: %s", entry.update_id, exc)
            with self._lock:
                entry.mid = None
                entry.due = now + entry.wait_s
            return
        with self._lock:
            entry.due = now + entry.wait_s
            reason = self._early.pop(mid, None)
            if entry.update_id not in self._entries:
                return  # acknowledged meanwhile
            if reason is None:
                entry.mid = mid
                self._by_mid[mid] = entry.update_id
            else:
                self._puback(entry, reason, now)

    def _puback(self, entry: PendingUpdate, reason: int, now: float) -> None:
        """Under the lock: the broker's answer to ``entry``'s publish."""
        entry.mid = None
        if delivered(reason):
            entry.refusals = 0
            return
        # Not delivered: try again soon, sooner than a missing acknowledgement would.
        name = reason_name(reason)
        self.refused[name] += 1
        entry.refusals += 1
        retry = min(REFUSED_RETRY_S * 2 ** min(entry.refusals - 1, 30), self.resend_max_s)
        entry.due = now + retry
        log.warning(
            "update %s not delivered (%s); sent again in %.0f s", entry.update_id, name, retry
        )
