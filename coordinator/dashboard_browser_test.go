package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/internal/testenv"
	"carryon/node"
)

// chromiumArgs are the flags for a quiet, sandbox-free, offline headless
// Chromium (CI runs it as root in a container).
func chromiumArgs(profile string) []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + profile, "--window-size=1280,1500",
		"--virtual-time-budget=8000"} // let the page's fetch and render finish before the dump
}

func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CARRYON_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Missing(t, "CARRYON_REQUIRE_BROWSER", "no headless browser: install Debian's chromium (apt-get install -y chromium) or set CARRYON_CHROMIUM")
	return ""
}

// TestDashboardInBrowser runs a small job on a loopback swarm (three fake
// nodes, real coordinator, a few training steps, one published adaptor),
// opens the dashboard in headless Chromium, and checks that what the page
// shows after its JavaScript ran matches the coordinator's own numbers;
// it keeps a screenshot in $CARRYON_SCREENSHOT_DIR (default a temp dir).
func TestDashboardInBrowser(t *testing.T) {
	chromium := findChromium(t)
	ts := newTestSwarm(t)
	for i, dev := range []string{"cpu", "cuda:H100", "cpu"} {
		ts.addNode(newFakeBase(ts.base, 0, honest, uint64(i)), node.Config{Device: dev})
	}
	ds := swarmDataset(11, 10, 2, 24)
	ds.Train, ds.Val = ds.Train[:8], ds.Train[8:]
	ds.Report = dataset.Report{Format: "jsonl", Read: 25, Used: 22, Cut: 5, Dropped: 3}
	co := carryon.DefaultConfig(ts.base.Config.Dim, ts.base.Config.Vocab)
	co.Width, co.Layers, co.Heads, co.FFN = 16, 1, 2, 32
	c, _ := ts.coordinator(Config{MinNodes: 3, VerifyFraction: 0.3, Train: TrainConfig{CarryOn: co, Steps: 12, BatchSeqs: 2,
		EvalEvery: 4, CheckpointEvery: -1, Optim: carryon.OptimConfig{LR: 1e-2}}})
	d, err := NewDashboard(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	srv := httptest.NewServer(d) // 127.0.0.1
	defer srv.Close()

	ctx, cancel := context.WithTimeout(ts.ctx, 30*time.Second)
	defer cancel()
	res, v, err := c.Run(ctx, ds, d.Hooks(Hooks{}))
	d.Finish(err)
	if err != nil {
		t.Fatal(err)
	}
	st := c.Status()
	latest, ok, err := c.LatestVersion()
	if err != nil || !ok || latest.CID != v.CID.String() {
		t.Fatalf("latest version %v %v %v, published %s", latest, ok, err, v.CID)
	}
	loss := res.Steps[len(res.Steps)-1].Loss
	valLoss := res.Evals[len(res.Evals)-1].Loss

	profile := t.TempDir()
	dctx, dcancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer dcancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(dctx, chromium, append(chromiumArgs(profile), "--dump-dom", srv.URL+"/")...)
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v\n%s", err, tail(stderr.Bytes(), 2000))
	}
	if !bytes.Contains(dom, []byte(`data-ready="1"`)) {
		t.Fatalf("the page never rendered a status (JavaScript did not run or the fetch failed):\n%s", tail(dom, 3000))
	}
	text := func(id string) string {
		m := regexp.MustCompile(`id="` + id + `"[^>]*>([^<]*)<`).FindSubmatch(dom)
		if m == nil {
			t.Fatalf("no element #%s in the page", id)
		}
		return html.UnescapeString(string(m[1]))
	}
	attr := func(id, name string) string {
		m := regexp.MustCompile(`<[^>]*id="` + id + `"[^>]*>`).Find(dom)
		a := regexp.MustCompile(name + `="([^"]*)"`).FindSubmatch(m)
		if a == nil {
			t.Fatalf("#%s has no %s", id, name)
		}
		return html.UnescapeString(string(a[1]))
	}
	for _, c := range []struct{ id, want string }{
		{"chunks-done", strconv.Itoa(st.Job.Done)},
		{"chunks-total", strconv.Itoa(st.Job.Total)},
		{"chunks-left", strconv.Itoa(st.Job.Total - st.Job.Done)},
		{"node-count", strconv.Itoa(len(st.Nodes))},
		{"latest-loss", fmt.Sprintf("%.4f", loss)},
		{"val-loss", fmt.Sprintf("%.4f", valLoss)},
		{"train-step", strconv.Itoa(len(res.Steps))},
		{"latest-cid", v.CID.String()},
		{"version-count", "1"},
		{"phase", "done"},
		{"job-id", st.Job.ID},
		{"data-read", "25"},
		{"data-cut", "5"},
		{"data-dropped", "3"},
	} {
		if got := text(c.id); got != c.want {
			t.Errorf("page shows #%s = %q, the coordinator has %q", c.id, got, c.want)
		}
	}
	if st.Job.Done != 10 || len(st.Nodes) != 3 {
		t.Errorf("coordinator status: %d chunks done, %d nodes; want 10 and 3", st.Job.Done, len(st.Nodes))
	}
	if got, err := strconv.ParseFloat(attr("latest-loss", "data-value"), 64); err != nil || got != loss {
		t.Errorf("page's latest loss %v (%v), the trainer's %v", got, err, loss)
	}
	for _, n := range st.Nodes {
		if !bytes.Contains(dom, []byte(`data-peer="`+n.Peer+`"`)) {
			t.Errorf("node %s missing from the page's table", n.Peer)
		}
	}
	if !bytes.Contains(dom, []byte(`data-cid="`+v.CID.String()+`"`)) {
		t.Errorf("adaptor %s missing from the versions table", v.CID)
	}

	dir := os.Getenv("CARRYON_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "dashboard.png")
	os.Remove(shot)
	stderr.Reset()
	cmd = exec.CommandContext(dctx, chromium, append(chromiumArgs(t.TempDir()), "--screenshot="+shot, srv.URL+"/")...)
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s%s", err, out, tail(stderr.Bytes(), 2000))
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	// The curves were drawn: the training loss colour (--train, #2f6fde)
	// and the validation colour (--val, #d9480f) cover many pixels.
	count := func(r0, g0, b0 uint32) int {
		n := 0
		bd := img.Bounds()
		for y := bd.Min.Y; y < bd.Max.Y; y++ {
			for x := bd.Min.X; x < bd.Max.X; x++ {
				r, g, b, _ := img.At(x, y).RGBA()
				if near(r>>8, r0) && near(g>>8, g0) && near(b>>8, b0) {
					n++
				}
			}
		}
		return n
	}
	if n := count(0x2f, 0x6f, 0xde); n < 300 {
		t.Errorf("screenshot has %d pixels of the training-loss colour; the curve was not drawn", n)
	}
	if n := count(0xd9, 0x48, 0x0f); n < 40 {
		t.Errorf("screenshot has %d pixels of the validation colour; the validation points were not drawn", n)
	}
	t.Logf("screenshot: %s (%dx%d)", shot, img.Bounds().Dx(), img.Bounds().Dy())
}

func near(a, b uint32) bool { return a+6 >= b && b+6 >= a }

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
