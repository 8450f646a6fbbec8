"""The `medvault` program's entry point.

PostgreSQL starts `wal-push` once per WAL file and `wal-fetch` once per file it replays, so
those two are parsed here and run without Typer, pydantic or the rest of the CLI (together
they cost more than the push itself). The root options are accepted before or after the
command, as cli/main.py accepts them. Every other command, and --help or any option this
parser does not know, goes to cli/main.py unchanged.
"""

from __future__ import annotations

import sys

_ROOT_OPTIONS = {
    "--config": "config",
    "-c": "config",
    "--repo": "repo",
    "-r": "repo",
    "--password-file": "password_file",
    "--password-command": "password_command",
    "--key-file": "key_file",
}
_FAST = ("wal-push", "wal-fetch")
_HELP = ("-h", "--help")


def _root_options(argv: list[str]) -> tuple[dict[str, str], int] | None:
    """Root options before the command, and the command's position; None if unusual."""
    values: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        option, eq, value = argv[i].partition("=")
        if option not in _ROOT_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        values[_ROOT_OPTIONS[option]] = value
        i += 1
    return values, i


def _options_after(args: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """Root options given after the command (`wal-push --repo X SOURCE PATH`), and the other
    arguments; None when one lacks its value."""
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        option, eq, value = args[i].partition("=")
        if option not in _ROOT_OPTIONS:
            rest.append(args[i])
        elif eq:
            values[_ROOT_OPTIONS[option]] = value
        elif i + 1 < len(args):
            values[_ROOT_OPTIONS[option]] = args[i + 1]
            i += 1
        else:
            return None
        i += 1
    return values, rest


def _run_fast(argv: list[str]) -> int | None:
    found = _root_options(argv)
    if found is None or found[1] >= len(argv) or argv[found[1]] not in _FAST:
        return None
    before, position = found
    command = argv[position]
    if any(a in _HELP for a in argv[position + 1 :]):
        return None
    after = _options_after(argv[position + 1 :])
    clash = after is not None and any(before.get(k, v) != v for k, v in after[0].items())
    if after is None or clash:
        if command == "wal-fetch":
            return _fetch_usage()
        return None  # Typer says what is wrong
    values, args = {**before, **after[0]}, after[1]
    from medvault.cli import wal

    options = wal.GlobalOptions(**values)
    if command == "wal-push":
        force_async = "--async" in args
        rest = [a for a in args if a != "--async"]
        if len(rest) != 2 or any(a.startswith("-") for a in rest):
            return None  # Typer says what is wrong
        return wal.fast_push(options, rest[0], rest[1], force_async)
    if len(args) != 3 or any(a.startswith("-") for a in args):
        return _fetch_usage()
    return wal.run_fetch(options, args[0], args[1], args[2])


def _fetch_usage() -> int:
    """Not a plain "not archived": a broken restore_command must stop recovery."""
    from medvault.cli import wal
    from medvault.errors import EXIT_ARCHIVE_UNUSABLE

    wal.warn("medvault: usage: medvault [--config FILE] wal-fetch SOURCE NAME DEST")
    return EXIT_ARCHIVE_UNUSABLE


def forbid_core_dumps() -> None:
    """No core file of this process: it would hold the master key, passphrases and patient
    data in plaintext. The hard limit too, so nothing later in this process (or a program it
    starts) raises it again."""
    import contextlib
    import resource

    with contextlib.suppress(ValueError, OSError):  # nothing to lower where it is unsupported
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> None:
    forbid_core_dumps()
    code = _run_fast(sys.argv[1:])
    if code is None:
        from medvault.cli.main import main as full_main

        full_main()
        return
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
