"""Site gateways: device updates bounded and summed at the site, applied as one row."""

from dataclasses import replace
from pathlib import Path

import numpy as np

from broker.fleet import DeviceEntry, Fleet, FleetSection, SiteEntry
from broker.generate import init_broker
from ftte import topics
from ftte.errors import RejectReason
from ftte.tasks import load_task
from ftte.wire import decode_update, encode_update
from ftte.wire.codec import decode_combined, encode_combined
from ftte.wire.messages import CombinedUpdate
from orchestrator.gateway import FlushPolicy, SiteCombiner
from orchestrator.gateway_service import GatewayService, load_gateway_config
from orchestrator.presets import make_server
from orchestrator.server import ServerSettings, TrainingServer

TASK = load_task("digits", num_devices=4, seed=0)
DEVICES = [f"d{i}" for i in range(4)]
SHAPES = TASK.model.parameter_shapes()


def server(buffer_size: int = 4) -> TrainingServer:
    # variance_coef 0: the age weight alone, so a site row adds up exactly (see FTTEStrategy).
    s = make_server(
        "ftte",
        TASK,
        settings=ServerSettings(max_staleness=3),
        strategy_params={"buffer_size": buffer_size, "variance_coef": 0.0},
        run_tag="t",
    )
    for i, d in enumerate(DEVICES):
        # Budgets apart: the devices train different slices.
        s.register(d, s.full_model_peak() // (i + 1))
    s.set_site("farm", DEVICES)
    return s


def answers(s: TrainingServer, *sites: SiteCombiner) -> dict[str, bytes]:
    """Each device's answer to the assignment ``s`` sends it, which ``sites`` saw go down."""
    rng = np.random.default_rng(1)
    out = {}
    for a in s.dispatch(np.random.default_rng(0), 0.0):
        for site in sites:
            site.assigned(a, 0.0)
        delta = {n: rng.normal(0, 0.01, SHAPES[n]).astype(np.float32) for n in a.trainable}
        samples = 10 + 5 * len(out)
        out[a.device_id] = encode_update(a.answer(delta, samples, 0.5, 1000))
    return out


def gateway_service(tmp_path: Path) -> GatewayService:
    """The gateway process of site "farm" as ``ftte broker init`` configures it, not started:
    no broker is needed to hand it messages."""
    fleet = Fleet(
        FleetSection(name="f", broker_host="127.0.0.1", task="digits"),
        [DeviceEntry(d, 10**7, site="farm") for d in DEVICES],
        [SiteEntry("farm", host="127.0.0.1", pre_aggregate=True)],
    )
    files = init_broker(fleet, tmp_path / "broker")
    return GatewayService(load_gateway_config(files.sites["farm"] / "gateway.toml"))


def combiner(**policy) -> SiteCombiner:
    return SiteCombiner("farm", SHAPES, FlushPolicy(**policy), run_tag="g")


def combined_answers(s: TrainingServer) -> CombinedUpdate:
    """Every device's answer to ``s``'s first dispatch, through one site gateway that saw the
    assignments go down: the one combined update it sends up."""
    site = combiner()
    for d, payload in answers(s, site).items():
        site.add(d, payload, 0.0)
    (combined,) = site.flush(0.0)
    return combined


def test_a_combined_update_moves_the_model_as_its_members_would_apart():
    flat, sited = server(), server()
    site = combiner()
    payloads = answers(flat)
    assert answers(sited, site) == payloads
    assert len({len(flat.open_assignment(d).trainable) for d in DEVICES}) > 1
    for d, payload in payloads.items():
        outcome = flat.ingest(d, payload)
    assert outcome.aggregation is not None
    for d, payload in payloads.items():
        assert site.add(d, payload, 0.0) is None
    (combined,) = site.flush(0.0)
    outcome = sited.ingest_combined("farm", encode_combined(combined))
    assert outcome.accepted and outcome.aggregation is not None
    assert sited.version == flat.version == 1 and sited.accepted == 4
    for name, value in flat.params.items():
        np.testing.assert_allclose(sited.params[name], value, rtol=0, atol=1e-6)
    assert all(sited.open_assignment(d) is None for d in DEVICES)


def test_a_hostile_payload_is_refused_and_counted_and_the_gateway_goes_on():
    s = server()
    site = combiner()
    payloads = answers(s, site)
    assert site.add("d0", b"\x28\xb5\x2f\xfd garbage", 0.0) is RejectReason.MALFORMED
    assert site.add("d1", payloads["d0"], 0.0) is RejectReason.UNKNOWN_DEVICE
    assert site.add("d0", payloads["d0"], 0.0) is None
    assert site.add("d0", payloads["d0"], 0.0) is RejectReason.DUPLICATE
    assert site.rejected == {"malformed": 1, "unknown_device": 1, "duplicate": 1}
    assert site.held() == 1


def test_a_tensor_the_model_lacks_or_of_another_shape_is_refused_at_the_gateway():
    s = server()
    a = s.dispatch(np.random.default_rng(0), 0.0)[0]
    name = a.trainable[0]
    zero = np.zeros(SHAPES[name], np.float32)
    site = combiner()
    stranger = encode_update(a.answer({name: zero, "no.such": zero}, 10, 0.5, 1000))
    assert site.add(a.device_id, stranger, 0.0) is RejectReason.WRONG_SLICE
    reshaped = encode_update(a.answer({name: zero.reshape(-1)}, 10, 0.5, 1000))
    assert site.add(a.device_id, reshaped, 0.0) is RejectReason.BAD_SHAPE
    assert site.held() == 0


def test_the_gateway_flushes_at_g_updates_or_t_seconds_whichever_first():
    site = combiner(max_updates=3, max_wait_s=5.0)
    payloads = list(answers(server(), site).items())
    site.add(*payloads[0], now=100.0)
    site.add(*payloads[1], now=101.0)
    assert not site.due(104.9) and site.due(105.0)
    site.add(*payloads[2], now=102.0)
    assert site.due(102.0)
    assert len(site.flush(102.0)) == 1 and site.due_at() is None


def test_a_combined_update_with_weights_unlike_the_members_slices_is_refused():
    s = server()
    combined = combined_answers(s)
    name = next(iter(combined.weights))
    forged = replace(combined, weights=combined.weights | {name: combined.weights[name] + 1})
    outcome = s.ingest_combined("farm", encode_combined(forged))
    assert outcome.reason is RejectReason.WRONG_SLICE and s.version == 0
    # Its members answered their open assignments: freed, as a refused answer frees a device.
    assert s.in_flight() == 0


def test_a_gateway_answers_only_for_its_own_sites_devices_and_only_once():
    s = server(buffer_size=8)
    s.set_site("other", ["d0"])
    combined = combined_answers(s)
    payload = encode_combined(combined)
    assert s.ingest_combined("other", payload).reason is RejectReason.UNKNOWN_DEVICE
    assert s.ingest_combined("nowhere", payload).reason is RejectReason.UNKNOWN_DEVICE
    assert s.in_flight() == 4  # nothing a stranger sent touched the assignments
    assert s.ingest_combined("farm", payload).accepted
    assert s.ingest_combined("farm", payload).reason is RejectReason.DUPLICATE
    assert s.accepted == 4


def test_a_combined_row_survives_a_checkpoint_in_the_buffer():
    s = server(buffer_size=8)
    s.ingest_combined("farm", encode_combined(combined_answers(s)))
    restored = server(buffer_size=8)
    restored.load_state_dict(s.state_dict(), now=0.0)
    (row,) = restored.strategy.buffered()
    assert row.members == 4 and row.tensor_samples == s.strategy.buffered()[0].tensor_samples


def test_combined_updates_of_different_base_versions_go_up_apart():
    s = server()
    site = combiner()
    (d0, p0), (d1, p1) = list(answers(s, site).items())[:2]
    later = encode_update(replace(decode_update(p1), base_version=7))
    site.add(d0, p0, 0.0)
    site.add(d1, later, 0.0)
    assert [(c.base_version, len(c.members)) for c in site.flush(0.0)] == [(0, 1), (7, 1)]


def test_a_combined_update_round_trips_the_wire():
    combined = combined_answers(server())
    decoded = decode_combined(encode_combined(combined), model_shapes=SHAPES)
    assert decoded.members == combined.members and decoded.weights == combined.weights
    for name, value in combined.sums.items():
        np.testing.assert_array_equal(decoded.sums[name], value)


def test_a_combined_update_moving_a_tensor_beyond_any_device_bound_is_refused():
    s = server()
    combined = combined_answers(s)
    name = next(iter(combined.sums))
    huge = combined.sums[name] + 10.0 * combined.weights[name]  # mean delta up by 10
    forged = replace(combined, sums=combined.sums | {name: huge})
    outcome = s.ingest_combined("farm", encode_combined(forged))
    assert outcome.reason is RejectReason.MALFORMED and s.version == 0


def test_a_message_whose_handling_raises_is_counted_and_the_gateway_goes_on(tmp_path, monkeypatch):
    gateway = gateway_service(tmp_path)
    payloads = answers(server())
    real_add = gateway.combiner.add

    def add(device_id: str, payload: bytes, now: float) -> RejectReason | None:
        if device_id == "d0":
            raise RuntimeError("a handler bug")
        return real_add(device_id, payload, now)

    monkeypatch.setattr(gateway.combiner, "add", add)
    gateway._receive(topics.update_topic("f", "d0"), payloads["d0"], 0.0)
    gateway._receive("ftte/v1/f/model", b"", 0.0)
    gateway._receive(topics.update_topic("f", "d1"), payloads["d1"], 0.0)
    assert gateway.failed == {"RuntimeError": 1, "ValueError": 1}
    assert gateway.combiner.held() == 1


def test_one_hostile_member_costs_its_site_nothing_but_its_own_update():
    s = server()
    site = combiner()
    payloads = answers(s, site)
    forged = encode_update(replace(decode_update(payloads["d1"]), assignment_id="t.forged"))
    site.add("d1", forged, 0.0)
    for d in ("d0", "d2"):
        site.add(d, payloads[d], 0.0)
    # d3 answered, then its last will dropped its assignment at the orchestrator.
    site.add("d3", payloads["d3"], 0.0)
    site.offline("d3")
    s.set_offline("d3")
    vouched, *alone = site.flush(0.0)
    assert [m.device_id for m in vouched.members] == ["d0", "d2"] and site.alone == 2
    assert s.ingest_combined("farm", encode_combined(vouched)).accepted
    assert [s.ingest_combined("farm", encode_combined(c)).reason for c in alone] == [
        RejectReason.UNEXPECTED,
        RejectReason.UNEXPECTED,
    ]
    assert s.accepted == 2


def test_a_second_answer_or_one_near_the_timeout_goes_up_alone():
    s = server()
    site = combiner(max_wait_s=1.0)
    site.assignment_timeout_s = 60.0
    payloads = answers(s, site)
    site.add("d0", payloads["d0"], 0.0)
    site.flush(0.0)
    again = encode_update(replace(decode_update(payloads["d0"]), update_id="d0.again"))
    site.add("d0", again, 1.0)
    site.add("d1", payloads["d1"], 1.0)
    vouched, alone = site.flush(1.0)
    assert [m.device_id for m in vouched.members] == ["d1"] and site.alone == 1
    assert [m.update_id for m in alone.members] == ["d0.again"]
    # Seen at 0 s, an assignment of a 60 s timeout is too close to it at 54 s: the flush
    # window (1 s) and the margin (5 s) would take it past.
    site.add("d2", payloads["d2"], 54.0)
    site.flush(54.0)
    assert site.alone == 2


def test_a_retained_update_is_ignored_at_the_gateway(tmp_path):
    gateway = gateway_service(tmp_path)
    payloads = answers(server(), gateway.combiner)
    gateway._receive(topics.update_topic("f", "d0"), payloads["d0"], 0.0, retained=True)
    gateway._receive(topics.update_topic("f", "d1"), payloads["d1"], 0.0)
    assert gateway.retained_updates == 1 and gateway.combiner.held() == 1
