package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// Network namespaces for tests of what crosses a real network: NATs,
// routers, hosts that cannot dial each other. Each namespace is made for
// one test and deleted after it; nothing leaves the machine.

// RequireNetns skips t unless this process may make network namespaces
// (root, iproute2's ip and iptables present, `ip netns add` allowed); it
// fails instead when CARRYON_REQUIRE_NETNS=1 (CI).
func RequireNetns(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping in -short: builds network namespaces and runs processes")
	}
	if os.Geteuid() != 0 {
		Missing(t, "CARRYON_REQUIRE_NETNS", "network namespaces need root")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			Missing(t, "CARRYON_REQUIRE_NETNS", "needs %s (Debian packages iproute2 and iptables)", tool)
		}
	}
	probe := fmt.Sprintf("coprobe%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		Missing(t, "CARRYON_REQUIRE_NETNS", "network namespaces not allowed here: %v: %s", err, out)
	}
	exec.Command("ip", "netns", "del", probe).Run()
}

// Netns is a network namespace made for a test and deleted after it.
type Netns struct {
	Name string
	t    testing.TB
}

var netnsSeq atomic.Int64

// NewNetns makes a namespace whose name starts with "co"+name (unique in
// this process and among concurrent test processes) with its loopback up.
func NewNetns(t testing.TB, name string) *Netns {
	t.Helper()
	ns := &Netns{Name: fmt.Sprintf("co%s%d-%d", name, os.Getpid()%100000, netnsSeq.Add(1)), t: t}
	RunCmd(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.Name).Run() })
	ns.IP("link", "set", "lo", "up")
	return ns
}

// IP runs `ip -n NS args…` and returns its output; failing the test on error.
func (ns *Netns) IP(args ...string) string {
	ns.t.Helper()
	return RunCmd(ns.t, "ip", append([]string{"-n", ns.Name}, args...)...)
}

// Exec runs a command inside the namespace and returns its output, failing
// the test on error.
func (ns *Netns) Exec(args ...string) string {
	ns.t.Helper()
	return RunCmd(ns.t, "ip", append([]string{"netns", "exec", ns.Name}, args...)...)
}

// Command is a command to run inside the namespace (not started).
func (ns *Netns) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// RunCmd runs a command and returns its combined output, failing the test
// with that output on error.
func RunCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Link joins a and b with a veth pair named ifA (in a) and ifB (in b),
// addressed addrA and addrB (CIDR), both up.
func Link(t testing.TB, a *Netns, ifA, addrA string, b *Netns, ifB, addrB string) {
	t.Helper()
	a.IP("link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b.Name)
	a.IP("addr", "add", addrA, "dev", ifA)
	b.IP("addr", "add", addrB, "dev", ifB)
	a.IP("link", "set", ifA, "up")
	b.IP("link", "set", ifB, "up")
}

// HomeRouter makes r a home router between its wan and lan interfaces:
// it forwards, masquerades what leaves on wan as its wan address, and
// drops connections that start on the wan side (conntrack lets replies
// and hole-punched flows in, as a consumer router does).
func HomeRouter(r *Netns, wan string) {
	r.t.Helper()
	r.Exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	r.Exec("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE")
	r.Exec("iptables", "-A", "FORWARD", "-i", wan, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
	r.Exec("iptables", "-A", "INPUT", "-i", wan, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
}

// Masqueraded returns how many connections r's MASQUERADE rule has
// translated.
func Masqueraded(r *Netns) int {
	r.t.Helper()
	out := r.Exec("iptables", "-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "MASQUERADE" {
			var n int
			fmt.Sscan(f[0], &n)
			return n
		}
	}
	r.t.Fatalf("no MASQUERADE rule in:\n%s", out)
	return 0
}
