"""Decoding is total: for any bytes, every message kind decodes or raises ``Rejected``.

Property-based (hypothesis): structured mutations of valid messages (every field replaced by
any msgpack or JSON value, keys of any type, tensors of any dtype/shape/data), and raw bytes.
10,500 generated payloads per run (4,000 updates; 4,500 assignments or releases, each
decoded as both; 1,500 control messages, each decoded as status, as update acknowledgement
and as job state; 500 site gateways' combined updates); derandomized so CI is reproducible
(run with ``--hypothesis-seed=random`` locally to explore further). Refused updates change
nothing. The model has batch norms, so the fuzzed updates carry the ``buffers`` field (their
running statistics) as well as the parameter deltas.
"""

import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftte.errors import Rejected
from ftte.tasks import load_task
from ftte.wire import decode_assignment, decode_update, encode_assignment, encode_update
from ftte.wire.codec import decode_combined, decode_release, encode_combined, encode_release
from ftte.wire.control import (
    DeviceStatus,
    JobState,
    UpdateAck,
    Verdict,
    decode_ack,
    decode_job_state,
    decode_status,
)
from ftte.wire.messages import Assignment, CombinedUpdate, Release, SiteMember
from orchestrator.presets import make_server
from orchestrator.server import TrainingServer

pytestmark = pytest.mark.slow  # ~1 min of 10,000 payloads: in `make test`, not the fast tier

FUZZ = settings(
    max_examples=3000,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.binary(max_size=48)
)


def nested(scalars: st.SearchStrategy, keys: st.SearchStrategy) -> st.SearchStrategy:
    """Scalars, or lists and maps of them two levels deep (deeper nesting is a case of its
    own: ``deep``). Spelled out rather than ``st.recursive``, which generated half as fast."""

    def level(inner: st.SearchStrategy) -> st.SearchStrategy:
        return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4)

    return scalars | level(scalars) | level(scalars | level(scalars))


ANY = nested(SCALARS, st.text(max_size=8) | st.binary(max_size=8))
TENSOR = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["float32", "float16", "int8", "float64", "<f4"]) | ANY,
        "shape": st.lists(
            st.integers(min_value=-1, max_value=2**63) | st.sampled_from([0, 1, 10]), max_size=9
        )
        | ANY,
        "data": st.binary(max_size=64) | ANY,
    },
    optional={"scale": ANY | st.floats()},
)


def open_server(task: str) -> tuple[TrainingServer, Assignment]:
    """An ftte server of ``task`` with dev-0 registered and its first assignment open."""
    server = make_server("ftte", load_task(task, num_devices=2, seed=0))
    server.register("dev-0", server.full_model_peak())
    (assignment,) = server.dispatch(np.random.default_rng(0), now=0.0)
    return server, assignment


# The model with batch norms, so updates carry the ``buffers`` field and it is fuzzed too.
SERVER, ASSIGNMENT = open_server("digits_bn")
TASK = SERVER.task
SLICE = {n: SERVER.shapes[n] for n in ASSIGNMENT.trainable}
MOVED = {n: SERVER.shapes[n] for n in TASK.model.updated_buffers(ASSIGNMENT.trainable)}
assert MOVED, "the slice must move batch-norm statistics for the buffers field to be fuzzed"
VALID_UPDATE = msgpack.unpackb(
    zstandard.ZstdDecompressor().decompress(
        encode_update(
            ASSIGNMENT.answer(
                {n: np.zeros(s, np.float32) for n, s in SLICE.items()},
                10,
                0.5,
                1000,
                buffers={n: np.ones(s, np.float32) for n, s in MOVED.items()},
            )
        )
    ),
    raw=False,
)
VALID_ASSIGNMENT = msgpack.unpackb(
    zstandard.ZstdDecompressor().decompress(encode_assignment(ASSIGNMENT)), raw=False
)
RELEASE = Release("job", 1, "digits", {"accuracy": 0.5}, SERVER.params, 1e9)
VALID_RELEASE = msgpack.unpackb(
    zstandard.ZstdDecompressor().decompress(encode_release(RELEASE)), raw=False
)


def pack(doc) -> bytes:
    raw = msgpack.packb(doc, use_bin_type=True)
    return zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(raw)


def deep(depth: int) -> bytes:
    """A frame holding ``depth`` nested one-element msgpack arrays (a packer refuses to
    write them), to check that decoding is bounded in depth, not just in size."""
    return zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(
        b"\x91" * depth + b"\xc0"
    )


def mutated(valid: dict) -> st.SearchStrategy[dict]:
    """The valid document with some fields replaced, removed or added, keys of any type."""
    fields = sorted(valid)
    return st.builds(
        lambda replace, drop, extra: {
            **{k: v for k, v in valid.items() if k not in drop},
            **replace,
            **extra,
        },
        st.dictionaries(st.sampled_from(fields), ANY, max_size=3),
        st.sets(st.sampled_from(fields), max_size=2),
        st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), ANY, max_size=2),
    )


UPDATE_DOCS = (
    mutated(VALID_UPDATE)
    | st.builds(
        lambda tensors: {**VALID_UPDATE, "tensors": tensors},
        st.dictionaries(st.sampled_from(sorted(SLICE)) | st.binary(max_size=6), TENSOR, max_size=3),
    )
    | st.builds(
        lambda buffers: {**VALID_UPDATE, "buffers": buffers},
        st.dictionaries(st.sampled_from(sorted(MOVED)) | st.binary(max_size=6), TENSOR, max_size=3),
    )
)
PAYLOADS = st.one_of(
    UPDATE_DOCS.map(pack),
    st.binary(max_size=256),
    st.binary(max_size=64).map(lambda b: b"\x28\xb5\x2f\xfd" + b),  # zstd magic, then noise
    ANY.map(pack),
    st.integers(min_value=1, max_value=3000).map(deep),
)


def decodes_or_is_rejected(decode, payload: bytes) -> bool:
    try:
        decode(payload)
    except Rejected:
        return False
    return True


INITIAL = SERVER.state_dict()
BEFORE = {n: a.copy() for n, a in SERVER.params.items()}


def model_changed(server: TrainingServer = SERVER, before: dict = BEFORE) -> bool:
    moved = any(not np.array_equal(server.params[n], v) for n, v in before.items())
    return moved or server.version != 0 or server.accepted != 0 or bool(server.strategy.buffered())


def test_the_unmutated_update_with_buffers_is_accepted():
    # Without this the mutations below could all be refused for a reason unrelated to them.
    outcome = SERVER.ingest("dev-0", pack(VALID_UPDATE))
    assert outcome.accepted and SERVER.strategy.buffered()
    SERVER.load_state_dict(INITIAL, now=0.0)


@settings(FUZZ, max_examples=4000)
@given(PAYLOADS)
def test_any_update_payload_decodes_or_is_rejected_and_refused_ones_change_nothing(payload):
    decodes_or_is_rejected(
        lambda p: decode_update(p, expected_shapes=SLICE, expected_buffers=MOVED), payload
    )
    outcome = SERVER.ingest("dev-0", payload)
    # A refused payload leaves the model, version, counts and buffer as they were (a mutation
    # that happens to be the device's valid answer is accepted, as it should be).
    assert outcome.accepted or not model_changed()
    SERVER.load_state_dict(INITIAL, now=0.0)  # each example starts from the same server


@settings(FUZZ, max_examples=4500)
@given(
    st.one_of(
        mutated(VALID_ASSIGNMENT).map(pack),
        # The optional optimizer key inside an otherwise valid train table.
        st.builds(
            lambda v: {**VALID_ASSIGNMENT, "train": {**VALID_ASSIGNMENT["train"], "optimizer": v}},
            st.sampled_from(["adam", "sgd", "Adam", ""]) | ANY,
        ).map(pack),
        mutated(VALID_RELEASE).map(pack),
        st.binary(max_size=256),
        ANY.map(pack),
        st.integers(min_value=1, max_value=3000).map(deep),
    )
)
def test_any_assignment_or_release_payload_decodes_or_is_rejected(payload):
    decodes_or_is_rejected(decode_assignment, payload)
    decodes_or_is_rejected(lambda p: decode_assignment(p, values=False), payload)
    decodes_or_is_rejected(lambda p: decode_release(p, expected_shapes=SERVER.shapes), payload)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_ANY = nested(JSON_SCALARS, st.text(max_size=8))
VALID_STATUS = json.loads(DeviceStatus("dev-0", 10**6, "pi", "1", 3, ("dev-0.4",)).encode())
VALID_STATE = json.loads(
    JobState(
        "j", "running", 1, {"accuracy": 0.5}, 0, 3, 9, {"x": 1}, 1.0, {"ack_journaled": 2}
    ).encode()
)
VALID_ACK = json.loads(UpdateAck("dev-0.4.u", Verdict.REFUSED, "too_stale").encode())


def json_mutated(valid: dict) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda replace, drop: json.dumps(
            {**{k: v for k, v in valid.items() if k not in drop}, **replace}
        ).encode(),
        st.dictionaries(st.sampled_from(sorted(valid)) | st.text(max_size=6), JSON_ANY, max_size=3),
        st.sets(st.sampled_from(sorted(valid)), max_size=2),
    )


CONTROL = st.one_of(
    json_mutated(VALID_STATUS),
    json_mutated(VALID_STATE),
    json_mutated(VALID_ACK),
    st.binary(max_size=128),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"NaN", b"Infinity", b'{"state": "online", "memory_budget_bytes": 1e999}']),
)


@settings(FUZZ, max_examples=1500)
@given(CONTROL)
def test_any_control_payload_decodes_or_is_rejected(payload):
    decodes_or_is_rejected(decode_status, payload)
    decodes_or_is_rejected(decode_ack, payload)
    decodes_or_is_rejected(decode_job_state, payload)


# Site gateways combine models without batch norms only: their own server.
SITE_SERVER, SITE_ASSIGNMENT = open_server("digits")
SITE_SERVER.set_site("farm", ["dev-0"])
SITE_SLICE = {n: SITE_SERVER.shapes[n] for n in SITE_ASSIGNMENT.trainable}
SITE_INITIAL = SITE_SERVER.state_dict()
SITE_BEFORE = {n: a.copy() for n, a in SITE_SERVER.params.items()}
COMBINED = CombinedUpdate(
    site="farm",
    combined_id="farm.c.1",
    base_version=0,
    members=(
        SiteMember(
            "dev-0", SITE_ASSIGNMENT.assignment_id, f"{SITE_ASSIGNMENT.assignment_id}.u", 10
        ),
    ),
    sums={n: np.zeros(s, np.float32) for n, s in SITE_SLICE.items()},
    weights=dict.fromkeys(SITE_SLICE, 10),
    loss=0.5,
)
VALID_COMBINED = msgpack.unpackb(
    zstandard.ZstdDecompressor().decompress(encode_combined(COMBINED)), raw=False
)
COMBINED_DOCS = mutated(VALID_COMBINED) | st.builds(
    lambda members, weights: {**VALID_COMBINED, "members": members, "weights": weights},
    st.lists(st.lists(ANY, max_size=5) | st.just(VALID_COMBINED["members"][0]) | ANY, max_size=3),
    st.dictionaries(
        st.sampled_from(sorted(SITE_SLICE)) | st.text(max_size=4) | st.binary(max_size=4), ANY
    )
    | st.just(VALID_COMBINED["weights"]),
)


@settings(FUZZ, max_examples=500)
@given(st.one_of(COMBINED_DOCS.map(pack), st.binary(max_size=256), UPDATE_DOCS.map(pack)))
def test_any_combined_payload_decodes_or_is_rejected_and_refused_ones_change_nothing(payload):
    decodes_or_is_rejected(lambda p: decode_combined(p, model_shapes=SITE_SERVER.shapes), payload)
    outcome = SITE_SERVER.ingest_combined("farm", payload)
    assert outcome.accepted or not model_changed(SITE_SERVER, SITE_BEFORE)
    SITE_SERVER.load_state_dict(SITE_INITIAL, now=0.0)


def test_the_unmutated_combined_update_is_accepted():
    assert SITE_SERVER.ingest_combined("farm", pack(VALID_COMBINED)).accepted
    SITE_SERVER.load_state_dict(SITE_INITIAL, now=0.0)


def lying_frame(declared: int, real: int) -> bytes:
    """A zstd frame whose header declares ``declared`` bytes but whose blocks hold ``real``."""
    frame = bytearray(
        zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(bytes(real))
    )
    assert frame[4] >> 6 == 2 and not frame[4] & 0x20  # 4-byte size after a window byte
    frame[6:10] = struct.pack("<I", declared)
    return bytes(frame)


def test_a_frame_that_lies_about_its_size_is_refused_in_bounded_memory():
    frame = lying_frame(declared=1000, real=512 * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame"
        path.write_bytes(frame)
        probe = (
            "import resource, sys\n"
            "from ftte.errors import Rejected\n"
            "from ftte.wire import decode_update\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    decode_update(data)\nexcept Rejected as exc:\n    print(exc.reason)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
        ).stdout.split()
    assert out[0] == "malformed"
    assert int(out[1]) < 8 * 1024  # KiB of peak RSS growth: the 512 MiB never materialise
