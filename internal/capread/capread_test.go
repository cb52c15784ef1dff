package capread

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		limit int64
		ok    bool
	}{{5, true}, {6, true}, {4, false}, {0, false}} {
		data, err := ReadFile(p, c.limit)
		switch {
		case c.ok && (err != nil || string(data) != "12345"):
			t.Errorf("limit %d: %q, %v; want the whole file", c.limit, data, err)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "larger than")):
			t.Errorf("limit %d: %q, %v; want an error naming the file and the cap", c.limit, data, err)
		}
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing"), 10); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
}
