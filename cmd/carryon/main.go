// Command carryon is the one binary of carryon: a volunteer node, a
// coordinator, the in-process demo, and the tools around adaptors.
//
// It only parses flags and wires the packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	commands[name] = command{summary: summary, run: run}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "carryon customises an open-weights LLM with a carry-on network trained on a volunteer swarm.\n\n")
	fmt.Fprintf(w, "Usage: carryon <command> [flags]\n\nCommands:\n")
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'carryon <command> --help' for a command's flags.\n")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "carryon: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "carryon %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// newFlags makes a flag set whose --help prints the summary and flags.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: carryon %s %s\n\n%s\n\nFlags:\n", name, synopsis, commands[name].summary)
		fs.PrintDefaults()
	}
	return fs
}

// logFlags adds -v and returns a constructor for the command's logger.
func logFlags(fs *flag.FlagSet, stderr io.Writer) func() *slog.Logger {
	verbose := fs.Bool("v", false, "log debug detail (per chunk and per message)")
	quiet := fs.Bool("q", false, "log warnings and errors only")
	return func() *slog.Logger {
		level := slog.LevelInfo
		if *verbose {
			level = slog.LevelDebug
		}
		if *quiet {
			level = slog.LevelWarn
		}
		return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	}
}

// shortHash abbreviates a weights hash for people.
func shortHash(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}
