"""One table out of a recovered copy: its definition read there, a new table of that shape
created in another database, and its rows streamed across (COPY TO into COPY FROM, nothing
on disk); or the rows written to a file (CSV, or pg_dump's custom format).

What the new table keeps of the old one: the columns in order, each with its type as
`format_type` spells it (schema-qualified: read with search_path = pg_catalog), its
collation when not the type's own, NOT NULL, and its default when that default depends on
no object of the database (a constant, now(), gen_random_uuid()). Left out: defaults that
use a sequence (serial, identity) or a user function (they would tie the copy to production's
objects, or advance production's sequences), identity and generation (the values are kept as
plain data), constraints (primary key, unique, check, foreign keys), indexes, triggers,
policies, grants and ownership. A restored table is evidence to compare and copy back from,
not a replacement; whoever copies it back chooses what to rebuild.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault import childenv
from medvault.errors import RecoveryFailed, RestoreTargetError, SnapshotNotFound, UsageError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

# The first object id a database gives to objects users create (FirstNormalObjectId).
FIRST_USER_OID = 16384
COPY_KINDS = {"r": "table", "p": "partitioned table"}


@dataclass(frozen=True)
class TableName:
    """A schema-qualified table name, parsed as PostgreSQL parses identifiers."""

    schema: str
    name: str

    def identifier(self) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


def quote_ident(part: str) -> str:
    """As PostgreSQL's quote_ident: bare when it reads back the same, else in double quotes."""
    plain = (
        part != ""
        and (part[0].islower() or part[0] == "_")
        and all(c.islower() or c.isdigit() or c in "_$" for c in part)
        and part.isascii()
    )
    return part if plain else '"' + part.replace('"', '""') + '"'


def parse_table_name(text: str, default_schema: str = "public") -> TableName:
    """SCHEMA.TABLE or TABLE, each part bare (folded to lower case, as PostgreSQL does) or in
    double quotes (kept as written, "" for a quote): `"Klinik"."Verordnungen_ä"`."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, part = i + 1, []
            while True:
                if j >= n:
                    raise UsageError(f"table name {text!r}: a quoted name is not closed")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        part.append('"')
                        j += 2
                        continue
                    break
                part.append(text[j])
                j += 1
            name, i = "".join(part), j + 1
        else:
            j = i
            while j < n and text[j] not in '."':
                j += 1
            name, i = text[i:j].strip().lower(), j
        if not name:
            raise UsageError(f'table name {text!r}: give SCHEMA.TABLE (quote names with ")')
        parts.append(name)
        if i == n:
            break
        if text[i] != "." or len(parts) == 2:
            raise UsageError(f'table name {text!r}: give SCHEMA.TABLE (quote names with ")')
        i += 1
    if len(parts) == 1:
        return TableName(default_schema, parts[0])
    return TableName(parts[0], parts[1])


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), schema-qualified where needed
    not_null: bool
    default: str | None  # kept only when it depends on no object of the database
    collation: str | None  # a collation other than the type's own, qualified
    default_left_out: bool = False


@dataclass(frozen=True)
class TableDefinition:
    table: TableName
    kind: str  # relkind
    columns: tuple[Column, ...]

    @property
    def left_out_defaults(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.default_left_out)


_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid),
       EXISTS (SELECT 1 FROM pg_depend p
               WHERE p.classid = 'pg_attrdef'::regclass AND p.objid = d.oid
                 AND p.refobjid >= %(first_user_oid)s
                 AND NOT (p.refclassid = 'pg_class'::regclass AND p.refobjid = d.adrelid)),
       CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def read_definition(conn: psycopg.Connection[Any], table: TableName, when: str) -> TableDefinition:
    """The table's columns as the recovered copy holds them; SnapshotNotFound (one line) when
    it holds no such table. `when` says which moment the copy is of, for that message."""
    conn.execute("SET search_path = pg_catalog")  # format_type and pg_get_expr qualify names
    found = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (table.schema, table.name),
    ).fetchone()
    if found is None:
        raise SnapshotNotFound(f"table {table} did not exist {when}")
    oid, kind = found
    if kind not in COPY_KINDS:
        raise UsageError(
            f"{table} is not a table (relkind {kind!r}) {when}; only tables are copied"
        )
    columns = []
    rows = conn.execute(_COLUMNS, {"oid": oid, "first_user_oid": FIRST_USER_OID}).fetchall()
    for name, type_, not_null, default, uses_objects, collation in rows:
        keep = default is not None and not uses_objects
        columns.append(
            Column(
                name=name,
                type=type_,
                not_null=bool(not_null),
                default=default if keep else None,
                collation=collation,
                default_left_out=default is not None and not keep,
            )
        )
    return TableDefinition(table, kind, tuple(columns))


def create_statement(definition: TableDefinition, into: TableName) -> sql.Composed:
    """CREATE TABLE into (...) with the columns the definition keeps. Types and defaults are
    SQL text the recovered server wrote itself (format_type, pg_get_expr)."""
    from psycopg import sql

    parts = []
    for col in definition.columns:
        part = [sql.Identifier(col.name), sql.SQL(col.type)]
        if col.collation:
            part.append(sql.SQL("COLLATE " + col.collation))
        if col.not_null:
            part.append(sql.SQL("NOT NULL"))
        if col.default is not None:
            part.append(sql.SQL("DEFAULT " + col.default))
        parts.append(sql.SQL(" ").join(part))
    return sql.SQL("CREATE TABLE {} ({})").format(into.identifier(), sql.SQL(", ").join(parts))


def check_new_table(conn: psycopg.Connection[Any], into: TableName, database: str) -> None:
    """Refuse a name already taken in the target database, or a schema it lacks: before any
    recovery starts, so a typo costs nothing."""
    schema = conn.execute(
        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (into.schema,)
    ).fetchone()
    if schema is None:
        raise RestoreTargetError(
            f"schema {quote_ident(into.schema)} does not exist in database {database}; "
            "create it first or choose another --into"
        )
    taken = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (into.schema, into.name),
    ).fetchone()
    if taken is not None:
        raise RestoreTargetError(
            f"{into} already exists in database {database}; choose a new name with --into "
            "(an existing table is never replaced)"
        )


def _select(definition: TableDefinition) -> sql.Composed:
    from psycopg import sql

    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in definition.columns)
    only = sql.SQL("ONLY ") if definition.kind == "r" else sql.SQL("")
    return sql.SQL("SELECT {} FROM {}{}").format(names, only, definition.table.identifier())


def copy_table(
    source: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    definition: TableDefinition,
    into: TableName,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Create `into` on the target and stream the rows across, in one transaction of the
    target's (a failure leaves no half-filled table behind). The rows copied."""
    from psycopg import sql

    source.execute("SET row_security = off")
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in definition.columns)
    copy_out = sql.SQL("COPY ({}) TO STDOUT").format(_select(definition))
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(into.identifier(), names)
    with target.transaction():
        target.execute(create_statement(definition, into))
        with (
            source.cursor() as out_cursor,
            out_cursor.copy(copy_out) as out,
            target.cursor() as in_cursor,
        ):
            with in_cursor.copy(copy_in) as into_copy:
                for block in out:
                    into_copy.write(block)
                    if on_progress is not None:
                        on_progress(len(block))
            rows = in_cursor.rowcount
    return int(rows)


def new_file(path: str) -> int:
    """A new file for the table's rows, 0600; an existing one is never overwritten."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise RestoreTargetError(f"{path} already exists; choose a new --to-file") from None
    except OSError as exc:
        raise RestoreTargetError(f"cannot create {path}: {exc.strerror}") from None


def write_csv(source: psycopg.Connection[Any], definition: TableDefinition, fd: int) -> int:
    """The rows as CSV with a header line into `fd` (COPY's own CSV); the rows written."""
    from psycopg import sql

    source.execute("SET row_security = off")
    copy_out = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(_select(definition))
    with source.cursor() as cursor:
        with cursor.copy(copy_out) as out:
            for block in out:
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
        return int(cursor.rowcount)


def dump_custom(
    pg_dump: str,
    conninfo: str,
    table: TableName,
    fd: int,
) -> None:
    """pg_dump -Fc of the one table (definition and rows as pg_dump writes them) into `fd`."""
    # pg_dump's -t takes a pattern: quoted parts are matched literally, case and dots kept.
    pattern = f'"{table.schema.replace(chr(34), chr(34) * 2)}".' + (
        f'"{table.name.replace(chr(34), chr(34) * 2)}"'
    )
    with childenv.libpq_client(conninfo) as client:
        done = subprocess.run(
            [pg_dump, "-Fc", "--no-password", "-t", pattern, f"--dbname={client.dsn}"],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.PIPE,
            env=client.env,
            pass_fds=client.pass_fds,
            check=False,
        )
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RecoveryFailed(
            f"pg_dump of {table} from the recovered copy failed: "
            f"{reason[-1] if reason else f'exit {done.returncode}'}"
        )


def remove_partial(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
