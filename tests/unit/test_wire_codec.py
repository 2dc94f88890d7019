"""The wire codec round-trips assignments and updates in every delta encoding."""

from dataclasses import replace

import msgpack
import numpy as np
import pytest
import zstandard

from ftte.errors import Rejected
from ftte.training import Optimizer
from ftte.wire import (
    ModelForms,
    decode_assignment,
    decode_update,
    encode_assignment,
    encode_update,
)
from ftte.wire.codec import encode_tensor
from ftte.wire.messages import Assignment, DeltaEncoding, ProcessMemory, TrainConfig, Update


def make_update(delta: dict[str, np.ndarray]) -> Update:
    return Update(
        device_id="dev-01",
        update_id="u-1",
        assignment_id="dev-01.1",
        base_version=3,
        num_samples=60,
        loss=0.25,
        peak_mem_bytes=123456,
        delta=delta,
    )


@pytest.fixture
def delta() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "8.weight": rng.normal(0, 0.01, (10, 32)).astype(np.float32),
        "8.bias": rng.normal(0, 0.01, (10,)).astype(np.float32),
    }


def test_float32_round_trip_is_exact(delta):
    got = decode_update(encode_update(make_update(delta), DeltaEncoding.FLOAT32))
    assert got.device_id == "dev-01" and got.base_version == 3 and got.num_samples == 60
    assert got.loss == 0.25 and got.peak_mem_bytes == 123456
    for name, value in delta.items():
        np.testing.assert_array_equal(got.delta[name], value)


def test_process_memory_round_trips(delta):
    process = ProcessMemory(rss_peak_bytes=52_000_000, rss_anon_bytes=21_000_000)
    update = Update(**{**make_update(delta).__dict__, "process": process})
    assert decode_update(encode_update(update)).process == process


def test_float16_round_trip_within_half_precision(delta):
    got = decode_update(encode_update(make_update(delta), DeltaEncoding.FLOAT16))
    for name, value in delta.items():
        np.testing.assert_allclose(got.delta[name], value, rtol=1e-3, atol=1e-6)


def test_int8_round_trip_within_half_a_step(delta):
    got = decode_update(encode_update(make_update(delta), DeltaEncoding.INT8))
    for name, value in delta.items():
        step = np.abs(value).max() / 127
        assert np.abs(got.delta[name] - value).max() <= step / 2 + 1e-9
        assert got.delta[name].dtype == np.float32


def test_int8_of_all_zero_tensor_stays_zero():
    zero = {"0.bias": np.zeros(5, np.float32)}
    got = decode_update(encode_update(make_update(zero), DeltaEncoding.INT8))
    np.testing.assert_array_equal(got.delta["0.bias"], zero["0.bias"])


def test_smaller_encodings_make_smaller_payloads(delta):
    sizes = [len(encode_update(make_update(delta), e)) for e in DeltaEncoding]
    assert sizes[0] > sizes[1] > sizes[2]  # float32 > float16 > int8


def test_assignment_round_trip():
    a = Assignment(
        job="demo",
        device_id="dev-02",
        assignment_id="dev-02.7",
        version=12,
        trainable=("8.weight", "8.bias"),
        tensors={"0.weight": np.arange(6, dtype=np.float32).reshape(2, 3)},
        train=TrainConfig(
            epochs=2,
            batch_size=16,
            lr=0.1,
            momentum=0.9,
            delta_encoding=DeltaEncoding.INT8,
            micro_batch=4,
        ),
    )
    got = decode_assignment(encode_assignment(a))
    assert got.trainable == a.trainable and got.version == 12 and got.train == a.train
    np.testing.assert_array_equal(got.tensors["0.weight"], a.tensors["0.weight"])


def _train_table(a: Assignment) -> dict:
    raw = zstandard.ZstdDecompressor().decompress(encode_assignment(a))
    return msgpack.unpackb(raw, raw=False)["train"]


def _with_train(a: Assignment, **changes) -> bytes:
    doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(encode_assignment(a)))
    doc["train"] |= changes
    packer = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True)
    return packer.compress(msgpack.packb(doc, use_bin_type=True))


def test_an_adam_assignment_round_trips_and_an_sgd_one_stays_as_older_agents_decode_it():
    sgd = Assignment("demo", "dev-02", "dev-02.7", 1, ("0.bias",), {})
    adam = replace(sgd, train=TrainConfig(optimizer=Optimizer.ADAM, lr=0.003))
    assert decode_assignment(encode_assignment(adam)).train == adam.train
    assert decode_assignment(encode_assignment(sgd)).train.optimizer is Optimizer.SGD
    assert "optimizer" not in _train_table(sgd)  # what wire version 1 agents know
    assert _train_table(adam)["optimizer"] == "adam"


def test_a_steps_cap_round_trips_and_an_uncapped_assignment_stays_as_older_agents_decode_it():
    uncapped = Assignment("demo", "dev-02", "dev-02.7", 1, ("0.bias",), {})
    capped = replace(uncapped, train=TrainConfig(steps=10))
    assert decode_assignment(encode_assignment(capped)).train.steps == 10
    assert "steps" not in _train_table(uncapped)
    assert decode_assignment(encode_assignment(uncapped)).train.steps == 0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"steps": -1}, "steps must be an integer"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam"),
        ({"optimizer": b"adam"}, "optimizer must be one of"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum is SGD's"),
    ],
)
def test_a_bad_steps_cap_an_unknown_optimizer_or_adam_with_momentum_are_rejected(changes, reason):
    a = Assignment("demo", "dev-02", "dev-02.7", 1, ("0.bias",), {})
    with pytest.raises(Rejected, match=reason):
        decode_assignment(_with_train(a, **changes))


def test_float16_model_values_halve_the_download_and_round_once():
    rng = np.random.default_rng(0)
    values = {"0.weight": rng.normal(size=(64, 64)).astype(np.float32)}
    a = Assignment("demo", "dev-02", "dev-02.8", 3, ("0.weight",), values)
    full = encode_assignment(a)
    half = encode_assignment(a, DeltaEncoding.FLOAT16)
    assert len(half) < 0.6 * len(full)
    got = decode_assignment(half).tensors["0.weight"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, values["0.weight"], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="int8"):
        encode_assignment(a, DeltaEncoding.INT8)


def test_values_beyond_float16_range_travel_as_float32():
    big = {"0.weight": np.array([1e5, -3.0], dtype=np.float32), "0.bias": np.ones(2, np.float32)}
    a = Assignment("demo", "dev-02", "dev-02.9", 3, ("0.weight",), big)
    got = decode_assignment(encode_assignment(a, DeltaEncoding.FLOAT16)).tensors
    np.testing.assert_array_equal(got["0.weight"], big["0.weight"])
    np.testing.assert_array_equal(got["0.bias"], big["0.bias"])


def test_assignments_sharing_converted_tensors_carry_their_own_version_s_values():
    forms = ModelForms()
    first = {"0.weight": np.array([1e5, -3.0], np.float32), "0.bias": np.ones(2, np.float32)}
    later = {"0.weight": np.array([0.5, 2.0], np.float32), "0.bias": np.zeros(2, np.float32)}
    sent = []
    for version, values, device in ((3, first, "dev-1"), (3, first, "dev-2"), (4, later, "dev-1")):
        a = Assignment("demo", device, f"{device}.{version}", version, ("0.weight",), values)
        shared = encode_assignment(a, DeltaEncoding.FLOAT16, forms=forms)
        assert shared == encode_assignment(a, DeltaEncoding.FLOAT16)  # the same bytes
        sent.append(decode_assignment(shared).tensors)
    for got, values in zip(sent, (first, first, later), strict=True):
        for name, value in values.items():
            np.testing.assert_array_equal(got[name], value)


def test_assignments_of_one_slice_share_packed_fields_yet_each_carries_its_own_ids():
    forms = ModelForms()
    values = {"0.weight": np.array([0.5, 2.0], np.float32), "0.bias": np.ones(2, np.float32)}
    train = TrainConfig(delta_encoding=DeltaEncoding.INT8)
    for device in ("dev-1", "dev-22"):
        a = Assignment("demo", device, f"{device}.7", 7, ("0.weight",), values, train)
        raw = zstandard.ZstdDecompressor().decompress(encode_assignment(a, forms=forms))
        # The map msgpack packs from the whole document, fields in their order of old.
        doc = msgpack.unpackb(raw, raw=False)
        assert list(doc)[:6] == ["v", "kind", "job", "device_id", "assignment_id", "version"]
        assert raw == msgpack.packb(doc, use_bin_type=True)
        assert (doc["device_id"], doc["assignment_id"]) == (device, f"{device}.7")


def test_an_update_from_its_delta_forms_is_the_same_bytes(delta):
    update = make_update(delta)
    forms = {n: encode_tensor(v, DeltaEncoding.INT8) for n, v in delta.items()}
    got = encode_update(update, DeltaEncoding.INT8, delta_forms=forms)
    assert got == encode_update(update, DeltaEncoding.INT8)


def test_an_assignment_decoded_without_values_has_its_slice_but_no_values_checked():
    values = {"0.weight": np.array([[np.nan, 1.0]], np.float32), "0.bias": np.ones(3, np.float32)}
    a = Assignment("demo", "dev-1", "dev-1.7", 7, ("0.weight",), values)
    payload = encode_assignment(a)
    with pytest.raises(Rejected, match="NaN"):
        decode_assignment(payload)
    got = decode_assignment(payload, values=False)
    assert {n: t.shape for n, t in got.tensors.items()} == {"0.weight": (1, 2), "0.bias": (3,)}
    assert got.assignment_id == "dev-1.7" and got.trainable == ("0.weight",)
    assert not got.tensors["0.bias"].any() and not got.tensors["0.bias"].flags.writeable


def test_decoded_arrays_are_writable(delta):
    got = decode_update(encode_update(make_update(delta)))
    got.delta["8.bias"] += 1.0
