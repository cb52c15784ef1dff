package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"carryon/internal/service"
	"carryon/node"
)

// defaultStatusAddr is where a node serves its local status page.
const defaultStatusAddr = "127.0.0.1:7466"

// nodeLimits are the flags that keep a volunteer's node in the background.
type nodeLimits struct {
	threads      *int
	maxMemory    *string
	schedule     *string
	idle         *time.Duration
	allowBattery *bool
	statusAddr   *string
	printService *string
}

func addNodeLimitFlags(fs *flag.FlagSet) *nodeLimits {
	return &nodeLimits{
		threads:      fs.Int("threads", 0, "CPU threads for the forward pass (0: all cores)"),
		maxMemory:    fs.String("max-memory", "", "memory the node may plan for, e.g. 6GiB or 800MiB: a base that does not fit is refused, jobs wait for their share (empty: no limit)"),
		schedule:     fs.String("schedule", "", "work only in these local-time windows, e.g. 22:00-07:00 or 09:00-12:00,13:00-17:00 (empty: any time)"),
		idle:         fs.Duration("idle", 0, "work only after no keyboard/mouse input for this long, e.g. 5m (where the OS tells; 0: regardless)"),
		allowBattery: fs.Bool("allow-battery", false, "keep working on battery power (default: pause while on battery, where the OS tells)"),
		statusAddr:   fs.String("status-addr", defaultStatusAddr, "serve the local status page (carryon node status/pause/resume) here; empty: none"),
		printService: fs.String("print-service", "", "print a service definition running this node with the other flags given ("+strings.Join(service.Kinds, ", ")+") and exit"),
	}
}

// parseBytes reads 123, 800MiB, 6GiB, 6GB, 6G (binary units).
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suf []string
		m   int64
	}{{[]string{"TiB", "TB", "T"}, 1 << 40}, {[]string{"GiB", "GB", "G"}, 1 << 30}, {[]string{"MiB", "MB", "M"}, 1 << 20}, {[]string{"KiB", "KB", "K"}, 1 << 10}} {
		for _, suf := range u.suf {
			if strings.HasSuffix(t, suf) {
				t, mult = strings.TrimSpace(strings.TrimSuffix(t, suf)), u.m
				break
			}
		}
		if mult != 1 {
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 6GiB or 800MiB", s)
	}
	return int64(v * float64(mult)), nil
}

// apply sets the process-wide limits and the node config; it returns the
// conditions for node.Govern.
func (l *nodeLimits) apply(cfg *node.Config) (node.Conditions, error) {
	var c node.Conditions
	if *l.threads < 0 {
		return c, fmt.Errorf("--threads %d: want 0 (all cores) or more", *l.threads)
	}
	if *l.threads > 0 {
		runtime.GOMAXPROCS(*l.threads) // the kernels split work over GOMAXPROCS threads
	}
	if *l.maxMemory != "" {
		b, err := parseBytes(*l.maxMemory)
		if err != nil {
			return c, fmt.Errorf("--max-memory: %w", err)
		}
		cfg.MaxMemory = b
		debug.SetMemoryLimit(b) // the garbage collector works harder near the limit
	}
	ws, err := node.ParseSchedule(*l.schedule)
	if err != nil {
		return c, fmt.Errorf("--schedule: %w", err)
	}
	c = node.Conditions{Schedule: ws, IdleFor: *l.idle, AllowBattery: *l.allowBattery}
	return c, c.Validate()
}

// printServiceFile writes the service definition for this executable with
// args, minus --print-service itself.
func printServiceFile(kind string, args []string, stdout io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--print-service: %w", err)
	}
	var keep []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--print-service" || a == "-print-service" {
			i++
			continue
		}
		if strings.HasPrefix(a, "--print-service=") || strings.HasPrefix(a, "-print-service=") {
			continue
		}
		// A service starts in another directory (/, C:\Windows\System32):
		// file flags are made absolute.
		name, val, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if servicePathFlags[name] && strings.HasPrefix(a, "-") {
			if !inline && i+1 < len(args) {
				keep = append(keep, a)
				i++
				val = args[i]
				a = absPath(val)
			} else if inline {
				a = a[:len(a)-len(val)] + absPath(val)
			}
		}
		keep = append(keep, a)
	}
	text, err := service.File(kind, exe, append([]string{"node"}, keep...))
	if err != nil {
		return fmt.Errorf("--print-service: %w", err)
	}
	_, err = io.WriteString(stdout, text)
	return err
}

// servicePathFlags are the node's flags that name files or directories.
var servicePathFlags = map[string]bool{"key": true, "identity": true, "state": true, "model": true, "cache": true, "store": true, "pin-file": true}

// absPath makes a file flag's value absolute ("default" and "" stay).
func absPath(v string) string {
	if v == "" || v == "default" || filepath.IsAbs(v) {
		return v
	}
	if abs, err := filepath.Abs(v); err == nil {
		return abs
	}
	return v
}

// runNodeCtl runs `carryon node status|pause|resume` against a running
// node's local status page.
func runNodeCtl(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("node "+verb, "[--addr HOST:PORT] [--json]", stderr)
	addr := fs.String("addr", defaultStatusAddr, "the node's --status-addr")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := node.Control(ctx, *addr, verb)
	if err != nil {
		return err
	}
	if *asJSON {
		b, _ := json.MarshalIndent(st, "", "  ")
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	return node.WriteStatusText(stdout, st)
}

// serveNodeStatus serves node.StatusHandler on addr (loopback expected).
// A port already taken is not fatal: the node works without its page.
func serveNodeStatus(ctx context.Context, n *node.Node, addr string, stdout io.Writer) {
	if addr == "" {
		return
	}
	bound, _, err := serveHTTP(ctx, addr, node.StatusHandler(n))
	if err != nil {
		fmt.Fprintf(stdout, "no status page: --status-addr %s: %v (is another carryon running there? pick another port)\n", addr, err)
		return
	}
	fmt.Fprintf(stdout, "status page on http://%s/ (carryon node status --addr %s)\n", bound, bound)
}
