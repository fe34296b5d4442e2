from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
)
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.db import get_database
from app.engine.chaining import run_family
from app.engine.dispatch import DispatchError
from app.engine.history import last_log_lines, load_run_view, log_lines
from app.engine.logs import format_line
from app.engine.service import abort_run, replay_run
from app.models import RUN_STATES, RUN_TRIGGERS, Job
from app.permissions import JOB_RUN, JOB_VIEW
from app.run_history import RunFilter, find_runs, usernames
from app.visibility import may_see_job, restricted_tags, visible_job_ids

bp = Blueprint("runs", __name__)
PAGE_LOG_LINES = 5000  # more than this: the page shows the newest, the download has them all


@bp.get("/runs")
@requires(JOB_VIEW)
def index():
    """List runs newest first, filtered, one keyset page at a time (htmx: the results only)."""
    run_filter, errors = RunFilter.from_args(request.args)
    before = request.args.get("before", type=int)
    visible = visible_job_ids(db.session(), current_user)
    page = find_runs(db.session(), run_filter, before=before, job_ids=visible)
    context = {
        "page": page,
        "run_filter": run_filter,
        "errors": errors,
        "before": before,
        # only this view shows new runs arriving live (app/live_history.py inserts them here)
        "live": run_filter.is_empty() and not before,
        "states": RUN_STATES,
        "triggers": RUN_TRIGGERS,
    }
    partial = request.headers.get("HX-Request") and not request.headers.get(
        "HX-History-Restore-Request"
    )
    if partial:
        response = make_response(render_template("runs/_history_rows.html", **context))
    else:
        context["usernames"] = usernames(db.session())
        response = make_response(render_template("runs/index.html", **context))
    response.vary.add("HX-Request")
    return response


@bp.get("/runs/<int:run_id>")
@requires(JOB_VIEW)
def detail(run_id: int):
    """Show one run: header, step timeline and the live log tail."""
    view = _visible_run_view(run_id)
    lines = last_log_lines(db.session(), run_id, PAGE_LOG_LINES)
    total = view.run.log_lines_count
    return render_template(
        "runs/detail.html",
        run=view.run,
        step_runs=view.step_runs,
        triggered_by=view.triggered_by,
        lines=lines,
        run_id=run_id,
        total_lines=total,
        hidden_lines=max(0, total - len(lines)),
        family=_family(view.run),
    )


@bp.get("/runs/<int:run_id>/family")
@requires(JOB_VIEW)
def family(run_id: int):
    """Return the links to the run that started this one and to the runs it started."""
    view = _visible_run_view(run_id)
    return render_template("runs/_family.html", run=view.run, family=_family(view.run))


def _family(run):
    return run_family(db.session(), run, visible_job_ids(db.session(), current_user))


@bp.get("/runs/<int:run_id>/live")
@requires(JOB_VIEW)
def live_regions(run_id: int):
    """Return the header and steps as out-of-band swaps (after a socket reconnect)."""
    view = _visible_run_view(run_id)
    return render_template(
        "runs/_live_update.html",
        run=view.run,
        step_runs=view.step_runs,
        triggered_by=view.triggered_by,
        refresh_actions=True,
    )


@bp.get("/runs/<int:run_id>/actions")
@requires(JOB_VIEW)
def actions(run_id: int):
    """Return the buttons this user may use on this run."""
    view = _visible_run_view(run_id)
    return render_template("runs/_actions.html", run=view.run)


@bp.post("/runs/<int:run_id>/abort")
@requires(JOB_RUN)
def abort_(run_id: int):
    """Abort a queued or running run."""
    _visible_run_view(run_id)
    try:
        run = abort_run(run_id, current_user, client_ip())
    except DispatchError as error:
        if error.status == 404:
            abort(404)
        run = load_run_view(db.session(), run_id).run
        if not request.headers.get("HX-Request"):
            flash(error.message, "warning")
    if request.headers.get("HX-Request"):
        return render_template("runs/_actions.html", run=run)
    return redirect(f"/runs/{run_id}")


@bp.post("/runs/<int:run_id>/replay")
@requires(JOB_RUN)
def replay(run_id: int):
    """Queue the run again with its parameters (or from its failed step)."""
    from_failed = request.form.get("from_failed_step") in ("true", "1", "on")
    _visible_run_view(run_id)
    try:
        run = replay_run(run_id, current_user, from_failed, client_ip())
    except DispatchError as error:
        if error.status == 404:
            abort(404)
        flash(error.message, "warning")
        return redirect(f"/runs/{run_id}")
    return redirect(f"/runs/{run.id}")


@bp.get("/runs/<int:run_id>/log.txt")
@requires(JOB_VIEW)
def download_log(run_id: int):
    """Stream the whole log as text, read in batches."""
    _visible_run_view(run_id)
    database = get_database()

    def lines():
        with database.sessions() as session:
            for line in log_lines(session, run_id):
                yield format_line(line.seq, line.ts, line.level, line.message) + "\n"

    return Response(
        stream_with_context(lines()),
        mimetype="text/plain",
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}.log"'},
    )


def _visible_run_view(run_id: int):
    """The run's view, or 404 when it does not exist or its job is another team's."""
    view = load_run_view(db.session(), run_id) or abort(404)
    limited = restricted_tags(current_user) is not None
    if limited and not may_see_job(current_user, db.session().get(Job, view.run.job_id)):
        abort(404)
    return view
