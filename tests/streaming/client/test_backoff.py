import random

import pytest

from streaming.client import Backoff


def test_the_delay_grows_exponentially_up_to_the_bound():
    backoff = Backoff(initial_s=0.1, max_s=2.0, multiplier=2.0, jitter=0.0)
    assert [backoff.delay_s(n) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


def test_jitter_stays_within_its_share_below_the_exponential_delay():
    backoff = Backoff(initial_s=0.1, max_s=5.0, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(12):
        delays = [backoff.delay_s(attempt, rng) for _ in range(200)]
        ceiling = backoff.ceiling_s(attempt)
        assert all(ceiling * 0.5 <= d <= ceiling <= 5.0 for d in delays), (attempt, min(delays), max(delays))
        # Spread out, not all the same: clients of one server do not come back in step.
        assert max(delays) - min(delays) > ceiling * 0.3


def test_a_huge_attempt_number_is_the_bound_not_an_overflow():
    backoff = Backoff(initial_s=1.0, max_s=30.0, multiplier=10.0, jitter=0.0)
    assert backoff.delay_s(10_000) == 30.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial_s": 0}, "first reconnect delay"),
        ({"initial_s": 2.0, "max_s": 1.0}, "at least the first"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_options_out_of_range_are_refused_with_a_sentence(options, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**options)


def test_attempts_count_from_zero():
    with pytest.raises(ValueError, match="from 0"):
        Backoff().delay_s(-1)
