"""Only one holder of the scheduler lock, on each backend; a freed lock is taken at once."""

import time

import pytest

from app.leader import DatabaseLock, FileLock, LeaderElection


def make_locks(backend, tmp_path, request):
    if backend == "sqlite":
        return FileLock(tmp_path / "scheduler.lock"), FileLock(tmp_path / "scheduler.lock")
    url = request.getfixturevalue(f"{backend}_url")
    return DatabaseLock(url), DatabaseLock(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb"])
def test_one_holder_at_a_time(backend, tmp_path, request):
    first, second = make_locks(backend, tmp_path, request)
    try:
        assert first.try_acquire() is True
        assert second.try_acquire() is False
        assert first.still_held()
        first.release()
        assert second.try_acquire() is True
    finally:
        for lock in (first, second):
            getattr(lock, "dispose", lock.release)()


def test_election_calls_back_on_becoming_leader_and_on_stopping(tmp_path):
    events = []
    election = LeaderElection(
        FileLock(tmp_path / "scheduler.lock"),
        on_elected=lambda: events.append("elected"),
        on_deposed=lambda: events.append("deposed"),
        poll_seconds=0.05,
    )
    election.start()
    deadline = time.monotonic() + 5
    while election.role != "leader":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    election.stop()
    assert events == ["elected", "deposed"]
    again = FileLock(tmp_path / "scheduler.lock")
    assert again.try_acquire()  # released on stop
    again.release()
