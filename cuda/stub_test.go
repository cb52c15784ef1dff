//go:build !cuda

package cuda

import (
	"errors"
	"testing"
)

func TestStubSaysNotBuilt(t *testing.T) {
	if Available {
		t.Fatal("Available in a build without the cuda tag")
	}
	_, err := New(0)
	if !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("New = %v, want ErrNotBuilt", err)
	}
	if want := "built without CUDA support"; !contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
