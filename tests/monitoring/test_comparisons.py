"""Shadow comparisons: the math, the per-minute sums, their upserts in the database, and the canary guard."""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime

import numpy as np
import pytest

from inference.rollout.compare import MAX_DISAGREEMENTS_PER_COMPARISON, compare
from inference.rollout.plan import Rollout
from inference.rollout.shadow import ShadowReport, ShadowStatus
from monitoring.comparisons.aggregate import Aggregator
from monitoring.comparisons.guard import CanaryGuard
from monitoring.comparisons.models import ShadowComparison, ShadowDisagreement
from monitoring.comparisons.recorder import ComparisonRecorder
from monitoring.events import PredictionEvent

CLASSES = ["a", "b", "c"]
MINUTE = 1_800_000_000 // 60 * 60


def test_a_classifier_agrees_on_labels_and_differs_by_the_largest_probability_gap():
    rows = np.arange(6.0).reshape(3, 2)
    primary = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    shadow = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    result = compare("classification", rows, primary, shadow, primary_classes=CLASSES, shadow_classes=CLASSES)
    assert (result.rows, result.agreed) == (3, 2)
    assert result.max_abs_diff == pytest.approx(0.4)
    assert result.sum_abs_diff == pytest.approx(0.1 + 0.4 + 0.0)
    (disagreement,) = result.disagreements
    assert disagreement.inputs == [2.0, 3.0]
    assert disagreement.primary["label"] == "b" and disagreement.shadow["label"] == "a"


def test_classes_in_another_order_are_matched_by_label():
    rows = np.zeros((1, 2))
    primary = np.array([[0.7, 0.2, 0.1]])
    shadow = np.array([[0.1, 0.2, 0.7]])  # the same probabilities, columns c, b, a
    result = compare("classification", rows, primary, shadow, primary_classes=CLASSES, shadow_classes=["c", "b", "a"])
    assert (result.agreed, result.max_abs_diff) == (1, 0.0)


def test_regression_values_agree_within_the_tolerance_and_a_nan_disagrees():
    rows = np.zeros((4, 1))
    result = compare("regression", rows, np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.5, 3.0000001, np.nan]))
    assert (result.rows, result.agreed) == (4, 2)
    assert result.max_abs_diff == pytest.approx(0.5)
    assert [d.shadow for d in result.disagreements] == [[2.5], [None]]


def test_one_comparison_adds_a_bounded_number_of_disagreements():
    rows = np.zeros((10, 1))
    result = compare("regression", rows, np.zeros(10), np.ones(10))
    assert result.agreed == 0 and len(result.disagreements) == MAX_DISAGREEMENTS_PER_COMPARISON


def report(at=MINUTE + 5.0, *, status=ShadowStatus.COMPARED, agree=True, model="m", reason=""):
    comparison = compare("regression", np.array([[1.0]]), np.array([1.0]), np.array([1.0 if agree else 3.0]))
    return ShadowReport(model, 1, 2, at, status, comparison if status == ShadowStatus.COMPARED else None,
                        primary_ms=2.0, shadow_ms=4.0 if agree else 8.0, reason=reason)


def test_reports_add_up_per_minute_and_pair():
    aggregator = Aggregator(samples_per_minute=2)
    for agree in (True, True, False, False, False):
        aggregator.add(report(agree=agree))
    aggregator.add(report(status=ShadowStatus.FAILED))
    aggregator.add(report(status=ShadowStatus.DROPPED, reason="primary_busy"))
    aggregator.add(report(at=MINUTE + 61.0))
    buckets = aggregator.take()
    assert len(buckets) == 2 and not aggregator.take()
    first = buckets[min(buckets, key=lambda key: key.minute)]
    assert (first.requests, first.rows, first.agreed_rows, first.failed, first.dropped) == (5, 5, 2, 1, 1)
    assert first.sum_abs_diff == pytest.approx(6.0) and first.max_abs_diff == pytest.approx(2.0)
    assert (first.primary_ms_max, first.shadow_ms_max, first.shadow_ms_sum) == (2.0, 8.0, 32.0)
    assert first.drop_reasons == {"primary_busy": 1} and len(first.samples) == 2


def test_the_sample_bound_holds_across_takes_within_a_minute():
    aggregator = Aggregator(samples_per_minute=2)
    aggregator.add(report(agree=False))
    assert sum(len(b.samples) for b in aggregator.take().values()) == 1
    aggregator.add(report(agree=False))
    aggregator.add(report(agree=False))
    assert sum(len(b.samples) for b in aggregator.take().values()) == 1


@pytest.mark.django_db(transaction=True)
def test_flushes_of_several_processes_add_to_one_row_per_minute_and_pair():
    recorders = [ComparisonRecorder(flush_s=60, samples_per_minute=5, samples_kept=3) for _ in range(2)]
    for recorder in recorders:
        for agree in (True, False):
            recorder.observe(report(agree=agree))
        recorder.observe(report(status=ShadowStatus.DROPPED, reason="shadow_busy"))
    for recorder in recorders:  # one after the other: SQLite writes one transaction at a time
        recorder.flush()
    recorders[0].observe(report(agree=True))
    recorders[0].flush()
    (row,) = ShadowComparison.objects.all()
    assert row.minute == datetime.fromtimestamp(MINUTE, tz=UTC)
    assert (row.requests, row.rows, row.agreed_rows, row.dropped) == (5, 5, 3, 2)
    assert row.agreement == pytest.approx(0.6) and row.mean_abs_diff == pytest.approx(4.0 / 5)
    assert row.shadow_ms_max == 8.0 and row.primary_ms_mean == pytest.approx(2.0)
    assert ShadowDisagreement.objects.count() == 2
    for recorder in recorders:
        recorder.shutdown()


@pytest.mark.django_db(transaction=True)
def test_only_the_latest_disagreements_are_kept():
    recorder = ComparisonRecorder(flush_s=60, samples_per_minute=100, samples_kept=3)
    for n in range(5):
        recorder.observe(report(at=MINUTE + n, agree=False))
        recorder.flush()
    kept = list(ShadowDisagreement.objects.order_by("at").values_list("at", flat=True))
    assert [moment.timestamp() for moment in kept] == [MINUTE + 2, MINUTE + 3, MINUTE + 4]
    recorder.shutdown()


def event(outcome="ok", total_ms=5.0, version=2):
    return PredictionEvent(received_at=0.0, model="m", version=version, api_key=None, request_id=None, rows=1,
                           inputs=None, outputs=None, outcome=outcome, total_ms=total_ms)


def guarded(rollout):
    aborted: list[tuple[str, int, str]] = []
    done = threading.Event()

    def abort(model, version, reason):
        aborted.append((model, version, reason))
        done.set()

    return CanaryGuard(lambda model: rollout, abort, window=100, min_requests=50, every=10), aborted, done


def test_the_guard_aborts_a_canary_past_its_error_limit_once():
    rollout = Rollout(canary_version=2, canary_weight_pct=20, canary_max_error_pct=5.0)
    guard, aborted, done = guarded(rollout)
    for n in range(100):
        guard.observe(event("internal" if n % 10 == 0 else "ok"))  # 10% errors
        guard.observe(event("internal", version=1))  # the active version's errors are not the canary's
    assert done.wait(5)
    assert len(aborted) == 1 and aborted[0][:2] == ("m", 2) and "10.0% of its last" in aborted[0][2]


def test_the_guard_aborts_on_p99_and_leaves_a_healthy_canary_alone():
    slow = Rollout(canary_version=2, canary_weight_pct=20, canary_max_p99_ms=50.0)
    guard, aborted, done = guarded(slow)
    for n in range(100):
        guard.observe(event(total_ms=5.0 if n % 20 else 80.0))  # 5% of requests at 80 ms
    assert done.wait(5) and "p99" in aborted[0][2]
    healthy, aborted, _ = guarded(Rollout(canary_version=2, canary_weight_pct=20, canary_max_error_pct=5.0,
                                          canary_max_p99_ms=50.0))
    for n in range(300):
        healthy.observe(event("timeout" if n % 50 == 0 else "invalid_input" if n % 3 == 0 else "ok"))
    assert not aborted


def test_the_verdict_needs_limits():
    requests = deque([(True, 1000.0)] * 100)
    assert CanaryGuard.verdict(Rollout(canary_version=2), requests) is None


@pytest.mark.django_db(transaction=True)
def test_the_guards_abort_is_audited_once_and_spares_a_replaced_canary(model_store, tmp_path):
    from inference import deployment
    from inference.models import DeploymentEvent, MLModel
    from inference.rollout import changes
    from monitoring.comparisons.guard import abort_canary
    from tests.support import artifacts

    schema = deployment.ModelSchema(task="classification", inputs=artifacts.FEATURES, outputs="label")
    for number in (1, 2, 3):
        deployment.register("shop", artifacts.skops_file(tmp_path / "v.skops"), "sklearn", schema=schema,
                            activate=number == 1, actor="t", source="command")
    changes.set_canary("shop", 3, weight_pct=10, actor="t", source="command")
    abort_canary("shop", 2, "judged on v2")  # v2 is not the canary: nothing happens
    assert MLModel.objects.get(name="shop").canary_version == 3
    abort_canary("shop", 3, "3.0% of its last 200 requests ended in a server error")
    abort_canary("shop", 3, "again")  # another process, a moment later
    events = DeploymentEvent.objects.filter(action="aborted")
    assert [(e.source, e.actor, e.version_number) for e in events] == [("guard", "canary guard", 3)]
    assert events[0].detail == "canary v3 removed: 3.0% of its last 200 requests ended in a server error"
