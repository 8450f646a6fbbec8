"""The `medvault` command. Exceptions become one line on stderr here, and their exit codes
come from errors.exit_code_for (docs/operations.md), as on the wal-push/wal-fetch fast path."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import traceback
from typing import Any

import typer

from medvault import __version__
from medvault.cli import (
    alerts_cmd,
    audit_cmd,
    backup,
    catalog_cmd,
    copy_cmd,
    drill_cmd,
    forget,
    metrics_cmd,
    pg_recovery,
    prune_cmd,
    repo_cmds,
    restore,
    restore_table_cmd,
    schedule_cmd,
    serve_cmd,
    snapshots,
    status,
    wal,
)
from medvault.cli.context import CliContext, warn
from medvault.cli.entry import forbid_core_dumps
from medvault.credentials import CredentialOptions
from medvault.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    MedvaultError,
    UsageError,
    exit_code_for,
)

app = typer.Typer(
    name="medvault",
    help="Encrypted, deduplicating, verified backups for healthcare data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"medvault {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    repo: str | None = typer.Option(
        None,
        "--repo",
        "-r",
        help="Repository name from medvault.toml, or a path/URL.",
        envvar="MEDVAULT_REPOSITORY",
        show_envvar=True,
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="medvault.toml to use.",
        envvar="MEDVAULT_CONFIG",
        show_envvar=True,
    ),
    password_file: str | None = typer.Option(
        None, "--password-file", help="Read the passphrase from this file."
    ),
    password_command: str | None = typer.Option(
        None, "--password-command", help="Run this command; its output is the passphrase."
    ),
    key_file: str | None = typer.Option(
        None, "--key-file", help="Open the repository with this key file."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    ctx.obj = CliContext(
        repo_option=repo,
        config_option=config,
        credentials=CredentialOptions(password_file, password_command, key_file),
    )
    ctx.call_on_close(ctx.obj.print_warnings)


repo_cmds.register(app)
forget.register(app)
copy_cmd.register(app)
status.register(app)
prune_cmd.register(app)
drill_cmd.register(app)
backup.register(app)
snapshots.register(app)
restore.register(app)
restore_table_cmd.register(app)
wal.register(app)
pg_recovery.register(app)
audit_cmd.register(app)
catalog_cmd.register(app)
schedule_cmd.register(app)
metrics_cmd.register(app)
alerts_cmd.register(app)
serve_cmd.register(app)


# Root options also accepted after the subcommand (`medvault backup --repo X PATH`, as
# restic and borg users type them). cli/entry.py's fast path accepts the same.
AFTER_SUBCOMMAND = ("repo", "config", "password_file", "password_command", "key_file")


def _set_after_subcommand(ctx: typer.Context, param: Any, value: str | None) -> None:
    """Callback of a root option given after the subcommand: it sets the root's value."""
    if value is None:
        return
    root = ctx.find_root()
    cli = root.obj
    assert isinstance(cli, CliContext)
    name = str(param.name)
    source = root.get_parameter_source(name)
    given_before = source is not None and source.name == "COMMANDLINE"  # not the environment
    if given_before and root.params.get(name) != value:
        raise UsageError(f"{param.opts[0]} is given twice, before and after the command")
    if name == "repo":
        cli.repo_option = value
    elif name == "config":
        cli.config_option = value
    else:
        cli.credentials = dataclasses.replace(cli.credentials, **{name: value})


def _accept_root_options_after_subcommands(group: Any) -> None:
    shared = [p for p in group.params if p.name in AFTER_SUBCOMMAND]

    def add(command: Any) -> None:
        if hasattr(command, "commands"):
            for sub in command.commands.values():
                add(sub)
            return
        for param in shared:
            option = copy.copy(param)
            option.expose_value = False  # the command's function never sees it
            option.envvar = None  # the root reads the environment
            option.show_envvar = False
            option.callback = _set_after_subcommand
            option.rich_help_panel = "Repository options (also before the command)"
            command.params.append(option)

    for command in group.commands.values():
        add(command)


def build_command() -> Any:
    command = typer.main.get_command(app)
    _accept_root_options_after_subcommands(command)
    return command


def main() -> None:
    forbid_core_dumps()  # again: this module may be run on its own (python -m)
    command = build_command()
    try:
        code = command.main(prog_name="medvault", standalone_mode=False)
    except typer.Exit as done:
        code = done.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message:  # empty when the help text was shown instead
            warn(f"medvault: {message}")
        code = UsageError.exit_code
    except (KeyboardInterrupt, typer.Abort):
        warn(
            "medvault: interrupted; earlier snapshots are intact (data written so far "
            "stays unreferenced)"
        )
        code = EXIT_INTERRUPTED
    except MedvaultError as exc:
        warn(f"medvault: error: {exc}")
        code = exit_code_for(exc)
    except BrokenPipeError as exc:
        # The reader went away (`medvault snapshots | head`): say so the way a shell would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = exit_code_for(exc)
    except Exception as exc:
        if os.environ.get("MEDVAULT_DEBUG"):
            traceback.print_exc()
        warn(
            f"medvault: internal error: {type(exc).__name__}: {exc} "
            "(set MEDVAULT_DEBUG=1 for details)"
        )
        code = exit_code_for(exc)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
