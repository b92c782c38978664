# Registers `inferos serve` to start at boot on Windows, as a scheduled task that runs as
# SYSTEM at startup and restarts on failure (a console program cannot answer the service
# control manager, so a task is the dependable way to run it unattended).
# Equivalent to `inferos service install`; undo with uninstall-service.ps1.
param(
    [string]$Inferos = (Get-Command inferos -ErrorAction Stop).Source,
    [string]$Config = "$env:ProgramData\Infer-OS\inferos.yaml"
)
$ErrorActionPreference = "Stop"
$action = New-ScheduledTaskAction -Execute $Inferos -Argument "serve --config `"$Config`"" `
    -WorkingDirectory "$env:ProgramData\Infer-OS"
$trigger = New-ScheduledTaskTrigger -AtStartup
$settings = New-ScheduledTaskSettingsSet -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
$principal = New-ScheduledTaskPrincipal -UserId "SYSTEM" -LogonType ServiceAccount -RunLevel Limited
New-Item -ItemType Directory -Force -Path "$env:ProgramData\Infer-OS" | Out-Null
Register-ScheduledTask -TaskName "Infer-OS" -Action $action -Trigger $trigger -Settings $settings `
    -Principal $principal -Description "Infer-OS proxy in front of Lemonade Server" -Force | Out-Null
Start-ScheduledTask -TaskName "Infer-OS"
Write-Host "Infer-OS registered to start at boot, and started."
