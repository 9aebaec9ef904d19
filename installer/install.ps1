# OpsConductor agent installer for Windows. The control plane serves it:
#
#   & ([scriptblock]::Create((irm https://CONTROL-PLANE/install.ps1))) `
#       -Server https://CONTROL-PLANE -Token JOIN-TOKEN -Labels role=web
#
# It mirrors install.sh: download the agent from the same server, refuse
# it unless its SHA-256 matches SHA256SUMS, write the configuration with
# an ACL for SYSTEM and Administrators only, register and start a
# service; run again to upgrade in place; -Uninstall (-Purge) removes it.
# It cannot be run where it is developed (no Windows, no PowerShell): see
# docs/operations.md for what was and was not checked.
param(
    [string]$Server = $env:OPSCONDUCTOR_SERVER,
    [string]$Token = $env:OPSCONDUCTOR_JOIN_TOKEN,
    [string]$Labels = $env:OPSCONDUCTOR_LABELS,
    [string]$InstallDir = "$env:ProgramFiles\OpsConductor",
    [string]$StateDir = "$env:ProgramData\OpsConductor",
    [switch]$Uninstall,
    [switch]$Purge,
    [switch]$DryRun
)
$ErrorActionPreference = 'Stop'
$ServiceName = 'opsconductor-agent'
$Bin = Join-Path $InstallDir 'opsconductor-agent.exe'
$EnvFile = Join-Path $StateDir 'agent.env'

function Step($what, [scriptblock]$do) {
    Write-Host "==> $what"
    if ($DryRun) { Write-Host "    (dry run)"; return }
    & $do
}

if ($Uninstall) {
    Step "stopping and removing the service" {
        if (Get-Service $ServiceName -ErrorAction SilentlyContinue) {
            Stop-Service $ServiceName -ErrorAction SilentlyContinue
            sc.exe delete $ServiceName | Out-Null
        }
        Remove-Item -Force -ErrorAction SilentlyContinue $Bin
    }
    if ($Purge) { Step "removing $StateDir" { Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $StateDir } }
    exit 0
}

if (-not $Server) { throw "-Server is required" }
$Server = $Server.TrimEnd('/')
$file = 'opsconductor-agent-windows-amd64.exe'
$tmp = New-Item -ItemType Directory -Path (Join-Path $env:TEMP ([guid]::NewGuid()))
try {
    Invoke-WebRequest -UseBasicParsing "$Server/downloads/SHA256SUMS" -OutFile "$tmp\SHA256SUMS"
    $want = (Get-Content "$tmp\SHA256SUMS" | Where-Object { ($_ -split '\s+')[1] -eq $file } | ForEach-Object { ($_ -split '\s+')[0] })
    if (-not $want) { throw "the server offers no $file" }
    Invoke-WebRequest -UseBasicParsing "$Server/downloads/$file" -OutFile "$tmp\$file"
    $got = (Get-FileHash -Algorithm SHA256 "$tmp\$file").Hash.ToLower()
    if ($got -ne $want) { throw "checksum mismatch for ${file}: got $got, the server lists $want; refusing to install it" }
    Write-Host "==> checksum verified ($got)"

    $upgrade = Test-Path $Bin
    Step "installing $Bin" {
        New-Item -ItemType Directory -Force -Path $InstallDir, $StateDir | Out-Null
        if ($upgrade) { Stop-Service $ServiceName -ErrorAction SilentlyContinue }
        Copy-Item -Force "$tmp\$file" $Bin
    }
    if (-not ($upgrade -and (Test-Path $EnvFile))) {
        if (-not $Token) { throw "-Token is required for the first install" }
        Step "writing $EnvFile (SYSTEM and Administrators only)" {
            @("OPSCONDUCTOR_SERVER=$Server", "OPSCONDUCTOR_JOIN_TOKEN=$Token", "OPSCONDUCTOR_LABELS=$Labels",
              "OPSCONDUCTOR_STATE_DIR=$StateDir") | Set-Content -Encoding ASCII $EnvFile
            icacls $StateDir /inheritance:r /grant:r 'SYSTEM:(OI)(CI)F' 'Administrators:(OI)(CI)F' | Out-Null
        }
    }
    Step "registering and starting the service" {
        if (-not (Get-Service $ServiceName -ErrorAction SilentlyContinue)) {
            New-Service -Name $ServiceName -BinaryPathName "`"$Bin`" --env-file `"$EnvFile`"" -StartupType Automatic -DisplayName 'OpsConductor agent' | Out-Null
            sc.exe failure $ServiceName reset= 86400 actions= restart/5000 | Out-Null
        }
        Start-Service $ServiceName
    }
} finally {
    Remove-Item -Recurse -Force $tmp
}
