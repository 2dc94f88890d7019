"""The one wire codec: msgpack inside zstd, versioned, tensors as dtype/shape/raw bytes.

Layout of the msgpack map (wire format version 1)::

    {"v": 1, "kind": "assign" | "update" | "release" | "combined", ...fields...,
     "tensors": {name: tensor}}
    tensor = {"dtype": "float32" | "float16" | "int8", "shape": [int, ...],
              "data": <raw little-endian bytes>, "scale": float (int8 only)}

An update of a model with batch norms also has ``"buffers": {name: tensor}``: the new values
of the running statistics its training moved, always float32 (they are a few values per
channel, and the decoder checks them against the buffers the slice moves, exactly).

Decoding treats the bytes as hostile and is bounded before allocation: the compressed size,
the zstd frame's declared content size (python-zstandard would otherwise allocate whatever
a header claims; a frame without a declared size is refused), no trailing data after the
frame, msgpack container and buffer lengths, the tensor count, the dtype whitelist, byte
length equal to prod(shape) × itemsize, shapes equal to the assigned slice, finite values.
Never pickle, never msgpack-numpy. Every refusal raises ``Rejected`` with its reason.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
import zstandard

from ftte.errors import Rejected, RejectReason
from ftte.metrics import METRIC_RANGES, MetricError, check_metric
from ftte.training import Optimizer
from ftte.wire.limits import WireLimits
from ftte.wire.messages import (
    Assignment,
    CombinedUpdate,
    DeltaEncoding,
    Evaluation,
    ProcessMemory,
    Release,
    SiteMember,
    TensorDict,
    TrainConfig,
    Update,
)

WIRE_VERSION = 1
_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
}
_ASSIGN_FIELDS = {"v", "kind", "job", "device_id", "assignment_id", "version", "trainable"}
_ASSIGN_FIELDS |= {"tensors", "train"}
_UPDATE_FIELDS = {"v", "kind", "device_id", "update_id", "assignment_id", "base_version"}
_UPDATE_FIELDS |= {"num_samples", "loss", "peak_mem_bytes", "tensors"}
_RELEASE_FIELDS = {"v", "kind", "job", "version", "model", "metrics", "created_unix_s"}
_RELEASE_FIELDS |= {"tensors"}
_COMBINED_FIELDS = {"v", "kind", "site", "combined_id", "base_version", "members", "loss"}
_COMBINED_FIELDS |= {"tensors", "weights"}
MAX_METRICS = len(METRIC_RANGES)
# Added after version 1 shipped: present in both or neither, so an older agent's updates
# (without them) still decode.
_PROCESS_FIELDS = {"rss_peak_bytes", "rss_anon_bytes"}
_TRAIN_FIELDS = {"epochs", "batch_size", "lr", "momentum", "delta_encoding", "micro_batch"}
_TRAIN_FIELDS |= {"clip_norm"}
# Added after version 1 shipped, and written only for a job that is not on SGD: an SGD
# assignment stays what an older agent decodes, and an older agent, which trains only SGD,
# refuses an Adam one rather than training it with the wrong optimizer.
_OPTIMIZER_FIELD = "optimizer"
# The same for the local steps cap, written only when set: an uncapped assignment stays
# what an older agent decodes, and an older agent refuses a capped one.
_STEPS_FIELD = "steps"
_OPTIONAL_TRAIN_FIELDS = {_OPTIMIZER_FIELD, _STEPS_FIELD}


# -- encoding ----------------------------------------------------------------------------


def encode_tensor(value: np.ndarray, encoding: DeltaEncoding) -> dict[str, Any]:
    """One tensor in its wire form; int8 is symmetric with a float32 scale per tensor."""
    arr = np.asarray(value, dtype=np.float32)
    shape = list(arr.shape)
    if encoding is DeltaEncoding.INT8:
        peak = float(np.max(np.abs(arr))) if arr.size else 0.0
        scale = peak / 127.0
        q = np.zeros(arr.shape, np.int8) if scale == 0 else np.rint(arr / scale).astype(np.int8)
        return {"dtype": "int8", "shape": shape, "data": q.tobytes(), "scale": scale}
    dtype = _DTYPES[encoding.value]
    return {"dtype": encoding.value, "shape": shape, "data": arr.astype(dtype).tobytes()}


def _compress(doc: dict[str, Any], level: int) -> bytes:
    return _compress_packed(msgpack.packb(doc, use_bin_type=True), level)


_local = threading.local()  # a zstd compressor per thread and level: not thread-safe, reused


def _compress_packed(raw: bytes, level: int) -> bytes:
    compressors: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "zstd", None)
    if compressors is None:
        compressors = _local.zstd = {}
    compressor = compressors.get(level)
    if compressor is None:
        # The checksum lets the decoder refuse a frame damaged in transit or storage (a bit
        # flip in the data otherwise decodes to different, still plausible numbers).
        compressor = compressors[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True
        )
    return compressor.compress(raw)


def _packed_entries(entries: dict[str, Any]) -> bytes:
    """Map entries as msgpack packs them, without the map's header: a map is its header
    followed by its keys and values, so entries packed apart concatenate to the same bytes."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return b"".join(pack(k) + pack(v) for k, v in entries.items())


# An assignment's map: these fields, then its ids, then the rest (version, trainable,
# train, tensors), the order its fields always had.
_ASSIGN_HEAD = ("v", "kind", "job")
_ASSIGN_IDS = ("device_id", "assignment_id")


class ModelForms:
    """The wire forms of the model's tensors at one version, shared by every assignment of
    that version (the server's model changes only when the version does): a fleet answering
    at once is sent the same tensors many times per version, each converted once; and each
    assignment's packed fields but its ids, shared by the assignments of one slice."""

    def __init__(self) -> None:
        self.version = -1
        self._forms: dict[tuple[str, DeltaEncoding], dict[str, Any]] = {}
        self._packed: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}

    def _at(self, version: int) -> None:
        if version != self.version:
            self._forms.clear()
            self._packed.clear()
            self.version = version

    def form(
        self, name: str, version: int, value: np.ndarray, wanted: DeltaEncoding
    ) -> dict[str, Any]:
        """Tensor ``name`` of model ``version`` in its wire form (``value`` if not cached)."""
        self._at(version)
        key = (name, wanted)
        form = self._forms.get(key)
        if form is None:
            form = self._forms[key] = encode_tensor(value, _value_encoding(value, wanted))
        return form

    def packed(self, a: Assignment, values: DeltaEncoding) -> tuple[bytes, bytes]:
        """Assignment ``a``'s msgpack bytes before its ids (map header included) and after
        them: the same for every assignment of one version, job, slice, tensor set and
        training settings, so packed once for all of them."""
        self._at(a.version)
        key = (a.job, a.trainable, tuple(a.tensors), a.train, values)
        parts = self._packed.get(key)
        if parts is None:
            doc = _assignment_doc(a, values, self)
            header = msgpack.Packer(use_bin_type=True).pack_map_header(len(doc))
            head = {k: doc.pop(k) for k in _ASSIGN_HEAD}
            for k in _ASSIGN_IDS:
                del doc[k]
            parts = self._packed[key] = (header + _packed_entries(head), _packed_entries(doc))
        return parts


def _assignment_doc(a: Assignment, values: DeltaEncoding, forms: ModelForms) -> dict[str, Any]:
    """The msgpack map of an assignment, its fields in wire order."""
    t = a.train
    train: dict[str, Any] = {
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "momentum": t.momentum,
        "delta_encoding": t.delta_encoding.value,
        "micro_batch": t.micro_batch,
        "clip_norm": t.clip_norm,
    }
    if t.optimizer is not Optimizer.SGD:
        train[_OPTIMIZER_FIELD] = t.optimizer.value
    if t.steps:
        train[_STEPS_FIELD] = t.steps
    return {
        "v": WIRE_VERSION,
        "kind": "assign",
        "job": a.job,
        "device_id": a.device_id,
        "assignment_id": a.assignment_id,
        "version": a.version,
        "trainable": list(a.trainable),
        "train": train,
        "tensors": {n: forms.form(n, a.version, v, values) for n, v in a.tensors.items()},
    }


def encode_assignment(
    a: Assignment,
    values: DeltaEncoding = DeltaEncoding.FLOAT32,
    level: int = 3,
    forms: ModelForms | None = None,
) -> bytes:
    """Serialise an assignment with model values as float32 or float16.

    float16 halves the download; the device trains from the rounded values and its delta is
    taken against them, so rounding never accumulates (each assignment carries absolute
    values). int8 would, and is refused. A tensor with values beyond float16's range is
    sent as float32. ``forms``: the model's tensors already converted at ``a.version``
    (the caller guarantees ``a.tensors`` hold the model's values at that version), and
    the packed fields of assignments of the same slice; the bytes are the same either way.
    """
    if values is DeltaEncoding.INT8:
        raise ValueError("model values travel as float32 or float16, not int8")
    if forms is None:
        forms = ModelForms()  # converted for this assignment only
    before, after = forms.packed(a, values)
    ids = _packed_entries({"device_id": a.device_id, "assignment_id": a.assignment_id})
    return _compress_packed(before + ids + after, level)


_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _value_encoding(value: np.ndarray, wanted: DeltaEncoding) -> DeltaEncoding:
    """float16 unless a value would overflow it (then that tensor travels as float32)."""
    if wanted is DeltaEncoding.FLOAT16 and value.size and np.abs(value).max() > _FLOAT16_MAX:
        return DeltaEncoding.FLOAT32
    return wanted


def encode_update(
    u: Update,
    encoding: DeltaEncoding = DeltaEncoding.FLOAT32,
    level: int = 3,
    delta_forms: Mapping[str, dict[str, Any]] | None = None,
) -> bytes:
    """Serialise an update, quantising its delta as ``encoding`` says. ``delta_forms``:
    the delta's tensors already in wire form (``encode_tensor(u.delta[n], encoding)`` for
    each), as a load generator sending the same values many times keeps them."""
    if delta_forms is None:
        delta_forms = {n: encode_tensor(v, encoding) for n, v in u.delta.items()}
    doc = {
        "v": WIRE_VERSION,
        "kind": "update",
        "device_id": u.device_id,
        "update_id": u.update_id,
        "assignment_id": u.assignment_id,
        "base_version": u.base_version,
        "num_samples": u.num_samples,
        "loss": float(u.loss),
        "peak_mem_bytes": u.peak_mem_bytes,
        "tensors": {n: delta_forms[n] for n in u.delta},
    }
    doc |= _evaluation_field(u.evaluation)
    if u.buffers:  # absent otherwise: an update of a model without buffers is as before
        doc["buffers"] = {n: encode_tensor(v, DeltaEncoding.FLOAT32) for n, v in u.buffers.items()}
    if u.process is not None:
        doc["rss_peak_bytes"] = u.process.rss_peak_bytes
        doc["rss_anon_bytes"] = u.process.rss_anon_bytes
    return _compress(doc, level)


def _evaluation_field(evaluation: Evaluation | None) -> dict[str, Any]:
    """The optional ``eval`` field of an update."""
    if evaluation is None:
        return {}
    metrics = {k: float(v) for k, v in evaluation.metrics.items()}
    return {"eval": {"samples": evaluation.samples, "metrics": metrics}}


# -- decoding ----------------------------------------------------------------------------


def _decompress(data: bytes, limits: WireLimits) -> bytes:
    if len(data) > limits.max_compressed_bytes:
        raise Rejected(
            RejectReason.OVERSIZED, f"{len(data)} B over {limits.max_compressed_bytes} B"
        )
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise Rejected(RejectReason.MALFORMED, f"not a zstd frame: {exc}") from None
    declared = params.content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        raise Rejected(RejectReason.MALFORMED, "zstd frame does not declare its content size")
    if declared > limits.max_decompressed_bytes:
        raise Rejected(
            RejectReason.OVERSIZED,
            f"declares {declared} B decompressed, over {limits.max_decompressed_bytes} B",
        )
    if not params.has_checksum:
        raise Rejected(RejectReason.MALFORMED, "zstd frame carries no checksum")
    # One-shot decompression into a buffer of exactly the declared size: a frame that holds
    # more than it declares fails at the buffer's end instead of growing the output (a
    # streaming decompressor would follow the real content, here up to 1 GiB for 32 KB).
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise Rejected(RejectReason.MALFORMED, f"corrupt zstd frame: {exc}") from None
    if len(raw) != declared:
        raise Rejected(RejectReason.MALFORMED, "content size differs from the declared size")
    return raw


def _unpack(data: bytes, limits: WireLimits) -> dict[str, Any]:
    raw = _decompress(data, limits)
    # Container limits stop a header declaring 2**31 entries before any allocation.
    containers = max(limits.max_tensors, 16)
    try:
        doc = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_string_bytes,
            max_bin_len=limits.max_decompressed_bytes,
            max_array_len=max(containers, limits.max_rank),
            max_map_len=containers,
            max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException) as exc:
        raise Rejected(RejectReason.MALFORMED, f"not a valid msgpack message: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejected(RejectReason.MALFORMED, "message is not a map")
    _check_keys(doc, "message")
    version = doc.get("v")
    if type(version) is not int or version != WIRE_VERSION:  # True and 1.0 are not 1 here
        raise Rejected(RejectReason.BAD_VERSION, f"wire version {version!r}")
    return doc


def _check_keys(table: dict[Any, Any], what: str) -> None:
    """Every key a string: bytes keys would reach sorts and comparisons with str ones."""
    if not all(isinstance(k, str) for k in table):
        raise Rejected(RejectReason.MALFORMED, f"{what} has a key that is not a string")


def _check_fields(doc: dict[str, Any], kind: str, expected: set[str]) -> None:
    if doc.get("kind") != kind:
        raise Rejected(RejectReason.MALFORMED, f"expected a {kind!r} message")
    if set(doc) != expected:
        missing, extra = sorted(expected - set(doc)), sorted(set(doc) - expected)
        raise Rejected(RejectReason.MALFORMED, f"fields missing {missing}, unexpected {extra}")


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise Rejected(RejectReason.MALFORMED, f"{name} must be a non-empty string")
    return value


MAX_INT = 2**53  # every integer field; beyond it a float (telemetry, averages) loses digits


def _int(value: Any, name: str, minimum: int) -> int:
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise Rejected(RejectReason.MALFORMED, f"{name} must be an integer in [{minimum}, 2**53]")
    return value


def _optimizer(value: Any) -> Optimizer:
    # Compared as str first: msgpack may hand over bytes or numbers, which StrEnum's
    # constructor would not all refuse with ValueError.
    known = {o.value: o for o in Optimizer}
    if not isinstance(value, str) or value not in known:
        raise Rejected(RejectReason.MALFORMED, "optimizer must be one of " + ", ".join(known))
    return known[value]


def _float(value: Any, name: str) -> float:
    if not isinstance(value, float | int) or isinstance(value, bool):
        raise Rejected(RejectReason.MALFORMED, f"{name} must be a number")
    if not math.isfinite(value):
        raise Rejected(RejectReason.NON_FINITE, f"{name} is {value}")
    return float(value)


_TENSOR_FIELDS = {
    name: frozenset({"dtype", "shape", "data"} | ({"scale"} if name == "int8" else set()))
    for name in _DTYPES
}


def _field_refusal(name: str, t: Any) -> Rejected:
    """Why ``t`` is not a tensor map with exactly its dtype's fields."""
    if not isinstance(t, dict) or not {"dtype", "shape", "data"} <= t.keys():
        return Rejected(RejectReason.MALFORMED, f"tensor {name!r} is not a dtype/shape/data map")
    if not isinstance(t["dtype"], str) or t["dtype"] not in _DTYPES:
        return Rejected(RejectReason.BAD_DTYPE, f"tensor {name!r}: dtype {t['dtype']!r}")
    fields = sorted(_TENSOR_FIELDS[t["dtype"]])
    return Rejected(RejectReason.MALFORMED, f"tensor {name!r}: fields must be {fields}")


def _decode_tensor(name: str, t: Any, limits: WireLimits, values: bool = True) -> np.ndarray:
    # One lookup and one comparison of the keys accept a well-formed map (the hot path:
    # about 8 tensors per update); anything else is told apart by _field_refusal.
    dtype_name = t.get("dtype") if isinstance(t, dict) else None
    fields = _TENSOR_FIELDS.get(dtype_name) if isinstance(dtype_name, str) else None
    if fields is None or t.keys() != fields:
        raise _field_refusal(name, t)
    dtype = _DTYPES[t["dtype"]]
    shape, data = t["shape"], t["data"]
    if not isinstance(shape, list) or len(shape) > limits.max_rank:
        raise Rejected(RejectReason.BAD_SHAPE, f"tensor {name!r}: shape {shape!r}")
    # Each dimension is bounded too: [0, 2**62] has a product of 0 bytes but no array has it.
    largest = limits.max_decompressed_bytes
    if not all(type(d) is int and 0 <= d <= largest for d in shape):
        raise Rejected(RejectReason.BAD_SHAPE, f"tensor {name!r}: shape {shape!r}")
    if not isinstance(data, bytes):
        raise Rejected(RejectReason.MALFORMED, f"tensor {name!r}: data is not bytes")
    if math.prod(shape) * dtype.itemsize != len(data):
        raise Rejected(
            RejectReason.BAD_SHAPE, f"tensor {name!r}: {len(data)} B do not fit shape {shape}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype_name == "int8":
        scale = np.float32(_float(t["scale"], f"tensor {name!r} scale"))
        if not values:
            return _unread(arr.shape)
        # The same values as np.multiply(arr, scale, dtype=float32), whose mixed-type loop
        # casts in buffered chunks: measured 1.4x slower than a cast and a float32 multiply.
        out = arr.astype(np.float32)
        out *= scale
        # |q| <= 128: a scale within float32's range / 128 makes every value finite, so the
        # pass over the values is needed only for an absurd scale.
        if abs(scale) <= _INT8_FINITE_SCALE:
            return out
    elif not values:
        return _unread(arr.shape)
    else:
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise Rejected(RejectReason.NON_FINITE, f"tensor {name!r} has NaN or infinity")
    return out


_INT8_FINITE_SCALE = np.float32(np.finfo(np.float32).max / 128)


def _unread(shape: tuple[int, ...]) -> np.ndarray:
    """A read-only float32 array of ``shape`` standing for values not decoded: zeros, with
    no memory behind them."""
    return np.broadcast_to(np.float32(0.0), shape)


def _decode_tensors(
    tensors: Any,
    limits: WireLimits,
    expected: Mapping[str, tuple[int, ...]] | None,
    values: bool = True,
) -> TensorDict:
    if not isinstance(tensors, dict):
        raise Rejected(RejectReason.MALFORMED, "tensors must be a map")
    _check_keys(tensors, "tensors")
    if len(tensors) > limits.max_tensors:
        raise Rejected(RejectReason.TOO_MANY_TENSORS, f"{len(tensors)} > {limits.max_tensors}")
    if expected is not None and set(tensors) != set(expected):
        raise Rejected(
            RejectReason.WRONG_SLICE,
            f"tensors {sorted(tensors)} differ from the assigned slice {sorted(expected)}",
        )
    out = {}
    for name, t in tensors.items():
        arr = _decode_tensor(name, t, limits, values)
        if expected is not None and tuple(arr.shape) != tuple(expected[name]):
            raise Rejected(
                RejectReason.BAD_SHAPE, f"tensor {name!r}: {arr.shape} != {expected[name]}"
            )
        out[name] = arr
    return out


def decode_assignment(
    data: bytes, limits: WireLimits | None = None, values: bool = True
) -> Assignment:
    """Parse and check an assignment from untrusted bytes. ``values`` false: every check
    but the model values' conversion and finiteness, and the tensors are read-only zeros
    of their shapes (for a load generator, which answers with the slice's shapes only, and a
    site gateway, which reads only which answer the orchestrator awaits)."""
    limits = limits or WireLimits()
    doc = _unpack(data, limits)
    _check_fields(doc, "assign", _ASSIGN_FIELDS)
    train = doc["train"]
    if not isinstance(train, dict) or set(train) - _OPTIONAL_TRAIN_FIELDS != _TRAIN_FIELDS:
        raise Rejected(RejectReason.MALFORMED, "train must hold " + ", ".join(_TRAIN_FIELDS))
    try:
        encoding = DeltaEncoding(train["delta_encoding"])
    except ValueError:
        raise Rejected(RejectReason.BAD_DTYPE, "unknown delta encoding") from None
    optimizer = _optimizer(train.get(_OPTIMIZER_FIELD, Optimizer.SGD.value))
    trainable = doc["trainable"]
    if not isinstance(trainable, list) or not trainable:
        raise Rejected(RejectReason.MALFORMED, "trainable must be a non-empty list")
    try:
        train_config = TrainConfig(
            epochs=_int(train["epochs"], "epochs", 1),
            batch_size=_int(train["batch_size"], "batch_size", 1),
            lr=_float(train["lr"], "lr"),
            optimizer=optimizer,
            momentum=_float(train["momentum"], "momentum"),
            delta_encoding=encoding,
            micro_batch=_int(train["micro_batch"], "micro_batch", 0),
            clip_norm=_float(train["clip_norm"], "clip_norm"),
            steps=_int(train.get(_STEPS_FIELD, 0), _STEPS_FIELD, 0),
        )
    except ValueError as exc:  # out-of-range settings
        raise Rejected(RejectReason.MALFORMED, f"train: {exc}") from None
    return Assignment(
        job=_str(doc["job"], "job"),
        device_id=_str(doc["device_id"], "device_id"),
        assignment_id=_str(doc["assignment_id"], "assignment_id"),
        version=_int(doc["version"], "version", 0),
        trainable=tuple(_str(n, "trainable name") for n in trainable),
        tensors=_decode_tensors(doc["tensors"], limits, None, values),
        train=train_config,
    )


def decode_update(
    data: bytes,
    limits: WireLimits | None = None,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    expected_buffers: Mapping[str, tuple[int, ...]] | None = None,
) -> Update:
    """Parse and check an update; ``expected_shapes`` is the assigned slice and
    ``expected_buffers`` the buffers its training moves, if known (exactly those must come)."""
    limits = limits or WireLimits()
    doc = _unpack(data, limits)
    reported = doc.keys() >= _PROCESS_FIELDS
    optional = (_PROCESS_FIELDS if reported else set()) | ({"eval", "buffers"} & doc.keys())
    _check_fields(doc, "update", _UPDATE_FIELDS | optional)
    device_id = _str(doc["device_id"], "device_id")
    assignment_id = _str(doc["assignment_id"], "assignment_id")
    update_id = _str(doc["update_id"], "update_id")
    try:
        return Update(
            device_id=device_id,
            update_id=update_id,
            assignment_id=assignment_id,
            base_version=_int(doc["base_version"], "base_version", 0),
            num_samples=_int(doc["num_samples"], "num_samples", 1),
            loss=_float(doc["loss"], "loss"),
            peak_mem_bytes=_int(doc["peak_mem_bytes"], "peak_mem_bytes", 0),
            delta=_decode_tensors(doc["tensors"], limits, expected_shapes),
            buffers=_decode_tensors(doc.get("buffers", {}), limits, expected_buffers),
            evaluation=_decode_evaluation(doc["eval"]) if "eval" in doc else None,
            process=ProcessMemory(
                rss_peak_bytes=_int(doc["rss_peak_bytes"], "rss_peak_bytes", 0),
                rss_anon_bytes=_int(doc["rss_anon_bytes"], "rss_anon_bytes", 0),
            )
            if reported
            else None,
        )
    except Rejected as exc:
        raise Rejected(
            exc.reason,
            exc.detail,
            device_id=device_id,
            assignment_id=assignment_id,
            update_id=update_id,
        ) from None


def _decode_evaluation(value: Any) -> Evaluation:
    if not isinstance(value, dict) or set(value) != {"samples", "metrics"}:
        raise Rejected(RejectReason.MALFORMED, "eval must hold samples and metrics")
    return Evaluation(_int(value["samples"], "eval samples", 1), _metrics(value["metrics"]))


def _metrics(value: Any) -> dict[str, float]:
    """Metrics of the fixed vocabulary (``ftte.metrics``), each value within its range."""
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise Rejected(RejectReason.MALFORMED, f"metrics must be a map of at most {MAX_METRICS}")
    _check_keys(value, "metrics")
    metrics = {}
    for name, number in value.items():
        number = _float(number, f"metric {_str(name, 'metric name')[:32]}")
        try:
            metrics[name] = check_metric(name, number)
        except MetricError as exc:
            raise Rejected(RejectReason.MALFORMED, str(exc)) from None
    return metrics


def encode_release(r: Release, level: int = 3) -> bytes:
    """Serialise a release: every tensor as float32, so a device holds exactly the values
    the orchestrator evaluated."""
    return _compress(
        {
            "v": WIRE_VERSION,
            "kind": "release",
            "job": r.job,
            "version": r.version,
            "model": r.model,
            "metrics": {k: float(v) for k, v in r.metrics.items()},
            "created_unix_s": float(r.created_unix_s),
            "tensors": {n: encode_tensor(v, DeltaEncoding.FLOAT32) for n, v in r.tensors.items()},
        },
        level,
    )


def decode_release(
    data: bytes,
    limits: WireLimits | None = None,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Release:
    """Parse and check a release; ``expected_shapes`` is the device's model, if known (a
    release must then carry exactly its tensors)."""
    limits = limits or WireLimits()
    doc = _unpack(data, limits)
    _check_fields(doc, "release", _RELEASE_FIELDS)
    metrics = _metrics(doc["metrics"])
    tensors = _decode_tensors(doc["tensors"], limits, expected_shapes)
    return Release(
        job=_str(doc["job"], "job"),
        version=_int(doc["version"], "version", 0),
        model=_str(doc["model"], "model"),
        metrics=metrics,
        tensors=tensors,
        created_unix_s=_float(doc["created_unix_s"], "created_unix_s"),
    )


def encode_combined(
    c: CombinedUpdate, encoding: DeltaEncoding = DeltaEncoding.FLOAT32, level: int = 3
) -> bytes:
    """Serialise a site's combined update, its sums quantised as ``encoding`` says.

    A gateway sends them as its devices send their deltas (int8 for ftte): as float32, a
    sum of a few int8 slices is larger than the slices were (measured in
    docs/benchmarks.md, "Site gateways"); int8 adds one rounding of at most 1/254 of the
    tensor's largest value, as a device's own encoding does.
    """
    return _compress(
        {
            "v": WIRE_VERSION,
            "kind": "combined",
            "site": c.site,
            "combined_id": c.combined_id,
            "base_version": c.base_version,
            "members": [
                [m.device_id, m.assignment_id, m.update_id, m.num_samples] for m in c.members
            ],
            "loss": float(c.loss),
            "tensors": {n: encode_tensor(v, encoding) for n, v in c.sums.items()},
            "weights": dict(c.weights),
        },
        level,
    )


def decode_combined(
    data: bytes,
    limits: WireLimits | None = None,
    model_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> CombinedUpdate:
    """Parse and check a site's combined update; ``model_shapes``, if known, is every
    tensor of the model (a combined update holds some of them, each of its shape).

    Members are at most the msgpack container bound (``max_tensors``), each named once;
    every tensor has a positive integer weight and no weight names a missing tensor.
    """
    limits = limits or WireLimits()
    doc = _unpack(data, limits)
    _check_fields(doc, "combined", _COMBINED_FIELDS)
    members = doc["members"]
    if not isinstance(members, list) or not members:
        raise Rejected(RejectReason.MALFORMED, "members must be a non-empty list")
    decoded = []
    for m in members:
        if not isinstance(m, list) or len(m) != 4:
            raise Rejected(RejectReason.MALFORMED, "a member is [device, assignment, update, n]")
        decoded.append(
            SiteMember(
                device_id=_str(m[0], "member device_id"),
                assignment_id=_str(m[1], "member assignment_id"),
                update_id=_str(m[2], "member update_id"),
                num_samples=_int(m[3], "member num_samples", 1),
            )
        )
    if len({m.device_id for m in decoded}) != len(decoded):
        raise Rejected(RejectReason.MALFORMED, "a device is a member twice")
    sums = _decode_tensors(doc["tensors"], limits, None)
    if not sums:
        raise Rejected(RejectReason.MALFORMED, "a combined update holds at least one tensor")
    for name, arr in sums.items():
        if model_shapes is not None and tuple(arr.shape) != model_shapes.get(name):
            raise Rejected(RejectReason.BAD_SHAPE, f"tensor {name!r} is not the model's")
    weights = doc["weights"]
    if not isinstance(weights, dict) or set(weights) != set(sums):
        raise Rejected(RejectReason.MALFORMED, "weights must name exactly the tensors")
    total = sum(m.num_samples for m in decoded)
    if total > MAX_INT:
        raise Rejected(RejectReason.MALFORMED, f"members' samples sum to {total}, over 2**53")
    return CombinedUpdate(
        site=_str(doc["site"], "site"),
        combined_id=_str(doc["combined_id"], "combined_id"),
        base_version=_int(doc["base_version"], "base_version", 0),
        members=tuple(decoded),
        sums=sums,
        weights={n: _int(w, f"weight of {n!r}", 1) for n, w in weights.items()},
        loss=_float(doc["loss"], "loss"),
    )
