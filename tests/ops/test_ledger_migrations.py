"""Migrations of the usage ledger stay online on PostgreSQL (docs/production.md, "Upgrades").

The ledger (quotas_usageevent) is the one table that grows without bound, and every request
writes to it: an operation that rewrites it or locks out writes while it scans (a plain CREATE
INDEX, a constraint's validation, a type change) stops the gateway for as long as the table is
big. This walks the migration graph and refuses those operations on the ledger in any migration
but the ones listed in GRANDFATHERED, which ran while the ledger was new.

What it cannot see: RunPython and RunSQL code that touches the ledger without naming it (a
backfill belongs in a batched management command, not a migration; the docs say so).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import connection, migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState

LEDGER = ("quotas", "usageevent")
# (migration, operation) found unsafe and accepted: 0005's partial index was built when no row had a
# prompt id yet, on ledgers of test size. Never add to this list; write the migration online instead.
GRANDFATHERED = {("quotas", "0005_usageevent_prompt", "AddIndex usageevent_prompt")}
# Operations that change no table (state only) or are fast on PostgreSQL 11+ whatever the size.
HARMLESS = (migrations.AlterModelOptions, migrations.AlterModelManagers, migrations.RemoveField)


def _touches_ledger(app_label: str, operation: Any) -> bool:
    name = getattr(operation, "model_name", None) or getattr(operation, "name", None)
    return app_label == LEDGER[0] and str(name).lower() == LEDGER[1]


def _label(operation: Any) -> str:
    detail = getattr(getattr(operation, "index", None), "name", None) or getattr(operation, "name", "")
    return f"{type(operation).__name__} {detail}".strip()


def problems(migration: migrations.Migration, state: ProjectState) -> list[str]:
    """Why each operation of ``migration`` on the ledger is not online-safe (empty: all are).

    ``state`` is the project state before the migration (to compare an altered field with the old one).
    """
    found = []
    for operation in migration.operations:
        ops = (
            operation.database_operations
            if isinstance(operation, migrations.SeparateDatabaseAndState)
            else [operation]
        )
        for op in ops:
            if isinstance(op, migrations.RunSQL):
                sql = str(op.sql).lower()
                if "quotas_usageevent" in sql and not any(
                    w in sql for w in ("concurrently", "not valid", "validate constraint")
                ):
                    found.append(
                        f"{_label(op)}: SQL on the ledger that is neither CONCURRENTLY nor NOT VALID"
                    )
                continue
            if not _touches_ledger(migration.app_label, op):
                continue
            if isinstance(op, (migrations.CreateModel, *HARMLESS)):
                continue  # creating the table: it is empty
            why = _why(op, migration, state)
            if why:
                found.append(f"{_label(op)}: {why}")
    return found


def _why(op: Any, migration: migrations.Migration, state: ProjectState) -> str | None:
    if isinstance(op, AddIndexConcurrently | RemoveIndexConcurrently):
        return None if not migration.atomic else "CONCURRENTLY needs `atomic = False` on the migration"
    if isinstance(op, migrations.AddIndex):
        return "a plain CREATE INDEX blocks writes while it scans: use AddIndexConcurrently"
    if isinstance(op, migrations.RemoveIndex):
        return "use RemoveIndexConcurrently"
    if isinstance(op, migrations.AddField):
        field = op.field
        indexed = getattr(field, "db_index", False)
        if field.unique or indexed or (field.is_relation and getattr(field, "db_constraint", False)):
            return "the new column gets an index or constraint built under a lock: add it bare, index concurrently"
        if not field.null and not field.has_default() and field.db_default is models.NOT_PROVIDED:
            return "NOT NULL without a default"
        return None
    if isinstance(op, migrations.AlterField):
        old = state.models[LEDGER].fields[op.name]
        old_params, new_params = old.db_parameters(connection), op.field.db_parameters(connection)
        if old_params != new_params or old.null != op.field.null:
            return "changes the column's type or nullability (a rewrite or a full scan under lock)"
        if (op.field.unique and not old.unique) or (
            getattr(op.field, "db_index", False) and not old.db_index
        ):
            return "adds an index or unique constraint under a lock"
        return None
    return f"{type(op).__name__} is not known to be online-safe on the ledger"


@pytest.mark.postgres
def test_every_ledger_migration_is_online_safe() -> None:
    assert connection.vendor == "postgresql"  # db_parameters are PostgreSQL's
    loader = MigrationLoader(None, ignore_no_migrations=True)
    seen = []
    for key in sorted(loader.graph.nodes):
        migration = loader.graph.nodes[key]
        state = loader.project_state(key, at_end=False)
        for problem in problems(migration, state):
            seen.append((key[0], key[1], problem.split(":")[0]))
            assert (key[0], key[1], problem.split(":")[0]) in GRANDFATHERED, f"{key[0]}.{key[1]}: {problem}"
    assert set(seen) == GRANDFATHERED  # the list holds no stale entry


@pytest.mark.postgres
def test_the_check_refuses_what_would_lock_the_ledger() -> None:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    state = loader.project_state(("quotas", "0005_usageevent_prompt"), at_end=True)
    index = models.Index(fields=["model", "created_at"], name="usageevent_model_time")

    def migration(*ops: Any, atomic: bool = True) -> migrations.Migration:
        cls = type("Migration", (migrations.Migration,), {"operations": list(ops), "atomic": atomic})
        return cls("9999_test", "quotas")

    assert problems(migration(AddIndexConcurrently("usageevent", index), atomic=False), state) == []
    assert (
        problems(
            migration(
                migrations.AddField("usageevent", "region", models.CharField(max_length=8, default=""))
            ),
            state,
        )
        == []
    )
    bad = [
        migration(migrations.AddIndex("usageevent", index)),
        migration(AddIndexConcurrently("usageevent", index)),  # inside a transaction: PostgreSQL refuses
        migration(migrations.AlterField("usageevent", "latency_ms", models.BigIntegerField(default=0))),
        migration(
            migrations.AddField(
                "usageevent", "tenant", models.CharField(max_length=8, default="", db_index=True)
            )
        ),
        migration(
            migrations.AddConstraint(
                "usageevent", models.CheckConstraint(condition=models.Q(status__gte=0), name="s")
            )
        ),
        migration(migrations.RunSQL("CREATE INDEX x ON quotas_usageevent (model)")),
    ]
    for m in bad:
        assert problems(m, state), m.operations
