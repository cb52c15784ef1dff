//go:build !cuda

package main

import (
	"fmt"
	"os"

	"carryon/cuda"
)

func main() {
	fmt.Fprintln(os.Stderr, "devbench:", cuda.ErrNotBuilt)
	os.Exit(1)
}
