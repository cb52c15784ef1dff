package protocol

import (
	"fmt"
	"math"
	"unicode"
	"unicode/utf8"
)

// Field checks shared by the Validate methods. Each error names the field
// and the bound it broke.

func checkVersion(v uint8) error {
	if v == 0 {
		return fmt.Errorf("V: must be >= 1 (set it to protocol.Version)")
	}
	return nil
}

// checkHex checks a lowercase hex string: exactly n characters when n > 0,
// otherwise 1..maxTokenLen.
func checkHex(field, s string, n int) error {
	switch {
	case n > 0 && len(s) != n:
		return fmt.Errorf("%s: %d hex characters, want %d", field, len(s), n)
	case n == 0 && (len(s) == 0 || len(s) > maxTokenLen):
		return fmt.Errorf("%s: %d hex characters, want 1..%d", field, len(s), maxTokenLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%s: byte %d (%q) is not lowercase hex", field, i, c)
		}
	}
	return nil
}

// checkOptHex is checkHex that also accepts "".
func checkOptHex(field, s string, n int) error {
	if s == "" {
		return nil
	}
	return checkHex(field, s, n)
}

// checkIdent checks a short identifier (codec, arch, metric name):
// 1..maxTokenLen characters from [A-Za-z0-9._:/-].
func checkIdent(field, s string) error {
	if len(s) == 0 || len(s) > maxTokenLen {
		return fmt.Errorf("%s: length %d, want 1..%d", field, len(s), maxTokenLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '_' || c == '-' || c == ':' || c == '/') {
			return fmt.Errorf("%s: byte %d (%q) not in [A-Za-z0-9._:/-]", field, i, c)
		}
	}
	return nil
}

// checkText checks free text: valid UTF-8 without control characters, at
// most max bytes, and non-empty when required.
func checkText(field, s string, max int, required bool) error {
	if len(s) > max {
		return fmt.Errorf("%s: %d bytes, max %d", field, len(s), max)
	}
	if required && s == "" {
		return fmt.Errorf("%s: empty", field)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: not valid UTF-8", field)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s: contains control character %U", field, r)
		}
	}
	return nil
}

// checkRange checks lo <= v <= hi.
func checkRange[T int | int64 | uint64](field string, v, lo, hi T) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s: %d out of range [%d, %d]", field, v, lo, hi)
	}
	return nil
}

// checkList checks a list field: lo..hi entries (the bound names
// "len(field)"), then each entry in order with check, which gets the entry's
// own name, field[i]. A check may keep state across calls (the entries
// before: sorted, no duplicates).
func checkList[T any](field string, xs []T, lo, hi int, check func(field string, x T) error) error {
	if err := checkRange("len("+field+")", len(xs), lo, hi); err != nil {
		return err
	}
	for i, x := range xs {
		if err := check(fmt.Sprintf("%s[%d]", field, i), x); err != nil {
			return err
		}
	}
	return nil
}

// checkSigned checks the fields that end every signed message: when it was
// signed (ms since the epoch, > 0) and the signer's key and signature (empty
// in a draft before Sign; Verify rejects that).
func checkSigned(unixMilli int64, signer, sig []byte) error {
	return firstErr(
		checkRange("UnixMilli", unixMilli, 1, 1<<62),
		checkRange("len(Signer)", len(signer), 0, maxKeyBytes),
		checkRange("len(Sig)", len(sig), 0, maxSigBytes),
	)
}

// checkChunkIDs checks a list of lo..hi distinct ChunkIDs (64 lowercase hex).
func checkChunkIDs(field string, ids []string, lo, hi int) error {
	var seen map[string]bool // made once the count is in bounds
	return checkList(field, ids, lo, hi, func(f, id string) error {
		if err := checkHex(f, id, 64); err != nil {
			return err
		}
		if seen == nil {
			seen = make(map[string]bool, len(ids))
		}
		if seen[id] {
			return fmt.Errorf("%s: %s is repeated", f, id)
		}
		seen[id] = true
		return nil
	})
}

// checkLayer checks a layer index: -1 (final, after the final norm) or
// 0..MaxModelLayers (after that many blocks; 0 = token embeddings).
func checkLayer(field string, l int) error {
	return checkRange(field, l, -1, MaxModelLayers)
}

func checkFinite(field string, f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%s: %v is not finite", field, f)
	}
	return nil
}

// checkNonNegative checks that f is finite and >= 0.
func checkNonNegative(field string, f float64) error {
	if err := checkFinite(field, f); err != nil {
		return err
	}
	if f < 0 {
		return fmt.Errorf("%s: %v is negative", field, f)
	}
	return nil
}
