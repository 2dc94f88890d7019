"""The worker-to-owner hand-off: an update crosses exactly, a refusal keeps its ids, any
other bytes are refused with one error type; a worker checks tensors against the model's."""

import contextlib

import numpy as np
import pytest

from broker.fleet import DeviceEntry, Fleet, FleetSection
from broker.generate import acl_text
from ftte.errors import Rejected, RejectReason
from ftte.wire.messages import Evaluation, ProcessMemory, Update
from orchestrator.ingest.handoff import Handoff, HandoffError, decode_handoff, encode_handoff
from orchestrator.ingest.workers import IngestSettings, worker_account
from orchestrator.model_shapes import check_model_shapes


def update(**delta_shapes) -> Update:
    rng = np.random.default_rng(0)
    delta = {n: rng.normal(size=s).astype(np.float32) for n, s in delta_shapes.items()}
    return Update(
        device_id="dev-1",
        update_id="dev-1.a.1.u",
        assignment_id="dev-1.a.1",
        base_version=7,
        num_samples=32,
        loss=0.25,
        peak_mem_bytes=1000,
        delta=delta,
        evaluation=Evaluation(8, {"accuracy": 0.5}),
        process=ProcessMemory(10, 5),
        buffers={"1.running_var": np.ones(4, np.float32)},
    )


def test_an_update_crosses_bit_for_bit_into_writable_arrays():
    sent = update(**{"0.weight": (3, 4), "0.bias": (3,)})
    got = decode_handoff(encode_handoff(Handoff("w1", "dev-1", 123, sent)))
    assert (got.worker, got.device, got.size, got.payload) == ("w1", "dev-1", 123, None)
    u = got.decoded
    assert isinstance(u, Update)
    assert list(u.delta) == list(sent.delta) and list(u.buffers) == list(sent.buffers)
    for mine, theirs in ((u.delta, sent.delta), (u.buffers, sent.buffers)):
        for name, value in theirs.items():
            assert mine[name].dtype == np.float32 and np.array_equal(mine[name], value)
            mine[name] += 1.0  # the strategies may write into a delta
    assert (u.evaluation, u.process, u.base_version) == (sent.evaluation, sent.process, 7)


def test_a_refusal_keeps_its_reason_and_the_ids_its_header_named():
    refused = Rejected(RejectReason.NON_FINITE, "nan", device_id="d", update_id="u")
    got = decode_handoff(encode_handoff(Handoff("w1", "dev-1", 9, refused, b"raw")))
    assert isinstance(got.decoded, Rejected)
    assert (got.decoded.reason, got.decoded.device_id, got.decoded.update_id) == (
        RejectReason.NON_FINITE,
        "d",
        "u",
    )
    assert got.payload == b"raw"


def test_any_other_bytes_raise_one_error_type():
    good = encode_handoff(Handoff("w1", "dev-1", 1, update(**{"0.weight": (2, 2)})))
    for data in (b"", b"FTH1", good[:-1], good + b"x", b"XXXX" + good[4:]):
        with pytest.raises(HandoffError):
            decode_handoff(data)
    rng = np.random.default_rng(1)
    noise = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (5, 50, 500)]
    # Every seventh byte flipped in turn: decoded (a value changed) or refused, nothing else.
    flipped = [good[:n] + bytes([good[n] ^ 0xFF]) + good[n + 1 :] for n in range(0, len(good), 7)]
    for data in noise + flipped:
        with contextlib.suppress(HandoffError):
            decode_handoff(data)


def test_a_worker_refuses_tensors_the_model_does_not_have_or_shapes_it_does_not():
    shapes, buffers = {"0.weight": (3, 4), "0.bias": (3,)}, {"1.running_var": (4,)}
    check_model_shapes(update(**{"0.weight": (3, 4)}), shapes, buffers)
    with pytest.raises(Rejected) as wrong:
        check_model_shapes(update(**{"9.weight": (3, 4)}), shapes, buffers)
    assert wrong.value.reason is RejectReason.WRONG_SLICE and wrong.value.update_id
    with pytest.raises(Rejected) as shape:
        check_model_shapes(update(**{"0.bias": (4,)}), shapes, buffers)
    assert shape.value.reason is RejectReason.BAD_SHAPE


def test_worker_accounts_read_updates_and_write_only_the_hand_off_topic():
    fleet = Fleet(FleetSection("farm", ingest_workers=2), [DeviceEntry("dev-1", 10**6)])
    blocks = acl_text(fleet).split("\n\n")
    worker = next(b for b in blocks if b.startswith("user ftte_ingest_2"))
    assert worker.splitlines()[1:] == [
        "topic read ftte/v1/farm/dev/+/update",
        "topic write ftte/v1/farm/ingest",
    ]
    orchestrator = next(b for b in blocks if "user ftte_orchestrator" in b.splitlines())
    assert "topic read ftte/v1/farm/ingest" in orchestrator.splitlines()


def test_a_missing_worker_account_names_the_fleet_field_to_set(tmp_path):
    with pytest.raises(ValueError, match=r"ingest_workers = 2.*ftte broker init"):
        worker_account(IngestSettings(workers=2, accounts=tmp_path), 1)
