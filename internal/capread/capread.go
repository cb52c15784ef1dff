// Package capread reads input that may be hostile or mistaken (a config,
// a tokenizer, a job file) whole, but never more than a cap: past it, an
// error instead of the memory.
package capread

import (
	"fmt"
	"io"
	"os"
)

// ReadAll reads r to its end, or fails ("larger than limit bytes") as soon
// as it has read more than limit bytes.
func ReadAll(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, nil
}

// ReadFile is ReadAll of the file at path; its errors name the path (an
// error opening the file is os.Open's, so errors.Is(err, fs.ErrNotExist)
// holds for a missing file).
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := ReadAll(f, limit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
}
