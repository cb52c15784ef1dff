package tensor

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// Checks of the generated assembly: that a .s file is its generator's
// output, and that the instructions the Go assembler cannot spell (written
// as BYTE or WORD directives with the mnemonic in a comment) are what GNU
// as makes of that mnemonic.

// checkGenerated fails t unless file is byte for byte what `go run gen`
// prints.
func checkGenerated(t *testing.T, file, gen string) []byte {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "run", gen).Output()
	if err != nil {
		t.Fatalf("go run %s: %v", gen, err)
	}
	if !bytes.Equal(out, src) {
		t.Fatalf("%s is stale: run go generate ./tensor/", file)
	}
	return src
}

// byteDirective returns the bytes of a `$0x62; BYTE $0xf2; ...` operand
// list (the first BYTE already consumed) as two-digit hex.
func byteDirective(t *testing.T, list string) []string {
	t.Helper()
	var out []string
	for _, f := range strings.Split(list, "; BYTE ") {
		v, err := strconv.ParseUint(strings.TrimPrefix(f, "$0x"), 16, 8)
		if err != nil {
			t.Fatalf("bad BYTE %q", f)
		}
		out = append(out, fmt.Sprintf("%02x", v))
	}
	return out
}

// gnuAssemble assembles src with the GNU assembler as (given asArgs before
// the file) and returns the hex column objdump prints for each instruction,
// in order. When as refuses src, it returns as's message and ok false.
func gnuAssemble(t *testing.T, as, objdump string, asArgs []string, src string) (hex []string, msg string, ok bool) {
	t.Helper()
	dir := t.TempDir()
	s, o := filepath.Join(dir, "x.s"), filepath.Join(dir, "x.o")
	if err := os.WriteFile(s, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(as, append(asArgs, s, "-o", o)...).CombinedOutput(); err != nil {
		return nil, fmt.Sprintf("%v %s", err, out), false
	}
	dump, err := exec.Command(objdump, "-d", o).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(dump), "\n") {
		f := strings.Split(line, "\t")
		if len(f) >= 3 && strings.HasSuffix(f[0], ":") {
			hex = append(hex, strings.TrimSpace(f[1]))
		}
	}
	return hex, "", true
}

// checkX86Encodings assembles gas (AT&T syntax, one instruction a line)
// with GNU as --64 and fails t unless objdump gives want, the bytes of the
// hand-encoded directives (two-digit hex, in order); what names the
// instructions in messages. It skips where binutils are missing or the
// host is not amd64, and where as is too old for the extension.
func checkX86Encodings(t *testing.T, what, gas string, want []string) {
	t.Helper()
	as, err1 := exec.LookPath("as")
	objdump, err2 := exec.LookPath("objdump")
	if err1 != nil || err2 != nil || runtime.GOARCH != "amd64" {
		t.Skipf("GNU as/objdump (binutils) not available to check the %s encodings", what)
	}
	got, msg, ok := gnuAssemble(t, as, objdump, []string{"--64"}, gas)
	if !ok {
		t.Skipf("as cannot assemble %s: %s", what, msg)
	}
	gotBytes := strings.Fields(strings.Join(got, " "))
	if strings.Join(gotBytes, " ") != strings.Join(want, " ") {
		t.Fatalf("%s encodings differ from GNU as:\n got %v\nwant %v", what, gotBytes, want)
	}
}
