"""Past-tense facts the engine announces; app/live.py renders and pushes them."""

from blinker import Namespace

engine_signals = Namespace()

# sender: the run id; run_changed also after its steps changed
run_queued = engine_signals.signal("run-queued")
run_changed = engine_signals.signal("run-changed")
# sender: the run id; kwarg database: the Database it finished in. Sent once, after the commit,
# whatever ended it (steps, overlap skip, MISSED, abort while queued, INTERRUPTED). The runner
# of that database hands it to its after-run hooks (alerts, chaining) on their own thread.
run_finished = engine_signals.signal("run-finished")
# sender: the run id; kwarg lines: list[dict(seq, ts, level, message, step)] in seq order
log_appended = engine_signals.signal("log-appended")
# sender: None; job definitions or schedules changed in this process (the clock re-syncs)
jobs_changed = engine_signals.signal("jobs-changed")
