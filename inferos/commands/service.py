"""``inferos service install|uninstall``: run ``inferos serve`` at boot.

- Linux: a systemd unit (dedicated ``inferos`` user, loopback only, restart on failure,
  logs to the journal), written to ``/etc/systemd/system/inferos.service`` and enabled.
  ``deploy/inferos.service`` is this template rendered for ``/opt/inferos``.
- Windows: a scheduled task that starts at boot as SYSTEM and restarts on failure
  (``deploy/windows/install-service.ps1`` does the same by hand).

``--dry-run`` prints what would be written and run, and changes nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

UNIT_PATH = Path("/etc/systemd/system/inferos.service")
# Exit codes that mean "already so": useradd's 9 (user exists); stopping what is not there.
_ACCEPTED: dict[tuple[str, ...], tuple[int, ...]] = {
    ("useradd", "--system"): (0, 9),
    ("systemctl", "disable"): (0, 1, 5),
    ("schtasks", "/End"): (0, 1),
}
TASK_NAME = "Infer-OS"

UNIT_TEMPLATE = """\
# systemd unit for the Infer-OS agent (proxy + controller), installed by
# `inferos service install` (or copy to /etc/systemd/system/ and `systemctl enable --now`).
# Runs as a dedicated system user, reaches nothing but loopback, restarts on failure and
# logs to the journal (`journalctl -u inferos`). Telemetry goes to /var/lib/inferos/logs.
[Unit]
Description=Infer-OS: measured, fail-safe proxy in front of a local LLM server
Documentation=file://{root}/README.md
After=network.target
Wants=network.target

[Service]
Type=simple
User=inferos
Group=inferos
ExecStart={inferos} serve --config /etc/inferos/inferos.yaml
WorkingDirectory=/var/lib/inferos
StateDirectory=inferos
CacheDirectory=inferos
Environment=INFEROS_CACHE=/var/cache/inferos
Environment=INFEROS_MODELS_DIR=/var/cache/inferos/models
Environment=INFEROS_INFER_OS_TELEMETRY_DIR=/var/lib/inferos/logs
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
KillMode=mixed
StandardOutput=journal
StandardError=journal
SyslogIdentifier=inferos
# Loopback only: the proxy, its backend and its clients all live on this machine.
IPAddressDeny=any
IPAddressAllow=localhost
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
PrivateDevices=false
ReadWritePaths=/var/lib/inferos /var/cache/inferos

[Install]
WantedBy=multi-user.target
"""


def render_unit(inferos: str, root: str) -> str:
    return UNIT_TEMPLATE.format(inferos=inferos, root=root)


def _inferos_executable() -> str:
    found = shutil.which("inferos")
    return found or str(Path(sys.executable).with_name("inferos"))


def linux_steps(inferos: str, install: bool) -> tuple[str | None, list[list[str]]]:
    if not install:
        return None, [["systemctl", "disable", "--now", "inferos"],
                      ["rm", "-f", str(UNIT_PATH)], ["systemctl", "daemon-reload"]]
    root = str(Path(inferos).resolve().parent.parent.parent)
    return render_unit(inferos, root), [
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "inferos"],
        ["mkdir", "-p", "/etc/inferos"],
        ["touch", "/etc/inferos/inferos.yaml"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "inferos"],
    ]


def windows_steps(inferos: str, install: bool) -> list[list[str]]:
    if not install:
        return [["schtasks", "/End", "/TN", TASK_NAME],
                ["schtasks", "/Delete", "/TN", TASK_NAME, "/F"]]
    script = (
        f"$a = New-ScheduledTaskAction -Execute '{inferos}' -Argument 'serve';"
        "$t = New-ScheduledTaskTrigger -AtStartup;"
        "$s = New-ScheduledTaskSettingsSet -RestartCount 999 "
        "-RestartInterval (New-TimeSpan -Minutes 1) -ExecutionTimeLimit ([TimeSpan]::Zero);"
        "$p = New-ScheduledTaskPrincipal -UserId SYSTEM -LogonType ServiceAccount;"
        f"Register-ScheduledTask -TaskName '{TASK_NAME}' -Action $a -Trigger $t -Settings $s "
        "-Principal $p -Force | Out-Null;"
        f"Start-ScheduledTask -TaskName '{TASK_NAME}'")
    return [["powershell", "-NoProfile", "-NonInteractive", "-Command", script]]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("service", help="install or remove `inferos serve` as a boot service")
    p.add_argument("action", choices=("install", "uninstall"))
    p.add_argument("--dry-run", action="store_true", help="print what would be done")
    p.set_defaults(func=_cmd_service)


def _cmd_service(args: argparse.Namespace) -> int:
    install = args.action == "install"
    inferos = _inferos_executable()
    if sys.platform == "win32":
        unit, steps = None, windows_steps(inferos, install)
    else:
        unit, steps = linux_steps(inferos, install)
    if args.dry_run:
        if unit is not None:
            print(f"# would write {UNIT_PATH}:\n{unit}")
        for step in steps:
            print("# would run: " + " ".join(step))
        return 0
    if unit is not None:
        UNIT_PATH.write_text(unit)
    for step in steps:
        code = subprocess.run(step, check=False).returncode
        if code not in _ACCEPTED.get(tuple(step[:2]), (0,)):
            print(f"inferos: `{' '.join(step)}` failed ({code})", file=sys.stderr)
            return 1
    print("inferos: " + ("installed and started" if install else "removed") +
          ("; logs: journalctl -u inferos" if install and sys.platform != "win32" else ""))
    return 0
