"""Jobs that name other jobs: unknown names and cycles, refused when a job is saved.

Two graphs, checked apart:

* **starts** — ``then`` and ``call_job``: a run of A starts a run of B. A cycle here
  (A then B, B calls A) would start runs forever.
* **needs** — ``depends_on``: A looks at B's latest run before it starts. A cycle here
  (A needs B, B needs A) can never be met.

Mixing the two is no cycle: "nightly depends_on extract" and "extract then nightly" is the
usual pattern (extract's success starts nightly, which finds extract's latest run SUCCEEDED).

The jobs being saved (an editor form, every job of a TOML file, an API body) replace their
stored versions; every other live job in the database counts as it is.

A job the saving user may not see (app/visibility.py) is named exactly like one that does not
exist, so a team cannot chain to, call or wait on another team's job, nor learn its id; a cycle
through such a job is refused without naming it. ``user=None`` (the CLI) sees every job.

Only a NEW reference is refused so: an edge the job's stored definition already has (same kind,
same target; an admin chained the team's job to another team's) is kept, so the team can still
save its own job (``before``: the stored definitions of the jobs being saved, as
``python_code_problems`` takes them for Python code).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.jobspec import SpecError, job_definition
from app.models import Job, Step
from app.visibility import may_see_tags, visible_job_ids

EDGE_KINDS = ("depends_on", "then", "call_job")
HIDDEN_JOB = "(a job you cannot see)"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # depends_on | then | call_job
    path: str = ""  # where a saved job names it ("jobs[0] a › then[1] b › job"); "" if stored


@dataclass
class JobGraph:
    starts: dict[str, list[Edge]] = field(default_factory=dict)
    needs: dict[str, list[Edge]] = field(default_factory=dict)

    def add(self, edge: Edge) -> None:
        graph = self.needs if edge.kind == "depends_on" else self.starts
        graph.setdefault(edge.source, []).append(edge)


def graph_errors(
    db: Session, specs: dict[int, dict[str, Any]], user=None, before: Iterable[dict] = ()
) -> list[SpecError]:
    """Every unknown job named and every cycle made by ``specs`` (index in the file → spec);
    ``before``: the stored definitions of the jobs being saved (their edges are kept)."""
    errors = reference_errors(db, specs, user=user, before=before)
    return errors + cycle_errors(db, specs, user=user)


def stored_definitions(db: Session, job_ids: Iterable[str], user=None) -> list[dict[str, Any]]:
    """The definitions of the live jobs with exactly these ids that ``user`` may see."""
    wanted = set(job_ids)
    if not wanted:
        return []
    jobs = db.scalars(sa.select(Job).where(Job.id.in_(wanted), Job.deleted_at.is_(None)))
    return [
        job_definition(job) for job in jobs if job.id in wanted and may_see_tags(user, job.tags)
    ]


def spec_edges(index: int, spec: dict[str, Any]) -> list[Edge]:
    """The jobs one canonical definition names, each with the path of the field naming it."""
    source = spec["id"]
    prefix = f"jobs[{index}] {source}"
    path = f"{prefix} › depends_on"
    edges = [Edge(source, other, "depends_on", path) for other in spec["depends_on"]]
    for position, chained in enumerate(spec["then"]):
        path = f"{prefix} › then[{position}] {chained['job']} › job"
        edges.append(Edge(source, chained["job"], "then", path))
    for position, step in enumerate(spec["steps"]):
        if step.get("type") == "call_job" and isinstance(step.get("job"), str):
            path = f"{prefix} › steps[{position}] {step['name']} › job"
            edges.append(Edge(source, step["job"], "call_job", path))
    return edges


def reference_errors(
    db: Session,
    specs: dict[int, dict[str, Any]],
    kinds: tuple[str, ...] = EDGE_KINDS,
    in_file: set[str] | None = None,
    user=None,
    before: Iterable[dict] = (),
) -> list[SpecError]:
    """Name each job of ``kinds`` edges that is neither saved with these nor live in the db
    and visible to ``user`` (None: every live job counts); a live job ``user`` may not see is
    kept where an edge of ``before`` (stored definitions) already names it."""
    saved = {spec["id"] for spec in specs.values()} | (in_file or set())
    edges = [
        edge
        for index, spec in specs.items()
        for edge in spec_edges(index, spec)
        if edge.kind in kinds and edge.target not in saved
    ]
    outside = {edge.target for edge in edges}
    live: dict[str, bool] = {}  # live job id (exactly) → may the user see it
    if outside:
        query = sa.select(Job.id, Job.tags).where(Job.id.in_(outside), Job.deleted_at.is_(None))
        live = {job_id: may_see_tags(user, tags) for job_id, tags in db.execute(query)}
    kept = {_key(edge) for definition in before for edge in spec_edges(0, definition)}
    return [
        SpecError(edge.path, f"unknown job {edge.target!r}")
        for edge in edges
        if edge.target not in live or not (live[edge.target] or _key(edge) in kept)
    ]


def _key(edge: Edge) -> tuple[str, str, str]:
    return edge.source, edge.kind, edge.target


def cycle_errors(db: Session, specs: dict[int, dict[str, Any]], user=None) -> list[SpecError]:
    """One error per cycle through a saved job: "cycle: a → b → a", at the edge leaving it.

    Jobs ``user`` may not see are in the graph (a cycle through them is still refused) but
    not in the messages; an edge naming one is left to reference_errors ("unknown job").
    """
    saved = {spec["id"] for spec in specs.values()}
    graph = _stored_graph(db, exclude=saved)
    visible = visible_job_ids(db, user)  # None: the user sees every job

    def shown(job_id: str) -> bool:
        return visible is None or job_id in saved or job_id in visible

    saved_edges = [edge for index, spec in specs.items() for edge in spec_edges(index, spec)]
    for edge in saved_edges:
        graph.add(edge)
    errors, seen = [], set()
    for edge in saved_edges:
        if not shown(edge.target):
            continue
        edges = graph.needs if edge.kind == "depends_on" else graph.starts
        back = _path(edges, edge.target, edge.source)
        if back is None:
            continue
        cycle = [edge.source, *back]
        key = (edge.kind == "depends_on", frozenset(zip(cycle, cycle[1:], strict=False)))
        if key in seen:
            continue
        seen.add(key)
        names = [job_id if shown(job_id) else HIDDEN_JOB for job_id in cycle]
        errors.append(SpecError(edge.path, "cycle: " + " → ".join(names)))
    return errors


def _path(edges: dict[str, list[Edge]], start: str, goal: str) -> list[str] | None:
    """The shortest list of job ids from ``start`` to ``goal`` (both included), or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while came_from[path[-1]] is not None:
                path.append(came_from[path[-1]])
            return path[::-1]
        for edge in edges.get(node, []):
            if edge.target not in came_from:
                came_from[edge.target] = node
                queue.append(edge.target)
    return None


def _stored_graph(db: Session, exclude: set[str]) -> JobGraph:
    """The edges of every live job in the database but those being saved."""
    graph = JobGraph()
    live = sa.select(Job.id, Job.depends_on, Job.then).where(Job.deleted_at.is_(None))
    for job_id, depends_on, then in db.execute(live):
        if job_id in exclude:
            continue
        for other in depends_on or []:
            graph.add(Edge(job_id, other, "depends_on"))
        for chained in then or []:
            if isinstance(chained, dict) and isinstance(chained.get("job"), str):
                graph.add(Edge(job_id, chained["job"], "then"))
    calls = (
        sa.select(Step.job_id, Step.config)
        .join(Job, Job.id == Step.job_id)
        .where(Step.type == "call_job", Job.deleted_at.is_(None))
    )
    for job_id, config in db.execute(calls):
        target = (config or {}).get("job")
        if job_id not in exclude and isinstance(target, str):
            graph.add(Edge(job_id, target, "call_job"))
    return graph
