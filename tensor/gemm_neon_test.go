package tensor

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// TestGemmNEONGenerated checks that gemm_arm64.s is what gemm_gen_arm64.go
// writes, and that every hand-encoded by-element FMLA/FMUL WORD in it (the
// Go assembler lacks those forms) is what the GNU aarch64 assembler makes of
// the mnemonic in its comment, so the encodings are checked on any host.
func TestGemmNEONGenerated(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the generator")
	}
	src := checkGenerated(t, "gemm_arm64.s", "gemm_gen_arm64.go")
	as, objdump := "aarch64-linux-gnu-as", "aarch64-linux-gnu-objdump"
	if runtime.GOARCH == "arm64" {
		as, objdump = "as", "objdump"
	}
	asPath, err1 := exec.LookPath(as)
	objPath, err2 := exec.LookPath(objdump)
	if err1 != nil || err2 != nil {
		t.Skipf("%s/%s not installed (Debian: binutils-aarch64-linux-gnu): by-element encodings not checked", as, objdump)
	}
	re := regexp.MustCompile(`WORD \$0x([0-9a-f]{8}) // (FMLA|FMUL) V(\d+)\.4S, V(\d+)\.4S, V(\d+)\.S\[(\d)\]`)
	var gas strings.Builder
	var want []string
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		fmt.Fprintf(&gas, "%s v%s.4s, v%s.4s, v%s.s[%s]\n", strings.ToLower(m[2]), m[3], m[4], m[5], m[6])
		want = append(want, m[1])
	}
	if n := strings.Count(string(src), "WORD"); len(want) == 0 || n != len(want) {
		t.Fatalf("%d WORDs in gemm_arm64.s, %d with a mnemonic this test reads", n, len(want))
	}
	got, msg, ok := gnuAssemble(t, asPath, objPath, nil, gas.String())
	if !ok {
		t.Fatalf("%s: %s", as, msg)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("by-element encodings differ from %s:\n %s gives %v\n file has %v", as, as, got, want)
	}
	t.Logf("%d by-element FMLA/FMUL encodings match %s", len(want), as)
}

// TestGemmNEONUnderQEMU cross-compiles this package's tests for arm64 and
// runs the GEMM kernel subset under qemu-aarch64 (user mode), so the NEON
// kernel runs on a non-ARM host: correctness only, emulation says nothing
// about speed. It skips without qemu-aarch64 (Debian: qemu-user), unless
// CARRYON_REQUIRE_QEMU=1.
func TestGemmNEONUnderQEMU(t *testing.T) {
	if runtime.GOARCH == "arm64" {
		t.Skip("arm64 host: the NEON kernel runs natively in TestGemmKernels")
	}
	if testing.Short() {
		t.Skip("cross-compiles and emulates")
	}
	qemu, err := exec.LookPath("qemu-aarch64")
	if err != nil {
		if os.Getenv("CARRYON_REQUIRE_QEMU") == "1" {
			t.Fatal("qemu-aarch64 not installed (Debian: qemu-user) and CARRYON_REQUIRE_QEMU=1")
		}
		t.Skip("qemu-aarch64 not installed (Debian: qemu-user): NEON kernel not run")
	}
	bin := filepath.Join(t.TempDir(), "tensor-arm64.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("GOARCH=arm64 go test -c: %v\n%s", err, msg)
	}
	// The shared kernel suite, NEON subtests only (the Go kernels run
	// natively already); ThreadGrid and AlphaZero run every available set.
	run := exec.Command(qemu, bin, "-test.short", "-test.v", "-test.run",
		"^(TestGemmKernels|TestGemmBF16Kernels|TestGemmThreadGrid|TestGemmAlphaZeroIgnoresAB)$/^neon$")
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-aarch64 %s: %v\n%s", filepath.Base(bin), err, out)
	}
	for _, want := range []string{"--- PASS: TestGemmKernels/neon", "--- PASS: TestGemmBF16Kernels/neon"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Fatalf("under qemu: no %q (NEON kernels not run?)\n%s", want, out)
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "neon:") {
			t.Logf("qemu-aarch64: %s", strings.TrimSpace(line))
		}
	}
}
