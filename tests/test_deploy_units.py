"""What deploy/ ships for systemd and Kubernetes: units systemd-analyze accepts, a
configuration medvault accepts, and stop timeouts that let serve end its jobs cleanly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import MEDVAULT
from medvault.config import load_settings
from medvault.durations import parse_duration
from medvault.service.jobs import jobs_from_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
INSTALLED = "/opt/medvault/.venv/bin/medvault"
DEFAULT_STOP_S = parse_duration("5m").total_seconds()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    units = []
    for source in sorted((DEPLOY / "systemd").iterdir()):
        # The unit names the installed program; here it is this checkout's.
        text = source.read_text().replace(INSTALLED, MEDVAULT)
        name = source.name.replace("@.", "@emr.")  # a template is verified as an instance
        (tmp_path / name).write_text(text)
        units.append(f"./{name}")
    done = subprocess.run(
        ["systemd-analyze", "verify", *units], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # Warnings about our units (not about the host's) count too.
    ours = [line for line in done.stderr.splitlines() if "medvault" in line]
    assert ours == [], done.stderr


def test_systemd_waits_longer_than_serve_lets_jobs_end() -> None:
    unit = (DEPLOY / "systemd" / "medvault.service").read_text()
    timeout = next(line for line in unit.splitlines() if line.startswith("TimeoutStopSec="))
    assert float(timeout.split("=")[1]) > DEFAULT_STOP_S


def test_the_kubernetes_example_holds_a_configuration_medvault_accepts(tmp_path: Path) -> None:
    documents = list(
        yaml.safe_load_all((DEPLOY / "kubernetes" / "medvault-serve.yaml").read_text())
    )
    kinds = {doc["kind"]: doc for doc in documents}
    config = tmp_path / "medvault.toml"
    config.write_text(kinds["ConfigMap"]["data"]["medvault.toml"])
    settings = load_settings(str(config))
    assert {job.name for job in jobs_from_settings(settings)} >= {
        "emr/full",
        "emr/logical",
        "emr/drill",
    }
    deployment = kinds["Deployment"]["spec"]
    assert deployment["replicas"] == 1  # two would run every schedule twice
    pod = deployment["template"]["spec"]
    assert (
        pod["terminationGracePeriodSeconds"]
        > parse_duration(settings.serve.stop_timeout).total_seconds()
    )
    (container,) = pod["containers"]
    assert container["args"][:1] == ["serve"]

    (cronjob,) = yaml.safe_load_all(
        (DEPLOY / "kubernetes" / "medvault-backup-cronjob.yaml").read_text()
    )
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (backup,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert backup["args"][-2:] == ["backup", "emr"]
