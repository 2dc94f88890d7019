"""The training engine: payloads and time in, policies applied once, state it owns."""

from dataclasses import replace

import msgpack
import numpy as np
import pytest

from ftte.errors import RejectReason
from ftte.tasks import load_task
from ftte.wire import encode_update
from ftte.wire.messages import Assignment, Evaluation
from orchestrator import server as server_module
from orchestrator.checkpoint import load_state, save_state
from orchestrator.planner import budget_class
from orchestrator.presets import make_server
from orchestrator.scoring import size_scores
from orchestrator.server import ServerSettings, TrainingServer

TASK = load_task("digits", num_devices=4, seed=0)
RNG_SEED = 0


def server(strategy: str = "ftte", **params) -> TrainingServer:
    s = make_server(
        strategy,
        TASK,
        settings=ServerSettings(assignment_timeout_s=100.0, max_staleness=3),
        strategy_params=params,
    )
    for i in range(4):
        s.register(f"d{i}", s.full_model_peak())
    return s


def answer(a: Assignment, value: float = 0.01, **changes) -> bytes:
    delta = {n: np.full(TASK_SHAPES[n], value, np.float32) for n in a.trainable}
    return encode_update(replace(a.answer(delta, 10, 0.5, 1000), **changes))


TASK_SHAPES = {n: a.shape for n, a in server().params.items()}


def dispatch(s: TrainingServer, now: float = 0.0) -> dict[str, Assignment]:
    return {a.device_id: a for a in s.dispatch(np.random.default_rng(RNG_SEED), now)}


def test_another_answer_to_an_answered_assignment_is_refused_as_replayed():
    s = server(buffer_size=4)
    a = dispatch(s)["d0"]
    assert s.ingest("d0", answer(a)).accepted
    outcome = s.ingest("d0", answer(a, update_id="another"))
    assert outcome.reason is RejectReason.REPLAYED and s.accepted == 1


def test_the_accepted_update_sent_again_is_a_duplicate_not_a_replay():
    s = server(buffer_size=4)
    a = dispatch(s)["d0"]
    payload = answer(a)
    assert s.ingest("d0", payload).accepted
    outcome = s.ingest("d0", payload)
    assert outcome.reason is RejectReason.DUPLICATE and s.accepted == 1
    assert s.rejected == {"duplicate": 1}


def test_a_duplicate_is_recognised_while_another_slice_is_open_and_after_a_restart():
    s = server(buffer_size=4)
    first = dispatch(s)["d0"]
    payload = answer(first)
    assert s.ingest("d0", payload).accepted
    restored = server(buffer_size=4)
    restored.load_state_dict(s.state_dict(), now=0.0)
    for engine in (s, restored):
        # A smaller budget: the new slice, which the decoder now checks against, differs.
        engine.register("d0", engine.full_model_peak() // 5, synced_version=0)
        fresh = dispatch(engine)["d0"]
        assert set(fresh.trainable) != set(first.trainable)
        refusal = engine.admit("d0", payload)
        assert refusal.reason is RejectReason.DUPLICATE
        assert refusal.update_id == f"{first.assignment_id}.u"
        assert engine.open_assignment("d0").assignment_id == fresh.assignment_id


def test_open_assignment_names_what_a_device_answers_now():
    s = server(buffer_size=4)
    assert s.open_assignment("d0") is None and s.open_assignment("nobody") is None
    a = dispatch(s)["d0"]
    assert s.open_assignment("d0").assignment_id == a.assignment_id
    assert s.ingest("d0", answer(a)).accepted
    assert s.open_assignment("d0") is None


def test_replay_protection_does_not_grow_with_accepted_updates():
    s = server(buffer_size=1)
    sizes = []
    for _round in range(30):
        for device_id, a in dispatch(s).items():
            assert s.ingest(device_id, answer(a)).accepted
        state = s.state_dict()
        state["params"] = {}  # the model's size is not what is measured here
        sizes.append(len(msgpack.packb(state, default=lambda a: a.tobytes())))
    assert s.accepted == 120
    # The influence bound's windows fill up over the first 64 updates (16 rounds), then
    # only counters' digits change, not one entry per update.
    assert max(sizes[20:]) - min(sizes[20:]) < 200


def test_garbage_from_a_device_leaves_its_open_assignment_alone():
    s = server(buffer_size=4)
    a = dispatch(s)["d0"]
    assert s.ingest("d0", b"\x28\xb5\x2f\xfd garbage").reason is RejectReason.MALFORMED
    forged = answer(a, assignment_id="d0.999")
    assert s.ingest("d0", forged).reason is RejectReason.UNEXPECTED
    assert s.devices["d0"].open is not None and s.in_flight() == 4
    assert s.ingest("d0", answer(a)).accepted  # the honest answer still counts


def test_a_device_refused_for_its_own_answer_is_freed_for_a_new_assignment():
    s = server(buffer_size=4)
    a = dispatch(s)["d1"]
    outcome = s.ingest("d1", answer(a, value=float("nan")))
    assert outcome.reason is RejectReason.NON_FINITE
    assert s.devices["d1"].open is None and "d1" in s.idle_devices()


def test_a_device_cannot_answer_for_another():
    s = server(buffer_size=4)
    assignments = dispatch(s)
    outcome = s.ingest("d0", answer(assignments["d1"]))
    assert outcome.reason is RejectReason.UNKNOWN_DEVICE
    assert s.devices["d1"].open is not None and s.devices["d0"].open is not None


def test_an_assignment_expires_after_the_timeout_and_its_late_answer_is_refused():
    s = server(buffer_size=4)
    a = dispatch(s, now=10.0)["d2"]
    assert s.expire_overdue(109.0) == []
    assert sorted(s.expire_overdue(110.0)) == ["d0", "d1", "d2", "d3"]
    assert s.in_flight() == 0 and len(s.idle_devices()) == 4
    assert s.ingest("d2", answer(a)).reason is RejectReason.UNEXPECTED


def test_an_update_older_than_max_staleness_is_refused_and_frees_its_device():
    s = server(buffer_size=1)
    first = dispatch(s)
    late = first.pop("d3")
    for device_id, a in first.items():
        s.ingest(device_id, answer(a))
    for device_id, a in dispatch(s).items():
        s.ingest(device_id, answer(a))
    assert s.version == 6
    outcome = s.ingest("d3", answer(late))
    assert outcome.reason is RejectReason.TOO_STALE and "d3" in s.idle_devices()


@pytest.mark.parametrize("strategy", ["ftte", "fedbuff", "fedavg", "fedasync"])
def test_a_restored_server_continues_exactly_as_the_uninterrupted_one(strategy, tmp_path):
    params = {"buffer_size": 3} if strategy in ("ftte", "fedbuff") else {}
    original, interrupted = server(strategy, **params), server(strategy, **params)
    # Each run tags its assignment ids; everything else is dispatched the same.
    sent, sent_too = dispatch(original), dispatch(interrupted)
    assert sent.keys() == sent_too.keys()
    first, *rest = sorted(sent)
    for s, assignments in ((original, sent), (interrupted, sent_too)):
        assert s.ingest(first, answer(assignments[first])).accepted
    save_state(tmp_path, interrupted.state_dict())
    restored = server(strategy, **params)
    restored.load_state_dict(load_state(tmp_path), now=0.0)
    for device_id in rest:
        a = original.ingest(device_id, answer(sent[device_id], value=0.02))
        b = restored.ingest(device_id, answer(sent_too[device_id], value=0.02))
        assert a.accepted and b.accepted
    assert original.version == restored.version >= 1
    for name, value in original.params.items():
        np.testing.assert_array_equal(value, restored.params[name])
    # The same buffer and selection state (update ids differ by the runs' tags).
    assert restored.strategy.selection_state() == original.strategy.selection_state()
    for mine, theirs in zip(
        restored.strategy.buffered(), original.strategy.buffered(), strict=True
    ):
        assert (mine.age, mine.update.num_samples) == (theirs.age, theirs.update.num_samples)
        for name, delta in mine.update.delta.items():
            np.testing.assert_array_equal(delta, theirs.update.delta[name])


def test_restored_open_assignments_get_a_fresh_timeout(tmp_path):
    s = server(buffer_size=4)
    dispatch(s, now=0.0)
    save_state(tmp_path, s.state_dict())
    restored = server(buffer_size=4)
    restored.load_state_dict(load_state(tmp_path), now=500.0)
    assert restored.expire_overdue(599.0) == [] and restored.in_flight() == 4
    assert len(restored.expire_overdue(600.0)) == 4


def test_state_of_another_job_is_refused(tmp_path):
    s = server()
    other = make_server("ftte", TASK, job="other")
    with pytest.raises(ValueError, match="belongs to job"):
        other.load_state_dict(s.state_dict(), now=0.0)


def test_timeout_bookkeeping_stays_proportional_to_the_devices_training():
    s = server(buffer_size=1)
    for _round in range(100):
        for device_id, a in dispatch(s).items():
            s.ingest(device_id, answer(a))
    assert s.accepted == 400
    assert len(s._deadlines) <= 2 * s.in_flight() + 64  # not one entry per assignment sent


@pytest.mark.parametrize("strategy", ["ftte", "fedavg"])
def test_an_answer_to_an_assignment_dispatched_after_the_checkpoint_counts_after_replay(
    strategy, tmp_path
):
    """The journal holds the dispatch, so a crash between checkpoint and answer loses nothing."""
    s = server(strategy)
    save_state(tmp_path, s.state_dict())  # the checkpoint, before any dispatch
    sent = dispatch(s)
    record = s.dispatch_record(list(sent.values()))
    restored = server(strategy)
    restored.load_state_dict(load_state(tmp_path), now=0.0)
    assert restored.ingest("d0", answer(sent["d0"])).reason is RejectReason.UNEXPECTED
    restored = server(strategy)
    restored.load_state_dict(load_state(tmp_path), now=0.0)
    restored.replay_dispatch(record, now=0.0)
    for device_id, a in sent.items():
        assert restored.ingest(device_id, answer(a)).accepted
    assert restored.in_flight() == 0 and restored.accepted == 4


def test_one_huge_finite_update_moves_the_model_no_more_than_an_honest_one():
    s = server(buffer_size=4)
    before = {n: p.copy() for n, p in s.params.items()}
    assignments = dispatch(s)
    outcomes = {
        d: s.ingest(d, answer(a, value=3e38 if d == "d0" else 0.01)) for d, a in assignments.items()
    }
    report = list(outcomes.values())[-1].aggregation
    assert all(o.accepted for o in outcomes.values()) and report is not None
    assert report.clipped == {outcomes["d0"].update.update_id}
    # Three honest deltas of 0.01 and one clipped to 3x their norm: at most 1.5 x 0.01 per value.
    for name, value in s.params.items():
        assert np.all(np.abs(value - before[name]) <= 0.015 + 1e-6), name
    for device_id, a in dispatch(s).items():
        assert s.ingest(device_id, answer(a)).accepted


def test_an_answer_to_an_earlier_jobs_assignment_is_refused_as_unexpected():
    earlier, fresh = server(buffer_size=4), server(buffer_size=4)  # same job name, new run
    old = dispatch(earlier)["d0"]
    new = dispatch(fresh)["d0"]
    assert (old.version, old.trainable) == (new.version, new.trainable)
    assert fresh.ingest("d0", answer(old)).reason is RejectReason.UNEXPECTED
    assert fresh.ingest("d0", answer(new)).accepted


def test_a_device_whose_budget_holds_no_slice_is_excluded_by_name_with_the_reason():
    s = server()
    told = []
    s.on_excluded = lambda device, reason: told.append((device, reason))
    s.register("tiny", 1_000)
    assignments = dispatch(s)
    assert "tiny" not in assignments and len(assignments) == 4
    ((device, reason),) = told
    assert device == "tiny" and "memory_budget_bytes" in reason
    assert s.excluded_devices() == {"tiny": reason}
    s.register("tiny", s.full_model_peak())  # a new budget: planned again
    assert s.excluded_devices() == {} and "tiny" in dispatch(s)


def test_a_version_of_another_jobs_model_or_from_an_unknown_device_earns_no_trust():
    s = server()
    s.register("new", s.full_model_peak(), synced_version=7)  # never sent anything: all
    s.register("other", s.full_model_peak(), synced_version=0, model_job="job-1")
    s.register("ours", s.full_model_peak(), synced_version=-1, model_job=s.config.job)
    everything = set(s.params)
    sent = dispatch(s)
    for device in ("new", "other", "ours"):
        assert set(sent[device].tensors) == everything, device


def test_accepted_updates_report_the_fleets_measure_of_the_version_they_were_sent():
    s = server()
    sent = dispatch(s)
    for i, (device, a) in enumerate(sorted(sent.items())):
        evaluation = Evaluation(10 * (i + 1), {"accuracy": 0.1 * (i + 1)})
        delta = {n: np.zeros(TASK_SHAPES[n], np.float32) for n in a.trainable}
        assert s.ingest(
            device, encode_update(a.answer(delta, 10, 0.5, 1, evaluation=evaluation))
        ).accepted
    fleet = s.fleet_evaluation.latest(min_devices=4)
    assert fleet.version == 0 and fleet.devices == 4
    assert fleet.metrics["accuracy"] == pytest.approx(0.3)  # (1+4+9+16)/(1+2+3+4) / 10


def test_fedbuff_excluded_leaves_out_a_device_that_cannot_hold_the_whole_model():
    s = server("fedbuff-excluded")
    s.register("small", s.full_model_peak() - 1)  # would hold a slice, not the whole model
    assignments = dispatch(s)
    assert "small" not in assignments and len(assignments) == 4
    assert "whole model" in s.excluded_devices()["small"]
    assert all(len(a.trainable) == len(TASK_SHAPES) for a in assignments.values())


# Dispatches at these times of the driver's clock, one version apart (rescore_every = 1).
@pytest.mark.parametrize(("rescore_every_s", "scored_at"), [(0.0, [0, 1, 2, 6]), (5.0, [0, 6])])
def test_the_planner_rescores_every_rescore_every_versions_and_rescore_every_s_seconds(
    monkeypatch, rescore_every_s, scored_at
):
    s = make_server(
        "ftte",
        TASK,
        settings=ServerSettings(rescore_every=1),
        strategy_params={"buffer_size": 1},
        rescore_every_s=rescore_every_s,
    )
    s.register("d0", s.full_model_peak())
    clock = [0]
    scored = []
    real = server_module.gradient_scores
    monkeypatch.setattr(
        server_module,
        "gradient_scores",
        lambda *a, **kw: scored.append(clock[0]) or real(*a, **kw),
    )
    for clock[0] in (0, 1, 2, 6):
        a = dispatch(s, float(clock[0]))["d0"]
        assert s.ingest("d0", answer(a)).accepted  # a new version each time (K = 1)
    assert scored == scored_at


def slices_of_one_small_device(task, turns: int) -> tuple[TrainingServer, list[tuple[str, ...]]]:
    s = make_server("ftte", task, settings=ServerSettings(assignment_timeout_s=100.0))
    s.register("d0", 2 * s.planner.minimum_bytes())  # holds the last layers or the convs
    slices = []
    for t in range(turns):
        (a,) = s.dispatch(np.random.default_rng(RNG_SEED), float(t))
        slices.append(a.trainable)
        assert s.ingest("d0", answer(a)).accepted
    return s, slices


def test_without_validation_data_a_device_takes_its_classs_slices_in_turn(tmp_path):
    task = replace(TASK, validation=None)  # scores are the tensors' sizes: they never move
    s, slices = slices_of_one_small_device(task, turns=6)
    cover = s.planner.cover(budget_class(s.devices["d0"].budget_bytes), size_scores(s.model))
    assert len(cover) > 1
    assert slices == [cover[t % len(cover)].trainable for t in range(6)]
    save_state(tmp_path, s.state_dict())  # the turn survives a restart
    restored = make_server("ftte", task, settings=ServerSettings(assignment_timeout_s=100.0))
    restored.load_state_dict(load_state(tmp_path), now=0.0)
    assert restored.plan_for("d0") == s.plan_for("d0") == cover[6 % len(cover)]


def test_with_validation_data_a_device_keeps_the_best_slice_until_the_scores_move():
    _, slices = slices_of_one_small_device(TASK, turns=3)
    assert len(set(slices)) == 1
