package buildinfo

import "sort"

// present returns the names whose flag is set, sorted.
func present(m map[string]bool) []string {
	var out []string
	for k, ok := range m {
		if ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
