"""The ``ldap_sync`` step: mirror directory entries into a table, with deletions and groups.

After the target tables are reflected (or created), the run has three phases. Fetch: bind,
then a paged search, checking abort and timeout between pages. Convert: each entry becomes a
row fitted to the target's columns (a bad entry is logged with its DN and skipped). Write: one
transaction diffs the rows against the table (insert / update / unchanged), deactivates or
deletes rows gone from the directory, and replaces the synced users' memberships. Nothing is
written while the directory is read, so a slow directory never holds a lock in the target (on
SQLite that is the app's own database, which the run log writes to as well).
Past 400 lines: the phases share one Plan. The write phase (diff-upsert by key with per-row
savepoints) is the part to move out once sql_copy's upsert wants the same thing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from ldap3 import BASE, LEVEL, SUBTREE
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError, LDAPInvalidFilterError
from ldap3.operation.search import parse_filter
from ldap3.utils.dn import parse_dn

from app.connectors.ldap_client import (
    PAGED_RESULTS_OID,
    DirectoryBindFailed,
    DirectoryError,
    close_connection,
    decode_value,
    directory_time,
    open_connection,
)
from app.steps.base import (
    ConfigField,
    StepCanceled,
    StepContext,
    StepFailed,
    StepTimedOut,
    StepType,
)

SCOPES = {"base": BASE, "one": LEVEL, "subtree": SUBTREE}
DELETIONS = ("none", "soft", "hard")
MULTI_RULES = ("first", "join")
GROUP_VALUES = ("dn", "name")
DEFAULTS = {
    "filter": "(objectClass=*)",
    "scope": "subtree",
    "paged_size": 500,
    "multi": "first",
    "separator": ";",
    "deletion": "none",
    "deletion_column": "active",
    "create": False,
}
TARGET_KEYS = ("connector", "table", "key")
GROUP_KEYS = ("table", "attribute", "value", "user_column", "group_column")
WRITE_BATCH = 500
MAX_WARNINGS = 100  # skipped entries named one by one; past this, only counted
OUTPUT_KEYS = ("fetched", "created", "updated", "unchanged", "deactivated", "failed")
COLUMN = r"[A-Za-z_][A-Za-z0-9_]*"
ATTRIBUTE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)(?:;[A-Za-z0-9=-]+)*")
AD_NEVER = {"0", "9223372036854775807"}  # accountExpires and friends: "never"


class LdapBindRejected(StepFailed):
    """The directory refused the bind: the same credentials fail on every attempt."""

    retryable = False  # a hint for the engine's retry loop (see _run_step in execution.py)


@dataclass
class Plan:
    """A validated config with its defaults filled in."""

    connector: str
    base_dn: str
    filter: str
    scope: str
    attributes: list[str]
    paged_size: int
    target_connector: str
    table: str
    key: str
    mapping: dict[str, str]  # attribute -> column
    multi: dict[str, str]  # attribute (lower case) -> first | join
    separator: str
    deletion: str
    deletion_column: str | None
    groups: dict[str, str] | None  # table, attribute, value, user_column, group_column
    create: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Plan:
        c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
        target, mapping = c["target"], c["mapping"]
        multi = c["multi"]
        rules = {
            a.lower(): multi.get(a, "first") if isinstance(multi, dict) else multi for a in mapping
        }
        groups = None
        if c.get("groups"):
            g = {
                "attribute": "memberOf",
                "value": "dn",
                "user_column": target["key"],
                **c["groups"],
            }
            g.setdefault("group_column", "group_dn" if g["value"] == "dn" else "group_name")
            groups = g
        wanted = [
            *mapping,
            *(c.get("attributes") or []),
            *([groups["attribute"]] if groups else []),
        ]
        attributes: list[str] = []
        for attribute in wanted:  # LDAP names are case-insensitive: ask for each once
            if attribute.lower() not in {a.lower() for a in attributes}:
                attributes.append(attribute)
        return cls(
            connector=c["connector"],
            base_dn=c["base_dn"],
            filter=c["filter"].strip(),
            scope=c["scope"],
            attributes=attributes,
            paged_size=c["paged_size"],
            target_connector=target["connector"],
            table=target["table"],
            key=target["key"],
            mapping=dict(mapping),
            multi=rules,
            separator=c["separator"],
            deletion=c["deletion"],
            deletion_column=c["deletion_column"] if c["deletion"] == "soft" else None,
            groups=groups,
            create=c["create"],
        )

    @property
    def key_attribute(self) -> str:
        return next(a for a, column in self.mapping.items() if column == self.key)


@dataclass
class Counts:
    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deactivated: int = 0
    failed: int = 0
    pages: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0
    warnings: int = 0

    def output(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in OUTPUT_KEYS}


@dataclass
class Entry:
    dn: str
    row: dict[str, Any]
    groups: list[str] = field(default_factory=list)


class LdapSync(StepType):
    kind = "ldap_sync"
    label = "LDAP sync"
    fields = (
        ConfigField("connector", "string", required=True, help="an ldap connector"),
        ConfigField("base_dn", "string", required=True, help="e.g. ou=people,dc=example,dc=org"),
        ConfigField("filter", "string", templated=True, help="(objectClass=*) when empty"),
        ConfigField("scope", "string", help="base | one | subtree (subtree)"),
        ConfigField(
            "attributes", "list", help="extra attributes to fetch (mapped ones always are)"
        ),
        ConfigField("paged_size", "int", help="entries per page of the paged search (500)"),
        ConfigField("target", "table", required=True, help="{connector, table, key}"),
        ConfigField("mapping", "table", required=True, help="{attribute = column}"),
        ConfigField(
            "multi", "string", help="multi-valued: first | join, or {attribute = rule} (first)"
        ),
        ConfigField("separator", "string", help="between joined values (;)"),
        ConfigField(
            "deletion", "string", help="entries gone from the directory: none | soft | hard"
        ),
        ConfigField("deletion_column", "string", help="soft deletion: the boolean column (active)"),
        ConfigField("groups", "table", help="{table, attribute = memberOf, value = dn | name}"),
        ConfigField("create", "bool", help="create missing target tables"),
    )

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        problems = super().validate(config)
        for name in ("connector", "base_dn", "filter", "scope", "separator", "deletion_column"):
            if config.get(name) is not None and not isinstance(config[name], str):
                problems[name] = "expected a string"
        if isinstance(config.get("base_dn"), str) and config["base_dn"]:
            try:
                parse_dn(config["base_dn"])
            except LDAPInvalidDnError:
                problems["base_dn"] = f"not a valid DN: {config['base_dn']!r}"
        templated = "{{" in str(config.get("filter")) or "{%" in str(config.get("filter"))
        if isinstance(config.get("filter"), str) and not templated:  # checked once rendered
            problem = filter_problem(config["filter"])
            if problem:
                problems["filter"] = problem
        for name, options in (("scope", SCOPES), ("deletion", DELETIONS)):
            if config.get(name) is not None and config[name] not in options:
                problems[name] = f"expected one of {', '.join(options)}"
        attributes = config.get("attributes")
        if attributes is not None and not (
            isinstance(attributes, list) and all(attribute_ok(a, wildcard=True) for a in attributes)
        ):
            problems["attributes"] = "expected a list of attribute names (or * and +)"
        size = config.get("paged_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            problems["paged_size"] = "expected a whole number ≥ 1"
        if config.get("create") is not None and not isinstance(config["create"], bool):
            problems["create"] = "expected true or false"
        problems.update(_table_problems("target", config.get("target"), TARGET_KEYS, TARGET_KEYS))
        problems.update(_mapping_problems(config))
        problems.update(_table_problems("groups", config.get("groups"), GROUP_KEYS, ("table",)))
        groups = config.get("groups")
        if isinstance(groups, dict) and groups.get("value", "dn") not in GROUP_VALUES:
            problems["groups.value"] = f"expected one of {', '.join(GROUP_VALUES)}"
        if isinstance(groups, dict) and not attribute_ok(groups.get("attribute", "memberOf")):
            problems["groups.attribute"] = "expected an attribute name, e.g. memberOf"
        return problems

    def connector_refs(self, config: dict[str, Any]) -> list[tuple[str, str, str]]:
        refs = []
        if isinstance(config.get("connector"), str):
            refs.append(("connector", config["connector"], "ldap"))
        target = config.get("target")
        if isinstance(target, dict) and isinstance(target.get("connector"), str):
            refs.append(("target.connector", target["connector"], "sql"))
        return refs

    def run(self, config: dict[str, Any], ctx: StepContext) -> dict[str, int]:
        """Fetch, convert and write; return the counts (DESIGN §8 "Step outputs")."""
        problems = self.validate(config)
        problem = filter_problem(config.get("filter") or DEFAULTS["filter"])  # rendered now
        if problem:
            problems["filter"] = problem
        if problems:
            raise StepFailed("; ".join(f"{name}: {text}" for name, text in problems.items()))
        if ctx.connectors is None:
            raise StepFailed("connectors are not available to this step")
        plan = Plan.from_config(config)
        counts = Counts()
        directory = ctx.connectors.values(plan.connector, "ldap").values
        engine = ctx.connectors.sql_engine(plan.target_connector)
        tables = prepare_tables(engine, plan, ctx)  # a missing table fails before a long search
        raw = fetch_entries(plan, directory, ctx, counts)
        entries, seen = convert_entries(raw, plan, tables, ctx, counts)
        write_entries(engine, tables, plan, entries, seen, ctx, counts)
        summary = ", ".join(f"{k} {getattr(counts, k)}" for k in OUTPUT_KEYS)
        ctx.log.info(f"synced {plan.base_dn} into {plan.table}: {summary}")
        if plan.groups:
            ctx.log.info(
                f"memberships in {plan.groups['table']}: {counts.memberships_added} added, "
                f"{counts.memberships_removed} removed"
            )
        ctx.metrics.update({k: v for k, v in vars(counts).items() if k != "warnings"})
        ctx.metrics["rows"] = counts.fetched - counts.failed  # entries synced
        return counts.output()


def filter_problem(text: str) -> str | None:
    """Say what is wrong with an LDAP filter, or None when it parses."""
    text = (text or "").strip()
    if not text:
        return "an LDAP filter is required, e.g. (objectClass=person)"
    if not text.startswith("(") or not text.endswith(")"):
        return f"an LDAP filter is wrapped in parentheses, e.g. ({text.strip('()')})"
    depth = 0
    for position, char in enumerate(text):  # parentheses in values are escaped: \28 \29
        if char == "(":
            if depth == 0 and position > 0:
                return "two filters side by side: join them with (&...) or (|...)"
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return f"unbalanced parentheses: ')' at position {position + 1} closes nothing"
    if depth:
        return f"unbalanced parentheses: {depth} '(' not closed"
    try:
        parse_filter(text, None, True, False, None, False)
    except LDAPInvalidFilterError as error:
        return f"not a valid LDAP filter: {error}"
    if "(=" in text or "(&)" in text or "(|)" in text:
        return "not a valid LDAP filter: a comparison without an attribute, or an empty (&) / (|)"
    return None


def _table_problems(name, value, known, required) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return {name: "expected a table"}
    problems = {}
    for key in value:
        if key not in known:
            problems[f"{name}.{key}"] = f"unknown field (known: {', '.join(known)})"
    for key in required:
        if not isinstance(value.get(key), str) or not value[key]:
            problems[f"{name}.{key}"] = "required"
    for key in ("table",):
        if isinstance(value.get(key), str) and not sa_name_ok(value[key], dotted=True):
            problems[f"{name}.{key}"] = "expected a table name (letters, digits, _; schema.table)"
    for key in ("key", "user_column", "group_column"):
        if isinstance(value.get(key), str) and not sa_name_ok(value[key]):
            problems[f"{name}.{key}"] = "expected a column name (letters, digits, _)"
    return problems


def _mapping_problems(config: dict[str, Any]) -> dict[str, str]:
    mapping, problems = config.get("mapping"), {}
    if mapping is None:
        return problems
    if not isinstance(mapping, dict) or not all(
        attribute_ok(a) and isinstance(c, str) and sa_name_ok(c) for a, c in mapping.items()
    ):
        return {"mapping": 'expected {attribute = "column"} with plain column names'}
    columns = list(mapping.values())
    if len(set(columns)) != len(columns):
        problems["mapping"] = "two attributes map to the same column"
    target = config.get("target")
    key = target.get("key") if isinstance(target, dict) else None
    if isinstance(key, str) and key and key not in columns:
        problems["target.key"] = f"{key!r} is not one of the mapped columns ({', '.join(columns)})"
    if config.get("deletion") == "soft":
        column = config.get("deletion_column") or DEFAULTS["deletion_column"]
        if column in columns:
            problems["deletion_column"] = f"{column!r} is also a mapped column"
        elif not sa_name_ok(column):
            problems["deletion_column"] = "expected a column name (letters, digits, _)"
    multi = config.get("multi")
    if isinstance(multi, dict):
        wrong = [a for a, rule in multi.items() if a not in mapping or rule not in MULTI_RULES]
        if wrong:
            problems["multi"] = f"per mapped attribute: first or join (check {', '.join(wrong)})"
    elif multi is not None and multi not in MULTI_RULES:
        problems["multi"] = f"expected one of {', '.join(MULTI_RULES)}"
    return problems


def attribute_ok(name: Any, wildcard: bool = False) -> bool:
    """An attribute description: a name or OID with options (userCertificate;binary)."""
    if wildcard and name in ("*", "+"):
        return True
    return isinstance(name, str) and bool(ATTRIBUTE.fullmatch(name))


def sa_name_ok(name: str, dotted: bool = False) -> bool:
    pattern = rf"{COLUMN}(\.{COLUMN})?" if dotted else COLUMN
    return bool(re.fullmatch(pattern, name))


# --- fetch -------------------------------------------------------------------------------

SEARCH_HINTS = {
    "noSuchObject": "the base DN does not exist",
    "sizeLimitExceeded": "the server's size limit stopped the search (does it page for this "
    "account?)",
    "adminLimitExceeded": "the server refused the page size: lower paged_size",
    "timeLimitExceeded": "the server's time limit stopped the search",
    "insufficientAccessRights": "the bind DN may not read there",
    "referral": "the base DN belongs to another server",
    "unwillingToPerform": "the server refused the search",
}


def check_time(ctx: StepContext) -> None:
    """Raise when the run was aborted or the step ran out of time."""
    if ctx.is_cancelled():
        raise StepCanceled("aborted")
    if time.monotonic() >= ctx.deadline:
        raise StepTimedOut(f"timed out after {ctx.timeout_seconds:.0f}s")


def fetch_entries(plan: Plan, directory: dict[str, Any], ctx: StepContext, counts: Counts):
    """Bind and run the paged search; return (dn, raw attribute values) of every entry."""
    check_time(ctx)
    timeout = int(directory.get("timeout_seconds") or 10)
    remaining = max(1, int(ctx.deadline - time.monotonic()))
    try:
        connection = open_connection(directory, receive_timeout=min(timeout, remaining))
    except DirectoryBindFailed as error:
        raise LdapBindRejected(f"{error} (connector {plan.connector})") from None
    except DirectoryError as error:
        raise StepFailed(f"{error} (connector {plan.connector})") from None
    ctx.log.info(
        f"searching {plan.base_dn} ({plan.scope}) for {plan.filter} on {plan.connector}, "
        f"{plan.paged_size} entries a page"
    )
    entries, cookie = [], None
    try:
        while True:
            check_time(ctx)  # between pages: an abort or timeout ends the step here
            connection.search(
                plan.base_dn,
                plan.filter,
                SCOPES[plan.scope],
                attributes=plan.attributes,
                paged_size=plan.paged_size,
                paged_cookie=cookie,
            )
            result = connection.result or {}
            if result.get("description") != "success":
                raise StepFailed(search_failure(plan, result))
            page = [
                (item["dn"], item["raw_attributes"])
                for item in connection.response or []
                if item.get("type") == "searchResEntry"  # AD's referrals to other partitions
            ]
            entries.extend(page)
            counts.pages += 1
            ctx.log.debug(f"page {counts.pages}: {len(page)} entries")
            # no control back: the server ignored paging and sent everything at once
            control = (result.get("controls") or {}).get(PAGED_RESULTS_OID)
            cookie = control["value"]["cookie"] if control else None
            if not cookie:
                break
    except (LDAPException, OSError) as error:
        raise StepFailed(f"search of {plan.base_dn} failed: {error}") from None
    finally:
        close_connection(connection)
    counts.fetched = len(entries)
    ctx.log.info(f"fetched {len(entries)} entries in {counts.pages} page(s)")
    return entries


def search_failure(plan: Plan, result: dict[str, Any]) -> str:
    description = str(result.get("description") or "failed")
    detail = "; ".join(
        text for text in (SEARCH_HINTS.get(description), str(result.get("message") or "")) if text
    )
    return f"search of {plan.base_dn} failed: {description}" + (f" ({detail})" if detail else "")


# --- convert -----------------------------------------------------------------------------


@dataclass
class Tables:
    users: sa.Table
    groups: sa.Table | None


def fit(value: str | None, column: sa.Column, attribute: str) -> Any:
    """Convert a directory value for ``column``; ValueError says why it does not fit."""
    if value is None or value == "":
        if not column.nullable and column.server_default is None:
            raise ValueError(f"no {attribute}, and column {column.name} is NOT NULL")
        return None
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    shown = value if len(value) <= 40 else value[:37] + "..."
    try:
        if python_type is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[
                value.lower()
            ]
        if python_type is int:  # MariaDB reflects BOOLEAN as TINYINT
            flags = {"true": 1, "false": 0}
            return flags[value.lower()] if value.lower() in flags else int(value)
        if python_type is Decimal:
            return Decimal(value)
        if python_type is float:
            return float(value)
        if python_type is datetime:
            if value in AD_NEVER:
                return None
            moment = directory_time(value)
            aware = getattr(column.type, "timezone", False)
            return moment if aware else moment.astimezone(UTC).replace(tzinfo=None)
        if python_type is date:
            return directory_time(value).date()
    except (KeyError, ValueError, InvalidOperation):
        expected = getattr(python_type, "__name__", str(python_type))
        raise ValueError(f"{attribute} {shown!r} is not a {expected} for {column.name}") from None
    length = getattr(column.type, "length", None)
    if python_type is str and length and len(value) > length:
        raise ValueError(
            f"{attribute} is {len(value)} characters; column {column.name} holds {length}"
        )
    return value


def prepare_tables(engine: sa.Engine, plan: Plan, ctx: StepContext) -> Tables:
    """Reflect the target tables (created first with ``create = true``); check their columns."""
    metadata = sa.MetaData()
    users = _table(metadata, plan.table, _user_columns(plan))
    groups = None
    if plan.groups:
        g = plan.groups
        groups = _table(
            metadata,
            g["table"],
            [
                sa.Column(g["user_column"], sa.String(255), primary_key=True),
                # 255 + 500 characters stay under MariaDB's 3072-byte key in utf8mb4
                sa.Column(g["group_column"], sa.String(500), primary_key=True),
            ],
        )
    try:
        if plan.create:
            with engine.begin() as connection:
                for table in (users, groups):
                    if table is not None and not _exists(connection, table):
                        table.create(connection)
                        ctx.log.info(f"created table {table.fullname} on {plan.target_connector}")
        with engine.connect() as connection:
            reflected = Tables(
                _reflect(connection, users, plan),
                _reflect(connection, groups, plan) if groups is not None else None,
            )
    except sa.exc.SQLAlchemyError as error:
        raise StepFailed(f"target {plan.target_connector}: {sql_reason(error)}") from None
    needed = [*plan.mapping.values(), *([plan.deletion_column] if plan.deletion_column else [])]
    _require_columns(reflected.users, needed)
    if reflected.groups is not None:
        _require_columns(
            reflected.groups, [plan.groups["user_column"], plan.groups["group_column"]]
        )
    return reflected


def _user_columns(plan: Plan) -> list[sa.Column]:
    columns = [sa.Column(plan.key, sa.String(255), primary_key=True)]
    columns += [sa.Column(c, sa.Text) for c in plan.mapping.values() if c != plan.key]
    if plan.deletion_column:
        columns.append(
            sa.Column(plan.deletion_column, sa.Boolean, nullable=False, server_default=sa.true())
        )
    return columns


def _table(metadata: sa.MetaData, name: str, columns: list[sa.Column]) -> sa.Table:
    schema, _, table = name.rpartition(".")
    return sa.Table(table, metadata, *columns, schema=schema or None)


def _exists(connection: sa.Connection, table: sa.Table) -> bool:
    return sa.inspect(connection).has_table(table.name, schema=table.schema)


def _reflect(connection: sa.Connection, wanted: sa.Table, plan: Plan) -> sa.Table:
    try:
        return sa.Table(wanted.name, sa.MetaData(), schema=wanted.schema, autoload_with=connection)
    except sa.exc.NoSuchTableError:
        raise StepFailed(
            f"table {wanted.fullname} does not exist on {plan.target_connector} "
            "(create it, or set create = true)"
        ) from None


def _require_columns(table: sa.Table, needed: list[str]) -> None:
    missing = [c for c in needed if c not in table.c]
    if missing:
        raise StepFailed(
            f"table {table.fullname} has no column {', '.join(missing)} "
            f"(it has {', '.join(table.c.keys())})"
        )


def sql_reason(error: Exception) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def convert_entries(raw, plan: Plan, tables: Tables, ctx: StepContext, counts: Counts):
    """Fit every entry to the target's columns; return the entries and every key seen.

    An entry that does not fit is logged with its DN, counted as failed and skipped. Its key,
    when it has one, still counts as seen: a user in the directory is never deactivated
    because their row could not be written.
    """
    users, key_attribute = tables.users, plan.key_attribute
    entries, seen, owners = [], set(), {}
    for dn, attributes in raw:
        values = {name.lower(): items for name, items in attributes.items()}
        key = None
        try:
            key_text = attribute_text(values, key_attribute, plan)
            if not key_text:
                raise ValueError(f"no {key_attribute} (the key attribute)")
            key = fit(key_text, users.c[plan.key], key_attribute)
            if key in owners:
                raise ValueError(f"{plan.key} {key!r} is also the key of {owners[key]}")
            row = {
                column: fit(attribute_text(values, attribute, plan), users.c[column], attribute)
                for attribute, column in plan.mapping.items()
            }
            groups = group_values(values, plan, tables) if plan.groups else []
        except ValueError as problem:
            if key is not None:
                seen.add(key)
            record_skip(ctx, counts, dn, str(problem))
            continue
        seen.add(key)
        owners[key] = dn
        entries.append(Entry(dn, row, groups))
    return entries, seen


def attribute_text(values: dict[str, list], attribute: str, plan: Plan) -> str | None:
    """One attribute's values as one text: the first, or all joined (``multi``)."""
    items = [decode_value(attribute, v) for v in values.get(attribute.lower(), [])]
    if not items:
        return None
    if plan.multi.get(attribute.lower(), "first") == "first":
        return items[0]
    return plan.separator.join(items)


def group_values(values: dict[str, list], plan: Plan, tables: Tables) -> list[str]:
    attribute, column = plan.groups["attribute"], tables.groups.c[plan.groups["group_column"]]
    found = []
    for raw in values.get(attribute.lower(), []):
        dn = decode_value(attribute, raw)
        if plan.groups["value"] == "name":
            try:
                dn = parse_dn(dn)[0][1]
            except (LDAPInvalidDnError, IndexError):
                raise ValueError(f"{attribute} {dn!r} is not a DN") from None
        value = fit(dn, column, attribute)
        if value not in found:
            found.append(value)
    return found


def record_skip(ctx: StepContext, counts: Counts, dn: str, reason: str) -> None:
    counts.failed += 1
    counts.warnings += 1
    if counts.warnings <= MAX_WARNINGS:
        ctx.log.warning(f"skipped {dn}: {reason}")
    elif counts.warnings == MAX_WARNINGS + 1:
        ctx.log.warning(f"more than {MAX_WARNINGS} entries skipped; the rest are only counted")


# --- write -------------------------------------------------------------------------------


def write_entries(engine, tables: Tables, plan: Plan, entries, seen, ctx, counts) -> None:
    """Upsert, deactivate or delete, and replace memberships, all in one transaction."""
    users = tables.users
    columns = [*plan.mapping.values(), *([plan.deletion_column] if plan.deletion_column else [])]
    try:
        with engine.connect() as connection, connection.begin():
            if connection.dialect.name == "sqlite":
                # take the write lock first: a transaction that reads and then writes cannot
                # upgrade once another writer (the run log) has committed in between
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            existing = {
                row[0]: dict(zip(columns, row[1:], strict=True))
                for row in connection.execute(
                    sa.select(users.c[plan.key], *[users.c[c] for c in columns])
                )
            }
            inserts, updates, unchanged = [], [], []
            for entry in entries:
                if plan.deletion_column:
                    entry.row[plan.deletion_column] = True
                old = existing.get(entry.row[plan.key])
                if old is None:
                    inserts.append(entry)
                elif all(same(old[c], entry.row[c]) for c in columns):
                    unchanged.append(entry)
                else:
                    updates.append(entry)
            counts.unchanged = len(unchanged)
            created = apply_batches(
                connection, users.insert(), inserts, lambda e: e.row, ctx, counts, "insert"
            )
            counts.created = len(created)
            update = (
                sa.update(users)
                .where(users.c[plan.key] == sa.bindparam("k_"))
                .values({c: sa.bindparam(f"v_{c}") for c in columns if c != plan.key})
            )
            updated = apply_batches(
                connection,
                update,
                updates,
                lambda e: (
                    {"k_": e.row[plan.key]} | {f"v_{c}": e.row[c] for c in columns if c != plan.key}
                ),
                ctx,
                counts,
                "update",
            )
            counts.updated = len(updated)
            gone = retire_rows(connection, users, plan, existing, seen, ctx, counts)
            if tables.groups is not None:
                synced = [*unchanged, *created, *updated]
                replace_memberships(connection, tables.groups, plan, synced, gone, ctx, counts)
            check_time(ctx)  # the last chance to roll everything back
    except sa.exc.SQLAlchemyError as error:
        raise StepFailed(f"writing to {plan.table} failed: {sql_reason(error)}") from None


def same(old: Any, new: Any) -> bool:
    """Whether a stored value already equals the new one (drivers differ on bools and times)."""
    if old is None or new is None:
        return old is new
    if isinstance(old, bool) or isinstance(new, bool):
        return bool(old) == bool(new)
    if isinstance(old, datetime) and isinstance(new, datetime):
        return _naive_utc(old) == _naive_utc(new)
    if isinstance(old, Decimal) or isinstance(new, Decimal):
        return Decimal(str(old)) == Decimal(str(new))
    return old == new


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def apply_batches(connection, statement, items, params, ctx, counts, what, on_failure=None):
    """Execute in batches, each in a savepoint; a failing batch is redone row by row so one
    bad row is skipped (and named) instead of failing the rest. Return the items written."""
    done = []
    for start in range(0, len(items), WRITE_BATCH):
        check_time(ctx)
        batch = items[start : start + WRITE_BATCH]
        try:
            with connection.begin_nested():
                connection.execute(statement, [params(item) for item in batch])
            done.extend(batch)
            continue
        except (sa.exc.IntegrityError, sa.exc.DataError):
            pass
        for item in batch:
            try:
                with connection.begin_nested():
                    connection.execute(statement, [params(item)])
                done.append(item)
            except (sa.exc.IntegrityError, sa.exc.DataError) as error:
                if on_failure is not None:
                    on_failure(item, sql_reason(error))
                else:
                    record_skip(ctx, counts, item.dn, f"{what} failed: {sql_reason(error)}")
    return done


def retire_rows(connection, users, plan: Plan, existing, seen, ctx, counts) -> set:
    """Deactivate (soft) or delete (hard) rows whose key left the directory; return the keys."""
    gone = {key for key in existing if key not in seen}
    if plan.deletion == "none" or not gone:
        return set()
    if not seen:
        verb = "deactivate" if plan.deletion == "soft" else "delete"
        raise StepFailed(
            f"the directory returned no entries; refusing to {verb} all {len(gone)} rows of "
            f"{plan.table} (check base_dn and filter, or set deletion = none)"
        )
    if plan.deletion == "soft":
        gone = {key for key in gone if existing[key][plan.deletion_column]}
        statement = sa.update(users).values({plan.deletion_column: False})
    else:
        statement = sa.delete(users)
    keys = sorted(gone, key=str)
    for start in range(0, len(keys), WRITE_BATCH):
        check_time(ctx)
        chunk = keys[start : start + WRITE_BATCH]
        connection.execute(statement.where(users.c[plan.key].in_(chunk)))
    counts.deactivated = len(keys)
    if keys:
        verb = "deactivated" if plan.deletion == "soft" else "deleted"
        shown = ", ".join(str(k) for k in keys[:10]) + (" …" if len(keys) > 10 else "")
        ctx.log.info(f"{verb} {len(keys)} rows gone from the directory: {shown}")
    return gone if plan.deletion == "hard" else set()


def replace_memberships(connection, table, plan: Plan, synced, deleted, ctx, counts) -> None:
    """Make the synced users' memberships what the directory says (deleted users lose theirs)."""
    user_column, group_column = plan.groups["user_column"], plan.groups["group_column"]
    users = {entry.row[plan.key]: entry for entry in synced}
    have = {
        tuple(row)
        for row in connection.execute(sa.select(table.c[user_column], table.c[group_column]))
    }
    wanted = {(key, group) for key, entry in users.items() for group in entry.groups}
    stale = sorted(
        (pair for pair in have if (pair[0] in users or pair[0] in deleted) and pair not in wanted),
        key=str,
    )
    fresh = sorted(wanted - have, key=str)

    def warn(pair, reason):
        ctx.log.warning(f"membership {pair[0]} → {pair[1]} not written: {reason}")

    removed = apply_batches(
        connection,
        sa.delete(table).where(
            table.c[user_column] == sa.bindparam("u_"),
            table.c[group_column] == sa.bindparam("g_"),
        ),
        stale,
        lambda pair: {"u_": pair[0], "g_": pair[1]},
        ctx,
        counts,
        "delete",
        on_failure=warn,
    )
    added = apply_batches(
        connection,
        table.insert(),
        fresh,
        lambda pair: {user_column: pair[0], group_column: pair[1]},
        ctx,
        counts,
        "insert",
        on_failure=warn,
    )
    counts.memberships_added, counts.memberships_removed = len(added), len(removed)
