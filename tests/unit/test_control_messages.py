"""Control messages of delivery: the update acknowledgement, the birth's held assignments,
the job state's delivery counters, the ack topic and what a PUBACK reason code means."""

import json

import pytest

from ftte import topics
from ftte.errors import Rejected, RejectReason
from ftte.metrics import METRIC_RANGES
from ftte.transport.mqtt import BrokerDrops, delivered, reason_name
from ftte.wire.control import (
    MAX_CONTROL_BYTES,
    MAX_EXCLUDED_LISTED,
    MAX_HELD,
    MAX_REASON_CHARS,
    DeviceStatus,
    JobState,
    UpdateAck,
    Verdict,
    decode_ack,
    decode_job_state,
    decode_status,
)


@pytest.mark.parametrize(
    "ack",
    [
        UpdateAck("5f3a", Verdict.JOURNALED),
        UpdateAck("dev-1.7.u", Verdict.DUPLICATE),
        UpdateAck("x", Verdict.REFUSED, "too_stale"),
    ],
)
def test_an_acknowledgement_round_trips(ack):
    assert decode_ack(ack.encode()) == ack


@pytest.mark.parametrize(
    "doc",
    [
        {"update_id": "u", "verdict": "journaled", "reason": "too_stale"},  # reason, not refused
        {"update_id": "u", "verdict": "refused", "reason": ""},  # a refusal without reason
        {"update_id": "u", "verdict": "refused", "reason": "because"},  # unknown reason
        {"update_id": "u", "verdict": "lost", "reason": ""},
        {"update_id": "", "verdict": "journaled", "reason": ""},
        {"update_id": "u" * 257, "verdict": "journaled", "reason": ""},
        {"update_id": "\ud800", "verdict": "journaled", "reason": ""},  # not UTF-8
        {"update_id": 7, "verdict": "journaled", "reason": ""},
        {"update_id": "u", "verdict": "journaled"},
        {"update_id": "u", "verdict": "journaled", "reason": "", "extra": 1},
    ],
)
def test_a_malformed_acknowledgement_is_refused(doc):
    with pytest.raises(Rejected) as refused:
        decode_ack(json.dumps(doc).encode())
    assert refused.value.reason is RejectReason.MALFORMED


def test_a_birth_names_the_assignments_its_agent_holds():
    status = DeviceStatus("dev-1", 10**6, "pi", "1", 4, assignments=("dev-1.3", "dev-1.9"))
    assert decode_status(status.encode()) == status


def test_a_birth_without_assignments_is_from_an_agent_that_does_not_report_them():
    doc = json.loads(DeviceStatus("dev-1", 10**6, "pi", "1", 4).encode())
    assert "assignments" not in doc
    assert decode_status(json.dumps(doc).encode()).assignments is None


@pytest.mark.parametrize(
    "held", [["a"] * (MAX_HELD + 1), "dev-1.3", [3], [""], [["dev-1.3"]], None]
)
def test_a_birth_with_a_malformed_held_list_is_refused(held):
    doc = json.loads(DeviceStatus("dev-1", 10**6, "pi", "1", 4, ("x",)).encode())
    doc["assignments"] = held
    with pytest.raises(Rejected):
        decode_status(json.dumps(doc).encode())


def test_the_job_state_carries_delivery_counters_and_older_states_still_decode():
    state = JobState("j", "running", 1, {"accuracy": 0.5}, 0, 3, 9, {}, 1.0, {"ack_journaled": 9})
    assert decode_job_state(state.encode()) == state
    older = json.loads(state.encode())
    del older["delivery"]
    assert decode_job_state(json.dumps(older).encode()).delivery == {}


def test_the_ack_topic_is_the_devices_own_and_parses_back():
    topic = topics.ack_topic("farm", "pi-1")
    assert topic == "ftte/v1/farm/dev/pi-1/ack"
    assert topics.parse(topic) == topics.TopicRef("farm", "pi-1", "ack")


@pytest.mark.parametrize(
    ("code", "is_delivery", "name"),
    [
        (0x00, True, "success"),
        (0x10, False, "no_matching_subscribers"),
        (0x87, False, "not_authorized"),
        (0x97, False, "quota_exceeded"),
        (0x99, False, "payload_format_invalid"),
    ],
)
def test_a_puback_is_delivery_only_below_0x80_and_not_0x10(code, is_delivery, name):
    assert delivered(code) is is_delivery
    assert reason_name(code) == name


def test_the_brokers_drop_counter_becomes_increments_across_broker_restarts():
    drops = BrokerDrops()
    assert [drops.note(b"0"), drops.note(b"20"), drops.note(b"20"), drops.note(b"35")] == [
        0,
        20,
        0,
        15,
    ]
    assert drops.note(b"4") == 4  # a restarted broker counts from zero again
    assert drops.total == 39
    with pytest.raises(ValueError, match="unreadable"):
        drops.note(b"-1")


def test_the_job_state_names_excluded_devices_within_the_control_size_limit():
    listed = {f"pi-{i:04d}": "r" * MAX_REASON_CHARS for i in range(MAX_EXCLUDED_LISTED)}
    counters = {f"counter_{i}": 2**40 for i in range(20)}
    state = JobState(
        "j", "running", 1, {"accuracy": 0.5}, 0, 3, 9, counters, 1.0, counters, 500, listed
    )
    assert len(state.encode()) <= MAX_CONTROL_BYTES
    assert decode_job_state(state.encode()) == state


@pytest.mark.parametrize(
    "listed",
    [
        {f"pi-{i}": "why" for i in range(MAX_EXCLUDED_LISTED + 1)},
        {"pi-1": "r" * (MAX_REASON_CHARS + 1)},
        {"pi-1": 3},
        {"": "why"},
        ["pi-1"],
    ],
)
def test_a_job_state_with_a_malformed_excluded_list_is_refused(listed):
    doc = json.loads(JobState("j", "running", 1, {"accuracy": 0.5}, 0, 3, 9, {}, 1.0).encode())
    doc["excluded_devices"] = listed
    with pytest.raises(Rejected):
        decode_job_state(json.dumps(doc).encode())


def test_a_birth_names_the_job_of_the_model_it_holds_and_older_births_decode():
    status = DeviceStatus("dev-1", 10**6, "pi", "1", 4, ("a",), model_job="job-1")
    assert decode_status(status.encode()) == status
    doc = json.loads(status.encode())
    del doc["model_job"]
    assert decode_status(json.dumps(doc).encode()).model_job is None
    doc["model_job"] = ""
    with pytest.raises(Rejected):
        decode_status(json.dumps(doc).encode())


def test_the_job_state_carries_the_fleets_evaluation():
    fleet = {"accuracy": 0.8, "loss": 0.4, "version": 12, "devices": 5}
    state = JobState("j", "running", 1, {"accuracy": 0.5}, 0, 3, 9, {}, 1.0, fleet=fleet)
    assert decode_job_state(state.encode()).fleet == fleet
    doc = json.loads(state.encode())
    doc["fleet"] = {"accuracy": "high"}
    with pytest.raises(Rejected):
        decode_job_state(json.dumps(doc).encode())


def test_the_largest_job_state_every_metric_can_make_fits_and_decodes():
    metrics = {name: high for name, (_, high) in METRIC_RANGES.items()}
    fleet = metrics | {"version": 2**40, "devices": 10**6}
    listed = {f"pi-{i:04d}": "r" * MAX_REASON_CHARS for i in range(MAX_EXCLUDED_LISTED)}
    counters = {f"counter_{i}": 2**40 for i in range(16)}
    state = JobState(
        "j", "running", 1, metrics, 0, 3, 9, counters, 1.0, counters, 500, listed, fleet
    )
    assert len(state.encode()) <= MAX_CONTROL_BYTES
    assert decode_job_state(state.encode()) == state


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metrics", {"x" * 60: 0.5}),
        ("fleet", {"accuracy": 0.5, "tampered": 1.0}),
        ("fleet", {"accuracy": 2.0}),
        ("fleet", {"version": -1}),
        ("objective", "clustering"),
    ],
)
def test_a_job_state_with_a_metric_outside_the_vocabulary_or_its_range_is_refused(field, value):
    doc = json.loads(JobState("j", "running", 1, {}, 0, 3, 9, {}, 1.0).encode())
    doc[field] = value
    with pytest.raises(Rejected):
        decode_job_state(json.dumps(doc).encode())
