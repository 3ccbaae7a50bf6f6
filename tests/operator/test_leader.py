"""The Lease rules of leader election (leader.py) on a fake clock: who may take the Lease when, what a renewal and
a takeover write, and that expiry is judged on the reader's clock. The Elector against a real apiserver is
tests/cluster/test_failover.py."""

from __future__ import annotations

import pytest

from finetune_operator.leader import Observer, Timing, claim, micro_time

WALL = "2026-12-05T08:00:00.000000Z"
LATER = "2026-12-05T08:00:02.000000Z"


def held_by(holder: str, transitions: int = 0, duration: int = 10) -> dict:
    return {"holderIdentity": holder, "leaseDurationSeconds": duration, "acquireTime": WALL, "renewTime": WALL,
            "leaseTransitions": transitions}


def test_no_lease_is_taken_with_zero_transitions():
    assert claim(None, "a", expires_at=0, now=5, wall=WALL, duration=10) == held_by("a")


def test_another_holders_lease_is_left_alone_until_its_term_ends_on_the_readers_clock():
    observer = Observer()
    spec = held_by("a")
    expires_at = observer.see(spec, now=100.0)
    assert expires_at == 110.0
    for now in (100.0, 105.0, 109.9):  # the same spec read again: the term still counts from the first sight
        assert claim(spec, "b", observer.see(spec, now), now, LATER, 10) is None
    taken = claim(spec, "b", observer.see(spec, 110.0), 110.0, LATER, 10)
    assert taken == {"holderIdentity": "b", "leaseDurationSeconds": 10, "acquireTime": LATER, "renewTime": LATER,
                     "leaseTransitions": 1}


def test_a_renewal_seen_restarts_the_term_whatever_the_holders_clock_says():
    observer = Observer()
    observer.see(held_by("a"), now=100.0)
    # The holder's clock is an hour behind: its renewTime is in the past, yet it renewed, so the term restarts.
    renewed = {**held_by("a"), "renewTime": "2026-12-05T07:00:02.000000Z"}
    assert observer.see(renewed, now=108.0) == 118.0
    assert claim(renewed, "b", 118.0, 112.0, LATER, 10) is None


def test_the_holders_own_lease_duration_decides_its_term():
    observer = Observer()
    assert observer.see(held_by("a", duration=30), now=0.0) == 30.0


def test_a_released_lease_is_taken_at_once():
    released = {**held_by("a", transitions=3), "holderIdentity": "", "leaseDurationSeconds": 1}
    expires_at = Observer().see(released, now=50.0)
    taken = claim(released, "b", expires_at, 50.0, LATER, 10)
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 4 and taken["acquireTime"] == LATER


def test_a_renewal_keeps_the_acquire_time_and_the_transitions():
    renewed = claim(held_by("a", transitions=2), "a", expires_at=0, now=1000, wall=LATER, duration=10)
    assert renewed == {**held_by("a", transitions=2), "renewTime": LATER}


def test_timings_must_leave_room_for_the_exit_and_the_retries():
    Timing(10, 7, 2)
    for bad in [(10, 10, 2), (10, 7, 7), (10, 12, 2), (10, 7, 0)]:
        with pytest.raises(ValueError, match="lease duration .* > renew deadline .* > retry period"):
            Timing(*bad)


def test_micro_time_is_what_the_lease_api_accepts():
    from datetime import datetime, timezone

    assert micro_time(datetime(2026, 12, 5, 8, 0, 1, 5, tzinfo=timezone.utc)) == "2026-12-05T08:00:01.000005Z"
