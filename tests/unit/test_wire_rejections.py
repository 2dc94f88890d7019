"""Every way the codec refuses hostile bytes, each with its named reason, in bounded memory."""

import contextlib
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest
import zstandard

from ftte.errors import Rejected, RejectReason
from ftte.wire import WireLimits, decode_assignment, decode_update, encode_update
from ftte.wire.codec import encode_tensor
from ftte.wire.messages import DeltaEncoding, Update

SLICE = {"8.bias": (10,)}


def update_doc(**overrides) -> dict:
    doc = {
        "v": 1,
        "kind": "update",
        "device_id": "dev-01",
        "update_id": "u-1",
        "assignment_id": "dev-01.1",
        "base_version": 0,
        "num_samples": 10,
        "loss": 0.5,
        "peak_mem_bytes": 1000,
        "tensors": {"8.bias": encode_tensor(np.ones(10, np.float32), DeltaEncoding.FLOAT32)},
    }
    doc.update(overrides)
    return doc


def pack(doc) -> bytes:
    raw = msgpack.packb(doc, use_bin_type=True)
    return zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(raw)


def reason_of(data: bytes, **kw) -> RejectReason:
    with pytest.raises(Rejected) as info:
        decode_update(data, **kw)
    return info.value.reason


def test_valid_document_decodes():
    assert decode_update(pack(update_doc()), expected_shapes=SLICE).num_samples == 10


def test_oversized_compressed_payload():
    data = pack(update_doc())
    assert reason_of(data, limits=WireLimits(max_compressed_bytes=len(data) - 1)) == (
        RejectReason.OVERSIZED
    )


def test_zstd_bomb_declaring_10_gb_is_refused_on_its_header_with_bounded_memory():
    # Frame header: magic, descriptor 0xE0 (8-byte content size, single segment), size.
    bomb = b"\x28\xb5\x2f\xfd" + b"\xe0" + struct.pack("<Q", 10 * 2**30) + b"\x01\x00\x00"
    tracemalloc.start()
    with pytest.raises(Rejected, match=f"declares {10 * 2**30} B decompressed") as info:
        decode_update(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.reason == RejectReason.OVERSIZED
    assert peak < 10 * 2**20


def test_zstd_frame_without_declared_size_is_refused():
    raw = msgpack.packb(update_doc(), use_bin_type=True)
    data = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert reason_of(data) == RejectReason.MALFORMED


def test_trailing_data_after_the_frame_is_refused():
    assert reason_of(pack(update_doc()) + b"extra") == RejectReason.MALFORMED


def test_not_zstd_is_malformed():
    assert reason_of(b"definitely not zstd") == RejectReason.MALFORMED


def test_msgpack_map_declaring_2_pow_31_entries_is_refused_on_its_header_with_bounded_memory():
    data = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(
        b"\xdf\x80\x00\x00\x00"
    )
    tracemalloc.start()
    with pytest.raises(Rejected, match=f"{2**31} exceeds max_map_len") as info:
        decode_update(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.reason == RejectReason.MALFORMED
    assert peak < 10 * 2**20


def test_not_msgpack_is_malformed():
    data = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(
        b"\xc1\xc1\xc1"
    )
    assert reason_of(data) == RejectReason.MALFORMED


def test_unknown_wire_version():
    assert reason_of(pack(update_doc(v=99))) == RejectReason.BAD_VERSION


def test_unexpected_field_is_malformed():
    assert reason_of(pack(update_doc(extra=1))) == RejectReason.MALFORMED


def test_an_update_without_process_memory_decodes_as_from_an_older_agent():
    assert decode_update(pack(update_doc())).process is None


def test_process_memory_decodes_when_both_fields_come():
    doc = update_doc(rss_peak_bytes=60_000_000, rss_anon_bytes=20_000_000)
    process = decode_update(pack(doc)).process
    assert process is not None
    assert (process.rss_peak_bytes, process.rss_anon_bytes) == (60_000_000, 20_000_000)


@pytest.mark.parametrize(
    "fields", [{"rss_peak_bytes": 1}, {"rss_peak_bytes": -1, "rss_anon_bytes": 1}]
)
def test_process_memory_alone_or_negative_is_malformed(fields):
    assert reason_of(pack(update_doc(**fields))) == RejectReason.MALFORMED


def test_missing_field_is_malformed():
    doc = update_doc()
    del doc["loss"]
    assert reason_of(pack(doc)) == RejectReason.MALFORMED


def test_too_many_tensors():
    tensors = {
        f"t{i}": encode_tensor(np.ones(1, np.float32), DeltaEncoding.FLOAT32) for i in range(5)
    }
    data = pack(update_doc(tensors=tensors))
    assert reason_of(data, limits=WireLimits(max_tensors=4)) == RejectReason.TOO_MANY_TENSORS


def test_unknown_dtype():
    t = {"dtype": "float64", "shape": [10], "data": np.ones(10).tobytes()}
    assert reason_of(pack(update_doc(tensors={"8.bias": t}))) == RejectReason.BAD_DTYPE


INT8 = {"dtype": "int8", "shape": [10], "data": bytes(10), "scale": 0.1}
FLOAT32 = {"dtype": "float32", "shape": [10], "data": bytes(40)}


@pytest.mark.parametrize(
    ("tensor", "reason"),
    [
        ([1, 2], RejectReason.MALFORMED),  # not a map
        ({k: v for k, v in FLOAT32.items() if k != "data"}, RejectReason.MALFORMED),
        ({k: v for k, v in INT8.items() if k != "scale"}, RejectReason.MALFORMED),
        (FLOAT32 | {"scale": 0.1}, RejectReason.MALFORMED),  # a scale only int8 has
        (FLOAT32 | {"extra": 1}, RejectReason.MALFORMED),
        (FLOAT32 | {"dtype": 7}, RejectReason.BAD_DTYPE),
        (FLOAT32 | {"dtype": b"float32"}, RejectReason.BAD_DTYPE),
        (
            {"dtype": "float64", "shape": [10], "data": bytes(80), "scale": 1.0},
            RejectReason.BAD_DTYPE,
        ),
    ],
)
def test_a_tensor_map_without_exactly_its_dtypes_fields_is_refused_for_the_first_fault(
    tensor, reason
):
    assert reason_of(pack(update_doc(tensors={"8.bias": tensor}))) == reason


def test_data_length_not_matching_shape():
    t = {"dtype": "float32", "shape": [11], "data": np.ones(10, np.float32).tobytes()}
    assert reason_of(pack(update_doc(tensors={"8.bias": t}))) == RejectReason.BAD_SHAPE


def test_shape_differing_from_the_slice():
    t = encode_tensor(np.ones((2, 5), np.float32), DeltaEncoding.FLOAT32)
    data = pack(update_doc(tensors={"8.bias": t}))
    assert reason_of(data, expected_shapes=SLICE) == RejectReason.BAD_SHAPE


def test_tensor_names_differing_from_the_slice():
    data = pack(update_doc())
    assert reason_of(data, expected_shapes={"8.weight": (10, 32)}) == RejectReason.WRONG_SLICE


@pytest.mark.parametrize("encoding", list(DeltaEncoding))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_delta_in_every_encoding(encoding, bad):
    delta = np.ones(10, np.float32)
    delta[3] = bad
    if encoding is DeltaEncoding.INT8:
        t = encode_tensor(np.ones(10, np.float32), encoding)
        t["scale"] = float(bad)
    else:
        t = {"dtype": encoding.value, "shape": [10], "data": delta.astype(encoding.value).tobytes()}
    assert reason_of(pack(update_doc(tensors={"8.bias": t}))) == RejectReason.NON_FINITE


def test_non_finite_loss():
    assert reason_of(pack(update_doc(loss=float("nan")))) == RejectReason.NON_FINITE


def test_non_positive_sample_count():
    assert reason_of(pack(update_doc(num_samples=0))) == RejectReason.MALFORMED


def test_assignment_bytes_are_not_an_update():
    with pytest.raises(Rejected) as info:
        decode_assignment(pack(update_doc()))
    assert info.value.reason == RejectReason.MALFORMED


def test_random_mutations_only_ever_raise_rejected():
    good = encode_update(
        Update("dev-01", "u-1", "dev-01.1", 0, 10, 0.5, 1000, {"8.bias": np.ones(10, np.float32)}),
        DeltaEncoding.INT8,
    )
    rng = np.random.default_rng(0)
    for _ in range(200):
        data = bytearray(good)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[pos] = rng.integers(0, 256)
        with contextlib.suppress(Rejected):
            decode_update(bytes(data), expected_shapes=SLICE)
