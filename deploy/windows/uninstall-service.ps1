# Removes the Infer-OS start-at-boot task (see install-service.ps1) and stops it.
$ErrorActionPreference = "Stop"
Stop-ScheduledTask -TaskName "Infer-OS" -ErrorAction SilentlyContinue
Unregister-ScheduledTask -TaskName "Infer-OS" -Confirm:$false
Write-Host "Infer-OS no longer starts at boot. Point clients back at Lemonade (port 13305)."
