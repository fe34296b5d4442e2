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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.jobspec import SpecError
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


def graph_errors(db: Session, specs: dict[int, dict[str, Any]], user=None) -> list[SpecError]:
    """Every unknown job named and every cycle made by ``specs`` (index in the file → spec)."""
    return reference_errors(db, specs, user=user) + cycle_errors(db, specs, user=user)


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
) -> list[SpecError]:
    """Name each job of ``kinds`` edges that is neither saved with these nor live in the db
    and visible to ``user`` (None: every live job counts)."""
    saved = {spec["id"] for spec in specs.values()} | (in_file or set())
    edges = [
        edge
        for index, spec in specs.items()
        for edge in spec_edges(index, spec)
        if edge.kind in kinds and edge.target not in saved
    ]
    outside = {edge.target for edge in edges}
    stored = set()
    if outside:
        query = sa.select(Job.id, Job.tags).where(Job.id.in_(outside), Job.deleted_at.is_(None))
        stored = {job_id for job_id, tags in db.execute(query) if may_see_tags(user, tags)}
    return [
        SpecError(edge.path, f"unknown job {edge.target!r}")
        for edge in edges
        if edge.target not in stored
    ]


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
