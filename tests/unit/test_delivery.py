"""An agent's finished update is kept until the orchestrator acknowledges it, whatever the
broker's PUBACK said; it is sent again on reconnect, after a refusal and after silence."""

import itertools

import numpy as np
import pytest

from edge_agent.delivery import REFUSED_RETRY_S, UpdateDelivery
from edge_agent.outbox import Outbox
from ftte.wire import encode_update
from ftte.wire.control import UpdateAck, Verdict
from ftte.wire.messages import Update

SUCCESS, NO_SUBSCRIBERS, NOT_AUTHORIZED = 0x00, 0x10, 0x87
AFTER, MAX = 30.0, 120.0


def payload(update_id: str, assignment_id: str) -> bytes:
    delta = {"w": np.zeros(3, np.float32)}
    return encode_update(Update("dev-1", update_id, assignment_id, 0, 10, 0.5, 0, delta))


class Broker:
    """Records publishes in order; each returns the next message id, like paho."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def publish(self, data: bytes) -> int:
        self.sent.append((len(self.sent) + 1, data))
        return len(self.sent)

    def last_mid(self) -> int:
        return self.sent[-1][0]


def delivery(tmp_path, broker: Broker, now: float = 0.0) -> UpdateDelivery:
    return UpdateDelivery(Outbox(tmp_path / "outbox"), broker.publish, AFTER, MAX, now)


def test_an_update_stays_in_the_outbox_after_a_successful_puback_until_acknowledged(tmp_path):
    broker = Broker()
    d = delivery(tmp_path, broker)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    d.on_published(broker.last_mid(), SUCCESS, now=0.1)
    assert d.pending() == 1 and [p for p, _ in d.outbox.pending()] == ["u1"]
    settled = d.on_ack(UpdateAck("u1", Verdict.JOURNALED))
    assert settled is not None and settled.assignment_id == "dev-1.1"
    assert d.pending() == 0 and d.outbox.pending() == []
    assert d.acks == {"journaled": 1}


@pytest.mark.parametrize("code", [NO_SUBSCRIBERS, NOT_AUTHORIZED])
def test_a_puback_that_is_not_delivery_is_counted_and_retried_soon_with_backoff(tmp_path, code):
    broker = Broker()
    d = delivery(tmp_path, broker)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    d.on_published(broker.last_mid(), code, now=0.0)
    assert d.resend_due(now=REFUSED_RETRY_S - 0.01) == 0
    assert d.resend_due(now=REFUSED_RETRY_S) == 1
    d.on_published(broker.last_mid(), code, now=REFUSED_RETRY_S)
    # The second refusal in a row waits twice as long.
    assert d.resend_due(now=3 * REFUSED_RETRY_S - 0.01) == 0
    assert d.resend_due(now=3 * REFUSED_RETRY_S) == 1
    assert len(broker.sent) == 3 and d.pending() == 1
    assert sum(d.refused.values()) == 2 and d.resent == 2


def test_refusals_in_a_row_back_off_to_the_maximum_wait(tmp_path):
    broker = Broker()
    d = delivery(tmp_path, broker)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    sends, answered, now = [0.0], set(), 0.0
    while now < 600.0:
        if d.resend_due(now):
            sends.append(now)
        for mid, _ in broker.sent:
            if mid not in answered:  # nobody subscribes: every copy is discarded
                answered.add(mid)
                d.on_published(mid, NO_SUBSCRIBERS, now)
        now += 0.5
    waits = [b - a for a, b in itertools.pairwise(sends)]
    assert waits[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert max(waits) == MAX  # then every resend_max_s, not every second


def test_an_update_that_cannot_be_published_stays_and_is_tried_again(tmp_path):
    attempts = []

    def publish_too_large(data: bytes) -> int:
        attempts.append(data)
        raise ValueError("over the broker's packet size")

    d = UpdateDelivery(Outbox(tmp_path / "o"), publish_too_large, AFTER, MAX, 0.0)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    assert d.pending() == 1 and d.resend_due(now=AFTER) == 1
    assert len(attempts) == 2 and [u for u, _ in d.outbox.pending()] == ["u1"]


def test_without_an_acknowledgement_it_is_sent_again_the_wait_doubling_to_the_maximum(tmp_path):
    broker = Broker()
    d = delivery(tmp_path, broker)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    sends = []
    now = 0.0
    while now < 400.0:
        if broker.sent and d.resend_due(now):
            sends.append(now)
        d.on_published(broker.last_mid(), SUCCESS, now)  # the broker took each copy
        now += 1.0
    # 30 s, then 60, 120 (the maximum), 120, ...
    assert sends == [30.0, 90.0, 210.0, 330.0]
    assert all(data == broker.sent[0][1] for _, data in broker.sent)


def test_a_copy_awaiting_its_puback_is_left_to_paho_and_never_sent_twice(tmp_path):
    broker = Broker()
    d = delivery(tmp_path, broker)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    # Disconnected before the PUBACK: paho sends it again itself after reconnecting.
    d.on_connect(now=1.0)
    assert d.resend_due(now=1000.0) == 0
    assert len(broker.sent) == 1


def test_a_reconnect_sends_again_everything_the_broker_took_but_nobody_acknowledged(tmp_path):
    broker = Broker()
    d = delivery(tmp_path, broker)
    for i in (1, 2):
        d.submit(f"u{i}", f"dev-1.{i}", payload(f"u{i}", f"dev-1.{i}"), now=0.0)
        d.on_published(broker.last_mid(), SUCCESS, now=0.0)
    d.on_ack(UpdateAck("u1", Verdict.JOURNALED))
    d.on_connect(now=5.0)  # a broker restart from an older save may have lost u2
    assert [data for _, data in broker.sent[2:]] == [payload("u2", "dev-1.2")]


def test_an_assignment_sent_again_brings_its_held_answer_out_at_once(tmp_path):
    broker = Broker()
    d = delivery(tmp_path, broker)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    d.on_published(broker.last_mid(), NO_SUBSCRIBERS, now=0.0)  # the orchestrator was away
    d.submit("u2", "dev-1.2", payload("u2", "dev-1.2"), now=0.0)
    d.on_published(broker.last_mid(), SUCCESS, now=0.0)
    # Long before any backoff is over, the orchestrator sends dev-1.1 again: it is back.
    assert d.resend_answer("dev-1.1", now=0.5) == 1
    assert broker.sent[-1][1] == payload("u1", "dev-1.1") and len(broker.sent) == 3
    assert d.resend_answer("dev-1.9", now=0.5) == 0  # nothing held for that one


def test_unacknowledged_updates_survive_an_agent_restart_and_go_out_at_the_first_connect(
    tmp_path,
):
    broker = Broker()
    first = delivery(tmp_path, broker)
    first.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    first.on_published(broker.last_mid(), SUCCESS, now=0.0)
    again = Broker()
    restarted = delivery(tmp_path, again, now=100.0)
    assert restarted.held() == ["dev-1.1"] and restarted.pending() == 1
    restarted.on_connect(now=100.0)
    assert [data for _, data in again.sent] == [payload("u1", "dev-1.1")]


@pytest.mark.parametrize(
    "ack",
    [
        UpdateAck("u1", Verdict.JOURNALED),
        UpdateAck("u1", Verdict.DUPLICATE),
        UpdateAck("u1", Verdict.REFUSED, "unexpected"),
    ],
)
def test_every_verdict_settles_the_update(tmp_path, ack):
    broker = Broker()
    d = delivery(tmp_path, broker)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    assert d.on_ack(ack) is not None
    assert d.on_ack(ack) is None  # the acknowledgement of a second copy
    assert d.acks == {ack.verdict.value: 1, "unknown": 1}
    assert d.pending() == 0 and d.resend_due(now=1000.0) == 0


def test_a_puback_that_beats_publish_returning_is_still_applied(tmp_path):
    box: list[UpdateDelivery] = []

    def publish_answered_at_once(data: bytes) -> int:
        box[0].on_published(41, NO_SUBSCRIBERS, now=0.0)  # paho's thread was quicker
        return 41

    d = UpdateDelivery(Outbox(tmp_path / "o"), publish_answered_at_once, AFTER, MAX, 0.0)
    box.append(d)
    d.submit("u1", "dev-1.1", payload("u1", "dev-1.1"), now=0.0)
    assert d.refused == {"no_matching_subscribers": 1}
    assert d.resend_due(now=REFUSED_RETRY_S) == 1
