package protocol

import (
	"encoding/hex"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The tests in this file keep docs/protocol.md true to the code: every
// message type, msgpack key, error kind, cap and identifier it lists must
// be the code's, and every one the code has must be listed.

const docPath = "../docs/protocol.md"

func readDoc(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("reading the protocol reference: %v", err)
	}
	return strings.Split(string(b), "\n")
}

// docSection returns the lines under the heading that equals heading, up to
// the next heading of level 1 to 3.
func docSection(t *testing.T, lines []string, heading string) []string {
	t.Helper()
	for i, l := range lines {
		if l != heading {
			continue
		}
		var out []string
		for _, m := range lines[i+1:] {
			if strings.HasPrefix(m, "# ") || strings.HasPrefix(m, "## ") || strings.HasPrefix(m, "### ") {
				break
			}
			out = append(out, m)
		}
		return out
	}
	t.Errorf("%s: no section %q", docPath, heading)
	return nil
}

var docKeyRow = regexp.MustCompile("^\\| `([a-z_]+)` \\|")

// docKeys lists the msgpack keys in the first column of a section's tables.
func docKeys(section []string) []string {
	var keys []string
	for _, l := range section {
		if m := docKeyRow.FindStringSubmatch(l); m != nil {
			keys = append(keys, m[1])
		}
	}
	return keys
}

// msgpackKeys lists the msgpack keys of struct type st in field order and
// the struct types nested in it (as slice elements).
func msgpackKeys(st reflect.Type) (keys []string, nested []reflect.Type) {
	for i := range st.NumField() {
		f := st.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("msgpack"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		keys = append(keys, name)
		if ft := f.Type; ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			nested = append(nested, ft.Elem())
		}
	}
	return keys, nested
}

func TestDocMessages(t *testing.T) {
	lines := readDoc(t)
	summary := docSection(t, lines, "## Messages")
	seen := map[reflect.Type]bool{}
	var check func(heading string, st reflect.Type)
	check = func(heading string, st reflect.Type) {
		keys, nested := msgpackKeys(st)
		if got := docKeys(docSection(t, lines, heading)); !slices.Equal(got, keys) {
			t.Errorf("%s: the doc lists keys %v, the code has %v (in this order)", heading, got, keys)
		}
		for _, n := range nested {
			if !seen[n] {
				seen[n] = true
				check("### "+n.Name(), n)
			}
		}
	}
	n := 0
	for typ := MsgType(1); typ < 255; typ++ { // types are never reused, so some are gone
		if !typ.Known() {
			continue
		}
		n++
		m := newMessage(typ)
		check(fmt.Sprintf("### %v (type %d)", typ, typ), reflect.TypeOf(m).Elem())
		row := fmt.Sprintf("| %d | %v |", typ, typ)
		if !slices.ContainsFunc(summary, func(l string) bool { return strings.HasPrefix(l, row) }) {
			t.Errorf("## Messages: no row starting %q", row)
		}
	}
	// No documented type the code does not have.
	re := regexp.MustCompile(`^### (\w+) \(type (\d+)\)$`)
	count := 0
	for _, l := range lines {
		if m := re.FindStringSubmatch(l); m != nil {
			count++
			v, _ := strconv.Atoi(m[2])
			if typ := MsgType(v); v > 255 || !typ.Known() || typ.String() != m[1] {
				t.Errorf("%q documents a message type this build does not have", l)
			}
		}
	}
	if count != n {
		t.Errorf("%d message sections, the code has %d types", count, n)
	}
}

func TestDocErrorKinds(t *testing.T) {
	section := docSection(t, readDoc(t), "### Error (type 6)")
	re := regexp.MustCompile(`^\| (\d+) \| (Kind\w+) \| ([a-z ]+) \|`)
	var got []ErrorKind
	for _, l := range section {
		m := re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		v, _ := strconv.Atoi(m[1])
		k := ErrorKind(v)
		got = append(got, k)
		if v < 1 || k > lastKind || k.String() != m[3] {
			t.Errorf("error kind row %q: the code's kind %d is %q (known 1..%d)", l, v, k, lastKind)
		}
	}
	if len(got) != int(lastKind) {
		t.Errorf("the doc lists %d error kinds %v, the code has %d", len(got), got, lastKind)
	}
}

var docNumRow = regexp.MustCompile("^\\| `?(\\w+)`? \\| (\\d+) \\|(?: (\\d+) \\|)?")

func TestDocFrameCaps(t *testing.T) {
	section := docSection(t, readDoc(t), "### Frame caps")
	want := map[string]MsgType{"unknown": 255}
	for typ := MsgType(1); typ < 255; typ++ {
		if typ.Known() {
			want[typ.String()] = typ
		}
	}
	rows := 0
	for _, l := range section {
		m := docNumRow.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		rows++
		typ, ok := want[m[1]]
		if !ok {
			t.Errorf("frame cap row %q names no message type", l)
			continue
		}
		delete(want, m[1])
		bytes, _ := strconv.Atoi(m[2])
		elems, _ := strconv.Atoi(m[3])
		if bytes != MaxFrameBytes(typ) || elems != maxElems(typ) {
			t.Errorf("%s: the doc says %d bytes and %d elements, the code %d and %d", m[1], bytes, elems, MaxFrameBytes(typ), maxElems(typ))
		}
	}
	for name := range want {
		t.Errorf("no frame cap row for %s", name)
	}
}

func TestDocLimits(t *testing.T) {
	section := docSection(t, readDoc(t), "### Limits")
	want := map[string]int64{
		"HeaderLen":           HeaderLen,
		"MaxSeqLen":           MaxSeqLen,
		"MaxSeqsPerChunk":     MaxSeqsPerChunk,
		"MaxTokensPerChunk":   MaxTokensPerChunk,
		"MaxHiddenDim":        MaxHiddenDim,
		"MaxModelLayers":      MaxModelLayers,
		"MaxVocab":            MaxVocab,
		"MaxLayersPerRequest": MaxLayersPerRequest,
		"MaxFileBytes":        MaxFileBytes,
		"MaxGossipBytes":      MaxGossipBytes,
		"MaxResultData":       MaxResultData,
		"MaxOfferChunks":      MaxOfferChunks,
		"MaxRosterMembers":    MaxRosterMembers,
		"MaxCacheQueryChunks": MaxCacheQueryChunks,
		"maxCIDLen":           maxCIDLen,
		"maxPeerIDLen":        maxPeerIDLen,
		"maxPeerIDBytes":      maxPeerIDBytes,
		"maxBases":            maxBases,
		"maxCodecs":           maxCodecs,
		"maxMetrics":          maxMetrics,
		"maxNameLen":          maxNameLen,
		"maxTokenLen":         maxTokenLen,
		"maxTextLen":          maxTextLen,
		"maxKeyBytes":         maxKeyBytes,
		"maxSigBytes":         maxSigBytes,
		"maxFreeSlots":        maxFreeSlots,
		"maxDepth":            maxDepth,
		"maxSkipFrames":       maxSkipFrames,
		"initialBody":         initialBody,
	}
	for _, l := range section {
		m := docNumRow.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		v, ok := want[m[1]]
		if !ok {
			t.Errorf("limit row %q names no constant this test knows", l)
			continue
		}
		delete(want, m[1])
		if got, _ := strconv.ParseInt(m[2], 10, 64); got != v {
			t.Errorf("%s: the doc says %d, the code %d", m[1], got, v)
		}
	}
	var missing []string
	for name := range want {
		missing = append(missing, name)
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("limits missing from the doc: %v", missing)
	}
}

func TestDocIdentifiers(t *testing.T) {
	doc := strings.Join(readDoc(t), "\n")
	for _, s := range []string{
		"`" + EmbedProtocol + "`",
		"`" + RosterProtocol + "`",
		"`" + CacheProtocol + "`",
		"`" + ControlTopic("<swarm>") + "`",
		"`" + strings.ReplaceAll(RosterDomain, "\n", `\n`) + "`",
		"`" + NodesTopic("<swarm>") + "`",
		"`" + AdaptorsTopic("<swarm>") + "`",
		"`" + SwarmName(nil) + "`",
		"`" + strings.ReplaceAll(AnnounceDomain, "\n", `\n`) + "`",
		fmt.Sprintf("`Version = %d`", Version),
	} {
		if !strings.Contains(doc, s) {
			t.Errorf("%s does not mention %s", docPath, s)
		}
	}
	key, err := NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	header := strings.Join(strings.SplitN(string(key), "\n", 3)[:2], "\n")
	if !strings.Contains(doc, header) {
		t.Errorf("%s does not show the swarm key header %q", docPath, header)
	}
}

// TestDocExampleFrame checks the annotated example frame against the
// encoder.
func TestDocExampleFrame(t *testing.T) {
	lines := readDoc(t)
	var example string
	for i, l := range lines {
		if strings.HasPrefix(l, "Example: the frame of") {
			for _, m := range lines[i+1:] {
				if m != "" && !strings.HasPrefix(m, "`") && !strings.HasPrefix(m, "(") && !strings.HasPrefix(m, "Example") {
					example = m
					break
				}
			}
		}
	}
	if example == "" {
		t.Fatalf("%s: no example frame", docPath)
	}
	b, err := Marshal(Errorf(KindOverloaded, "busy: %d jobs", 7))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.ReplaceAll(example, " ", ""), hex.EncodeToString(b); got != want {
		t.Errorf("the doc's example frame is\n%s\nthe encoder writes\n%s", got, want)
	}
}
