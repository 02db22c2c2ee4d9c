"""Which DAG runs `pipelines run` makes over a range: whole intervals of the schedule, oldest first."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.core.errors import PermanentError
from pipelines.core.spec import load_spec
from pipelines.dev.runs import planned_runs
from tests.unit.core.test_spec import DEMO_SPEC


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


def test_hourly_score_runs_cover_the_range_exactly() -> None:
    runs = planned_runs(load_spec(DEMO_SPEC), "score", at(3, 2), at(3, 5))
    assert [(r.start, r.end) for r in runs] == [(at(3, 2), at(3, 3)), (at(3, 3), at(3, 4)), (at(3, 4), at(3, 5))]
    assert {r.dag_id for r in runs} == {"demo_churn__score"} and runs[0].conf is None


def test_partial_intervals_at_the_edges_are_left_out() -> None:
    # Daily backtest at 04:00: only [01-03 04:00, 01-04 04:00) lies wholly inside.
    runs = planned_runs(load_spec(DEMO_SPEC), "backtest", at(3, 1), at(4, 10))
    assert [(r.start, r.end) for r in runs] == [(at(3, 4), at(4, 4))]
    assert planned_runs(load_spec(DEMO_SPEC), "score", at(3, 2, 30), at(3, 3, 30)) == []


def test_the_monitor_follows_the_score_schedule_with_its_interval_as_params() -> None:
    (run,) = planned_runs(load_spec(DEMO_SPEC), "monitor", at(3, 2), at(3, 3))
    assert run.conf == {"interval_start": "2026-01-03T02:00:00+00:00", "interval_end": "2026-01-03T03:00:00+00:00"}


def test_a_dag_without_a_schedule_or_a_bad_range_is_refused() -> None:
    with pytest.raises(PermanentError, match="demo_churn__rollback has no schedule"):
        planned_runs(load_spec(DEMO_SPEC), "rollback", at(3, 2), at(3, 3))
    with pytest.raises(PermanentError, match="must be non-empty, with time zones"):
        planned_runs(load_spec(DEMO_SPEC), "score", at(3, 3), at(3, 2))


def test_a_second_run_of_the_same_interval_is_told_the_first_is_running(tmp_path: Path) -> None:
    """Another process holds the interval (as a first `pipelines run` does): the second is refused,
    naming its pid; once that process dies, even killed, the interval is free."""
    import subprocess
    import sys

    from pipelines.core.errors import RunInProgressError
    from pipelines.dev.runs import interval_lock

    start, end = datetime(2026, 1, 3, 2, tzinfo=UTC), datetime(2026, 1, 3, 3, tzinfo=UTC)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from datetime import datetime; from pathlib import Path; "
            "from pipelines.dev.runs import interval_lock; "
            f"lock = interval_lock(Path({str(tmp_path)!r}), 'm__score', datetime.fromisoformat({start.isoformat()!r}), "
            f"datetime.fromisoformat({end.isoformat()!r})); lock.__enter__(); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refusal = rf"m__score for \[.*\) is already being run .* \(pid {holder.pid}\)"
        with pytest.raises(RunInProgressError, match=refusal), interval_lock(tmp_path, "m__score", start, end):
            pass
        with interval_lock(tmp_path, "m__score", end, end.replace(hour=4)):  # another interval: free
            pass
    finally:
        holder.kill()
        holder.wait()
    with interval_lock(tmp_path, "m__score", start, end):  # the killed holder left no lock behind
        pass
