"""deploy/prometheus and deploy/grafana: the rules pass promtool, and every metric they and
the dashboard name is one `medvault metrics` exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "medvault-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "medvault-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "medvault-dashboard.json"
METRIC = re.compile(r"\bmedvault_[a-z0-9_]+\b")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool is not installed")
def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULES_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def rule_expressions() -> list[str]:
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"]]
    return found


def exported_names(text: str) -> set[str]:
    """Every sample name the exposition can hold, from its HELP and TYPE lines (a family is
    described even while it has no samples, e.g. no WAL lag without PostgreSQL)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_rules_and_dashboard_name_only_exported_metrics(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n"})
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{tmp_path / "primary"}"\n\n'
        '[tier.critical]\nrpo = "15m"\nrto = "1h"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\ntier = "critical"\n'
    )
    cli = Cli("primary", tmp_path, tmp_path / "primary")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    cli("backup", "uploads")
    exported = exported_names(cli("metrics").stdout)
    assert "medvault_wal_archive_lag_seconds" in exported  # described though without samples
    for where, expressions in (
        ("rules", rule_expressions()),
        ("dashboard", dashboard_expressions()),
    ):
        named = {name for expr in expressions for name in METRIC.findall(expr)}
        assert named, where
        assert named <= exported, (
            f"{where} name metrics medvault does not export: {named - exported}"
        )


def test_dashboard_is_importable_with_a_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("backup", "duration", "size", "wal", "drill", "rto", "storage"):
        assert topic in titles, topic
