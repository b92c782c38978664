"""The operator's files, checked with the real tools: systemd-analyze, promtool, and the
Compose specification's JSON schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inferos.commands.service import render_unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_the_shipped_unit_is_the_template_rendered_for_opt_inferos() -> None:
    shipped = (DEPLOY / "inferos.service").read_text()
    assert shipped == render_unit("/opt/inferos/.venv/bin/inferos", "/opt/inferos")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # systemd-analyze checks that ExecStart exists: render for this checkout's venv.
    inferos = str(Path(sys.executable).with_name("inferos"))
    unit = tmp_path / "inferos.service"
    unit.write_text(render_unit(inferos, str(ROOT)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    text = unit.read_text()
    for line in ("User=inferos", "Restart=on-failure", "IPAddressDeny=any",
                 "IPAddressAllow=localhost", "StandardOutput=journal"):
        assert line in text


def test_compose_file_follows_the_compose_spec() -> None:
    result = subprocess.run([str(Path(sys.executable).with_name("check-jsonschema")),
                             "--builtin-schema", "vendor.compose-spec",
                             str(DEPLOY / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"prometheus", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def test_prometheus_accepts_the_scrape_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "the test command installs Debian's prometheus"
    result = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:8021"]


def test_service_install_dry_run_changes_nothing_and_says_what_it_would_do() -> None:
    result = subprocess.run([sys.executable, "-m", "inferos.cli", "service", "install",
                             "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[Service]" in result.stdout and "serve --config" in result.stdout
    assert "systemctl enable --now inferos" in result.stdout
    uninstall = subprocess.run([sys.executable, "-m", "inferos.cli", "service", "uninstall",
                                "--dry-run"], capture_output=True, text=True)
    assert "systemctl disable --now inferos" in uninstall.stdout
