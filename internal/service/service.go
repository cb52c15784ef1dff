// Package service writes the files that run a carryon node in the
// background: a systemd user unit (Linux), a launchd agent plist (macOS),
// and the commands that register a Windows service or logon task; and
// the state machine of running under the Windows service manager
// (manager.go).
package service

import (
	"fmt"
	"html"
	"strings"
)

// Kinds are the supported service managers.
var Kinds = []string{"systemd", "launchd", "windows"}

// File returns the service definition of kind for running exe with args.
func File(kind, exe string, args []string) (string, error) {
	switch kind {
	case "systemd":
		return systemd(exe, args), nil
	case "launchd":
		return launchd(exe, args), nil
	case "windows":
		return windows(exe, args), nil
	}
	return "", fmt.Errorf("service kind %q: want one of %s", kind, strings.Join(Kinds, ", "))
}

// shellQuote quotes one argument for systemd's ExecStart (and sh).
func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n\"'\\$`;&|<>()*?[]#~%") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `$$`, `%`, `%%`).Replace(s) + `"`
}

// commandLine quotes exe and each argument with quote and joins them with
// spaces.
func commandLine(quote func(string) string, exe string, args []string) string {
	words := []string{quote(exe)}
	for _, a := range args {
		words = append(words, quote(a))
	}
	return strings.Join(words, " ")
}

func systemd(exe string, args []string) string {
	return fmt.Sprintf(`# carryon volunteer node: a systemd user unit.
# Save as ~/.config/systemd/user/carryon-node.service, then:
#   systemctl --user daemon-reload
#   systemctl --user enable --now carryon-node
#   loginctl enable-linger "$USER"     # keep it running while logged out
#   journalctl --user -u carryon-node -f
[Unit]
Description=carryon volunteer node
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=%s
Restart=on-failure
RestartSec=30
# Lowest CPU and I/O priority: the machine's owner comes first.
Nice=19
CPUSchedulingPolicy=idle
IOSchedulingClass=idle

[Install]
WantedBy=default.target
`, commandLine(shellQuote, exe, args))
}

func launchd(exe string, args []string) string {
	var b strings.Builder
	for _, a := range append([]string{exe}, args...) {
		fmt.Fprintf(&b, "\t\t<string>%s</string>\n", html.EscapeString(a))
	}
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<!-- carryon volunteer node: a launchd agent.
     Save as ~/Library/LaunchAgents/org.carryon.node.plist, then:
       launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/org.carryon.node.plist
       launchctl kickstart -k gui/$(id -u)/org.carryon.node
     Stop: launchctl bootout gui/$(id -u)/org.carryon.node -->
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>org.carryon.node</string>
	<key>ProgramArguments</key>
	<array>
%s	</array>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ProcessType</key>
	<string>Background</string>
	<key>LowPriorityIO</key>
	<true/>
	<key>Nice</key>
	<integer>19</integer>
	<key>StandardOutPath</key>
	<string>/tmp/carryon-node.log</string>
	<key>StandardErrorPath</key>
	<string>/tmp/carryon-node.log</string>
</dict>
</plist>
`, b.String())
}

// winQuote quotes one argument for a Windows command line.
func winQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"") {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

func windows(exe string, args []string) string {
	line := commandLine(winQuote, exe, args)
	return fmt.Sprintf(`REM carryon volunteer node on Windows. Two ways to run it in the background:
REM
REM 1. A service (runs without anyone logged in, from boot). carryon.exe
REM    speaks the service control protocol itself: Stop ends it, Pause and
REM    Continue pause and resume it (like carryon node pause/resume), and
REM    its log is %[3]s.log beside carryon.exe. A service cannot see user
REM    input (session 0), so do not combine it with --idle; use --schedule.
REM    In an elevated Command Prompt:
sc.exe create %[3]s binPath= "%[1]s" start= delayed-auto DisplayName= "carryon volunteer node"
sc.exe description %[3]s "Lends this machine's CPU to a carryon swarm"
sc.exe failure %[3]s reset= 86400 actions= restart/60000
sc.exe start %[3]s
REM    Or in an elevated PowerShell:
REM      New-Service -Name %[3]s -BinaryPathName '%[4]s' -DisplayName 'carryon volunteer node' -StartupType Automatic
REM      Start-Service %[3]s
REM    Pause, continue, stop, remove: sc.exe pause %[3]s / sc.exe continue %[3]s / sc.exe stop %[3]s / sc.exe delete %[3]s
REM
REM 2. A task at logon (runs in your session, so --idle can see your
REM    keyboard and mouse; it stops when you log off). In a Command Prompt:
schtasks /Create /TN "carryon node" /SC ONLOGON /RL LIMITED /TR "%[1]s"
REM    Start now: schtasks /Run /TN "carryon node"; remove: schtasks /Delete /TN "carryon node" /F
`, strings.ReplaceAll(line, `"`, `\"`), line, WindowsName, strings.ReplaceAll(line, "'", "''"))
}
