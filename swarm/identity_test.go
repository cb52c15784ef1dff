package swarm

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestOpenIdentity: the key is made once and kept; a second holder is
// refused while the first runs, and admitted once it closes.
func TestOpenIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", IdentityFile)
	a, err := OpenIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Created {
		t.Error("a new key file is not reported as created")
	}
	if st, err := os.Stat(path); err != nil || (runtime.GOOS != "windows" && st.Mode().Perm() != 0o600) {
		t.Fatalf("key file: %v %v", st, err)
	}
	if runtime.GOOS == "linux" || runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		if _, err := OpenIdentity(path); !errors.Is(err, ErrIdentityInUse) {
			t.Fatalf("second holder: %v, want ErrIdentityInUse", err)
		}
	}
	idA, _ := peer.IDFromPrivateKey(a.Key)
	a.Close()
	b, err := OpenIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	idB, _ := peer.IDFromPrivateKey(b.Key)
	if idA != idB || b.Created {
		t.Fatalf("reopened identity %s (created %v), was %s", idB, b.Created, idA)
	}
}
