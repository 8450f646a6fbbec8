"""Table name patterns as pg_dump's -t and -T read them (psql's patterns), turned into the
same SQL condition pg_dump builds, so medvault knows which tables a selective dump holds
before pg_dump runs: it counts their rows and refuses a pattern matching nothing.

The rules (PostgreSQL's `patternToSQLRegex`): `*` is any text, `?` one character, `.`
separates schema from name (a third part names the database), unquoted letters are folded to
lower case, text in double quotes is literal (`""` is a quote), `$` is always literal, other
regular expression characters work outside quotes. A pattern without a schema matches the
tables visible on the search path, as `pg_table_is_visible` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.errors import UsageError

if TYPE_CHECKING:
    import psycopg

_REGEX_SPECIAL = set("|*+?()[]{}.^$\\")


def _regexes(pattern: str) -> list[str]:
    """The anchored regular expressions of a pattern's dotted parts (at most three)."""
    parts = ["^("]
    inquotes = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == '"':
            if inquotes and pattern[i + 1 : i + 2] == '"':
                parts[-1] += '"'
                i += 1
            else:
                inquotes = not inquotes
        elif not inquotes and "A" <= ch <= "Z":
            parts[-1] += ch.lower()
        elif not inquotes and ch == "*":
            parts[-1] += ".*"
        elif not inquotes and ch == "?":
            parts[-1] += "."
        elif not inquotes and ch == ".":
            if len(parts) >= 3:
                raise UsageError(f"table pattern {pattern!r}: too many dotted names")
            parts[-1] += ")$"
            parts.append("^(")
        elif ch == "$":
            parts[-1] += "\\$"
        else:
            # Quoted text is literal; "[]" is more likely an array type than a bracket.
            literal = inquotes and ch in _REGEX_SPECIAL
            if literal or (ch == "[" and pattern[i + 1 : i + 2] == "]"):
                parts[-1] += "\\"
            parts[-1] += ch
        i += 1
    parts[-1] += ")$"
    return parts


def table_condition(pattern: str, database: str) -> tuple[str, list[str]]:
    """A WHERE condition over `pg_class c` and `pg_namespace n` selecting the relations a
    pg_dump -t/-T pattern names in `database`, with its parameters."""
    if not pattern.strip():
        raise UsageError("a table pattern is empty")
    regexes = _regexes(pattern)
    if len(regexes) == 3:
        # pg_dump refuses cross-database references; the database part must be this one.
        dbname = regexes.pop(0)[2:-2]
        if dbname.replace("\\", "") != database:
            raise UsageError(f"table pattern {pattern!r} names another database than {database}")
    name = regexes[-1]
    conditions: list[str] = []
    params: list[str] = []
    if name != "^(.*)$":
        conditions.append("c.relname ~ %s COLLATE pg_catalog.default")
        params.append(name)
    if len(regexes) == 2:
        if regexes[0] != "^(.*)$":
            conditions.append("n.nspname ~ %s COLLATE pg_catalog.default")
            params.append(regexes[0])
    else:
        conditions.append("pg_catalog.pg_table_is_visible(c.oid)")
    return " AND ".join(conditions) or "true", params


# The relations pg_dump's -t and -T match: tables, sequences, views, materialized views,
# foreign tables and partitioned tables.
DUMPABLE_RELKINDS = ("r", "S", "v", "m", "f", "p")


def matching_sql(pattern: str, database: str, relkinds: tuple[str, ...]) -> tuple[str, list[Any]]:
    """A query for (oid, schema, name, relkind) of the relations of `relkinds` a pattern
    matches."""
    condition, params = table_condition(pattern, database)
    query = (
        "SELECT c.oid, n.nspname, c.relname, c.relkind::text"
        " FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind::text = ANY(%s) AND {condition}"
        " ORDER BY n.nspname, c.relname"
    )
    return query, [list(relkinds), *params]


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    relkind: str

    @property
    def key(self) -> str:
        """How snapshots name a table: schema.name, unquoted."""
        return f"{self.schema}.{self.name}"


def matching(
    conn: psycopg.Connection[Any],
    pattern: str,
    database: str,
    relkinds: tuple[str, ...] = DUMPABLE_RELKINDS,
) -> list[Relation]:
    """The relations a pattern matches, in schema and name order."""
    query, params = matching_sql(pattern, database, relkinds)
    rows = conn.execute(query, params).fetchall()
    return [Relation(int(r[0]), r[1], r[2], r[3]) for r in rows]


def no_match(pattern: str, database: str, excluded: bool = False) -> UsageError:
    what = "exclude-table pattern" if excluded else "table pattern"
    return UsageError(f"{what} {pattern} matches no table in database {database}")
