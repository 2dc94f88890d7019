"""The hand-off from an ingest worker to the orchestrator that owns the model.

A worker decodes a device's update with the one codec (bounded, total, finite values,
every tensor named and shaped as the model's) and hands the result on as one message on
``ftte.topics.ingest_topic``: either the update, or the refusal with the ids its header
named. The owner keeps the authority on everything that needs its state (the open
assignment and its slice, replay protection, staleness, the influence bound), so what
crosses is per update, never pre-summed: the owner's weights depend on the update's age and
on the buffer it joins, both known only at the owner.

Layout: ``MAGIC``, a 4-byte little-endian header length, the msgpack header, then every
delta and buffer tensor as raw little-endian float32, back to back in the header's order.
Chosen so that the owner's per-update work is O(tensors) with no pass over the values: no
zstd, no per-value dequantisation or finiteness check (the worker did those); one copy of
the tensor bytes into a buffer the arrays view (the strategies may write into deltas). The
price is size: an int8 update is about 4 times larger here than on the device's link
(float32 values, no compression), bytes that cross the loopback or the data centre's LAN,
not the devices' uplinks.

The owner trusts the topic's writers (the broker's ACL lets only the workers' accounts
publish it) for the values, not for the structure: ``decode_handoff`` is total over any
bytes, raising ``HandoffError``, so a broken worker costs a counted, set-aside message.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from ftte.errors import Rejected, RejectReason
from ftte.wire.messages import Evaluation, ProcessMemory, TensorDict, Update

MAGIC = b"FTH1"
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 20  # ids, scalars and up to 2 × 256 tensor entries fit many times
_F32 = np.dtype("<f4")


class HandoffError(ValueError):
    """Bytes on the hand-off topic that are not a hand-off this build writes."""


@dataclass(frozen=True)
class Handoff:
    """One device message as a worker handed it on."""

    worker: str  # which worker decoded it (its broker account)
    device: str  # the sender: the device whose update topic the broker delivered it on
    size: int  # bytes the device sent
    decoded: Update | Rejected
    # The device's bytes, for a payload that did not decode (the owner keeps a copy in its
    # quarantine) or was retained (the owner clears it); None otherwise.
    payload: bytes | None = None
    retained: bool = False


def encode_handoff(handoff: Handoff) -> bytes:
    """The message for ``ftte.topics.ingest_topic``."""
    header: dict[str, Any] = {
        "worker": handoff.worker,
        "device": handoff.device,
        "size": handoff.size,
        "retained": handoff.retained,
        "payload": handoff.payload,
    }
    chunks: list[bytes] = []
    decoded = handoff.decoded
    if isinstance(decoded, Rejected):
        header["refused"] = [
            decoded.reason.value,
            decoded.detail,
            decoded.device_id,
            decoded.assignment_id,
            decoded.update_id,
        ]
    else:
        header["update"] = _update_header(decoded)
        for tensors in (decoded.delta, decoded.buffers):
            chunks += [np.ascontiguousarray(v, dtype=_F32).tobytes() for v in tensors.values()]
    packed = msgpack.packb(header, use_bin_type=True)
    return b"".join([MAGIC, _LENGTH.pack(len(packed)), packed, *chunks])


def _update_header(u: Update) -> dict[str, Any]:
    evaluation = None
    if u.evaluation is not None:
        evaluation = [u.evaluation.samples, u.evaluation.metrics]
    process = None
    if u.process is not None:
        process = [u.process.rss_peak_bytes, u.process.rss_anon_bytes]
    return {
        "ids": [u.device_id, u.update_id, u.assignment_id],
        "base_version": u.base_version,
        "num_samples": u.num_samples,
        "loss": u.loss,
        "peak_mem_bytes": u.peak_mem_bytes,
        "eval": evaluation,
        "process": process,
        "delta": [[n, list(v.shape)] for n, v in u.delta.items()],
        "buffers": [[n, list(v.shape)] for n, v in u.buffers.items()],
    }


def decode_handoff(data: bytes) -> Handoff:
    """Read a hand-off; anything else raises ``HandoffError``."""
    try:
        return _decode(data)
    except HandoffError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise HandoffError(f"not a hand-off: {type(exc).__name__}: {exc}") from None


def _decode(data: bytes) -> Handoff:
    if data[: len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + _LENGTH.size:
        raise HandoffError("no hand-off magic")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    if length > MAX_HEADER_BYTES or start + length > len(data):
        raise HandoffError(f"header of {length} B does not fit")
    header = msgpack.unpackb(data[start : start + length], raw=False, strict_map_key=True)
    if not isinstance(header, dict):
        raise HandoffError("header is not a map")
    body = data[start + length :]
    decoded: Update | Rejected
    if "refused" in header:
        reason, detail, device_id, assignment_id, update_id = header["refused"]
        decoded = Rejected(
            RejectReason(reason),
            str(detail),
            device_id=device_id,
            assignment_id=assignment_id,
            update_id=update_id,
        )
        if body:
            raise HandoffError("a refusal carries no tensors")
    else:
        decoded = _update(header["update"], body)
    payload = header["payload"]
    if payload is not None and not isinstance(payload, bytes):
        raise HandoffError("payload is not bytes")
    return Handoff(
        worker=str(header["worker"]),
        device=str(header["device"]),
        size=int(header["size"]),
        decoded=decoded,
        payload=payload,
        retained=bool(header["retained"]),
    )


def _update(h: dict[str, Any], body: bytes) -> Update:
    # One writable copy of every value: the arrays below are views of it.
    values = bytearray(body)
    offset = 0
    tables: list[TensorDict] = []
    for entries in (h["delta"], h["buffers"]):
        tensors: TensorDict = {}
        for name, shape in entries:
            if not all(type(d) is int and d >= 0 for d in shape):
                raise HandoffError(f"tensor {name!r}: shape {shape!r}")
            count = math.prod(shape)
            end = offset + count * _F32.itemsize
            if end > len(values):
                raise HandoffError(f"tensor {name!r} runs past the body")
            tensors[str(name)] = np.frombuffer(values, _F32, count, offset).reshape(shape)
            offset = end
        tables.append(tensors)
    if offset != len(values):
        raise HandoffError(f"{len(values) - offset} B after the last tensor")
    device_id, update_id, assignment_id = (str(i) for i in h["ids"])
    evaluation = None
    if h["eval"] is not None:
        samples, metrics = h["eval"]
        evaluation = Evaluation(int(samples), {str(k): float(v) for k, v in metrics.items()})
    process = None
    if h["process"] is not None:
        process = ProcessMemory(int(h["process"][0]), int(h["process"][1]))
    return Update(
        device_id=device_id,
        update_id=update_id,
        assignment_id=assignment_id,
        base_version=int(h["base_version"]),
        num_samples=int(h["num_samples"]),
        loss=float(h["loss"]),
        peak_mem_bytes=int(h["peak_mem_bytes"]),
        delta=tables[0],
        evaluation=evaluation,
        process=process,
        buffers=tables[1],
    )
