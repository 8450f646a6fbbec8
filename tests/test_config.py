"""medvault.toml: named repositories and sources, where the file is found, errors."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Cli


def write_config(path: Path, repo: Path, uploads: Path) -> Path:
    path.write_text(
        f"""
[repository.primary]
url = "{repo}"

[source.uploads]
kind = "files"
paths = ["{uploads}"]
repository = "primary"
exclude = ["*.part"]
tags = ["nightly"]
"""
    )
    return path


def test_backup_of_a_named_source_uses_its_paths_and_repository(
    cli: Cli, make_tree, tmp_path: Path
) -> None:
    uploads = make_tree({"scan.pdf": b"%PDF", "upload.part": b"partial"})
    write_config(tmp_path / "medvault.toml", tmp_path / "repo", uploads)
    env = {"MEDVAULT_REPOSITORY": ""}
    cli("init", env=env)
    result = json.loads(cli("backup", "uploads", "--json", env=env).stdout)
    assert result["source"] == "uploads"
    listing = json.loads(cli("ls", "latest:uploads", "--json", env=env).stdout)
    names = {e["path"].rsplit("/", 1)[1] for e in listing}
    assert "scan.pdf" in names and "upload.part" not in names
    snaps = json.loads(cli("snapshots", "--json", env=env).stdout)
    assert snaps[0]["tags"] == ["nightly"]


def test_config_is_found_through_the_environment(cli: Cli, make_tree, tmp_path: Path) -> None:
    uploads = make_tree({"a": b"a"})
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    config = write_config(elsewhere / "medvault.toml", tmp_path / "repo", uploads)
    env = {"MEDVAULT_REPOSITORY": "", "MEDVAULT_CONFIG": str(config)}
    cli("init", env=env)
    cli("backup", "uploads", env=env)
    assert (tmp_path / "repo" / "config").exists()


def test_explicit_config_option_wins_and_must_exist(cli: Cli, tmp_path: Path) -> None:
    done = cli(
        "--config",
        str(tmp_path / "missing.toml"),
        "snapshots",
        env={"MEDVAULT_REPOSITORY": ""},
        check=False,
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_repo_option_names_a_configured_repository(cli: Cli, make_tree, tmp_path: Path) -> None:
    write_config(tmp_path / "medvault.toml", tmp_path / "repo", make_tree({"a": b"a"}))
    cli("--repo", "primary", "init", env={"MEDVAULT_REPOSITORY": ""})
    assert (tmp_path / "repo" / "config").exists()


def test_invalid_config_names_the_key_in_one_line_with_exit_2(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "medvault.toml").write_text(
        '[repository.primary]\nurl = "/x"\n[source.uploads]\nkind = "files"\npaths = "/app"\n'
    )
    done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2
    assert "source.uploads.paths" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_unknown_keys_are_reported_not_ignored(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "medvault.toml").write_text('[repository.primary]\nurl = "/x"\npasword = "y"\n')
    done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2
    assert "repository.primary.pasword" in done.stderr


def test_a_source_naming_a_missing_repository_is_an_error(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "medvault.toml").write_text(
        '[source.emr]\nkind = "files"\npaths = ["/x"]\nrepository = "nowhere"\n'
    )
    done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2
    assert "repository.nowhere" in done.stderr


def test_broken_toml_is_reported_with_its_line(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "medvault.toml").write_text("[repository.primary\nurl = 1\n")
    done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2
    assert "invalid TOML" in done.stderr and "line 1" in done.stderr


def test_without_any_repository_the_message_says_how_to_name_one(cli: Cli) -> None:
    done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2
    assert "--repo" in done.stderr


def test_a_dsn_with_a_password_or_libpq_cannot_parse_is_refused(cli: Cli, tmp_path: Path) -> None:
    for dsn, expected in (
        ("host=db dbname=emr user=backup password=hunter2", "holds a password"),
        ("postgresql://backup:hunter2@db/emr", "holds a password"),
        ("host=db dbnme=emr", 'invalid connection option "dbnme"'),
    ):
        (tmp_path / "medvault.toml").write_text(
            f'[repository.primary]\nurl = "/x"\n[source.emr]\nkind = "postgres"\ndsn = "{dsn}"\n'
        )
        done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
        assert done.returncode == 2, dsn
        assert "source.emr" in done.stderr and expected in done.stderr
        assert "hunter2" not in done.stderr
        assert done.stderr.strip().count("\n") == 0


def test_a_drill_section_with_bad_memory_or_unknown_keys_is_refused(
    cli: Cli, tmp_path: Path
) -> None:
    head = (
        '[repository.primary]\nurl = "/x"\n[source.emr]\nkind = "postgres"\n'
        'dsn = "host=127.0.0.1"\n[source.emr.drill]\n'
    )
    for body, key in (
        ('shared_buffers = "lots"\n', "source.emr.drill.shared_buffers"),
        ('check = ["SELECT true"]\n', "source.emr.drill.check"),
    ):
        (tmp_path / "medvault.toml").write_text(head + body)
        done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
        assert done.returncode == 2 and key in done.stderr, done.stderr


def test_classification_compliance_and_audit_retention_come_from_source_or_tier(
    tmp_path: Path,
) -> None:
    import datetime as dt

    from medvault.config import load_settings
    from medvault.statedir import SYSTEM_STATE_DIR, default_state_dir

    path = tmp_path / "medvault.toml"
    path.write_text(
        f"""
[repository.primary]
url = "{tmp_path / "repo"}"

[tier.medical]
floor = "7y"
classification = "phi"
compliance = ["hipaa", "gdpr"]

[tier.ops]
floor = "30d"

[source.emr]
kind = "postgres"
dsn = "host=/run/postgresql dbname=emr"
tier = "medical"

[source.letters]
kind = "files"
paths = ["/srv/letters"]
tier = "medical"
classification = "pii"
compliance = ["gdpr"]

[source.logs]
kind = "files"
paths = ["/var/log/app"]
tier = "ops"

[catalog]
url = "sqlite:////var/lib/medvault/catalog.db"
"""
    )
    settings = load_settings(str(path))
    assert settings.data_classification("emr") == "phi"
    assert settings.compliance_flags("emr") == ["hipaa", "gdpr"]
    assert settings.data_classification("letters") == "pii"
    assert settings.compliance_flags("letters") == ["gdpr"]
    assert (settings.data_classification("logs"), settings.compliance_flags("logs")) == (None, [])
    assert settings.data_classification(None) is None
    # No [audit] retention: the longest tier floor.
    assert settings.audit_retention() == dt.timedelta(days=7 * 365)
    assert settings.catalog.url == "sqlite:////var/lib/medvault/catalog.db"
    path.write_text(path.read_text() + '\n[audit]\nretention = "10y"\n')
    assert load_settings(str(path)).audit_retention() == dt.timedelta(days=10 * 365)

    assert default_state_dir({}, 0) == SYSTEM_STATE_DIR
    assert default_state_dir({"MEDVAULT_STATE_DIR": "/srv/mv"}, 0) == Path("/srv/mv")
    assert default_state_dir({"XDG_STATE_HOME": "/x/state"}, 1000) == Path("/x/state/medvault")
    assert default_state_dir({"HOME": "/home/nurse"}, 1000) == Path(
        "/home/nurse/.local/state/medvault"
    )


def test_a_bad_schedule_fails_every_command_as_other_config_errors_do(
    cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "medvault.toml").write_text(
        '[repository.primary]\nurl = "/x"\n[source.uploads]\nkind = "files"\npaths = ["/a"]\n'
        '[source.uploads.schedule]\nincremental = "*/15 * * *"\n'
    )
    done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2
    assert "source.uploads.schedule.incremental: '*/15 * * *' is not a cron expression" in (
        done.stderr
    )
    assert done.stderr.strip().count("\n") == 0
