package experiments

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"strconv"
)

// A hand-written SVG line chart: linear axes with "nice" ticks, one
// polyline per series, optional point markers and point labels, a legend.

// Series is one line of a chart.
type Series struct {
	Name    string
	X, Y    []float64 // equal lengths; non-finite points are skipped
	Labels  []string  // optional text beside each point
	Dashed  bool
	Markers bool
	NoLine  bool // points only (a scatter)
}

// Chart is a line chart.
type Chart struct {
	Title, XLabel, YLabel string
	Series                []Series
	// HLines are horizontal reference lines (e.g. the base's loss).
	HLines []HLine
	// YMin/YMax, when YMax > YMin, fix the y range instead of fitting it.
	YMin, YMax float64
}

// HLine is a labelled horizontal reference line.
type HLine struct {
	Y    float64
	Name string
}

// palette is colour-blind-safe (Okabe-Ito).
var palette = []string{"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"}

const (
	svgW, svgH                       = 720, 420
	padL, padR, padT, padB           = 70, 190, 40, 55
	plotW, plotH                     = svgW - padL - padR, svgH - padT - padB
	fontSize, smallFont, legendSpace = 13, 11, 20
)

// niceTicks returns about n round tick values covering [lo, hi] and the
// extended range they span.
func niceTicks(lo, hi float64, n int) (ticks []float64, tlo, thi float64) {
	if !(hi > lo) {
		d := math.Max(math.Abs(lo)*0.1, 1e-3)
		lo, hi = lo-d, hi+d
	}
	raw := (hi - lo) / float64(max(1, n))
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag * 10
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	tlo, thi = math.Floor(lo/step)*step, math.Ceil(hi/step)*step
	for v := tlo; v <= thi+step/2; v += step {
		ticks = append(ticks, math.Round(v/step)*step)
	}
	return ticks, tlo, thi
}

// fmtTick prints a tick value with no more digits than it needs.
func fmtTick(v float64) string {
	if v == 0 {
		return "0"
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// SVG renders the chart as a standalone SVG document.
func (c Chart) SVG() []byte {
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		for i := range s.X {
			if finite(s.X[i]) && finite(s.Y[i]) {
				xlo, xhi = math.Min(xlo, s.X[i]), math.Max(xhi, s.X[i])
				ylo, yhi = math.Min(ylo, s.Y[i]), math.Max(yhi, s.Y[i])
			}
		}
	}
	for _, h := range c.HLines {
		if finite(h.Y) {
			ylo, yhi = math.Min(ylo, h.Y), math.Max(yhi, h.Y)
		}
	}
	if math.IsInf(xlo, 1) {
		xlo, xhi, ylo, yhi = 0, 1, 0, 1
	}
	if c.YMax > c.YMin {
		ylo, yhi = c.YMin, c.YMax
	}
	xt, x0, x1 := niceTicks(xlo, xhi, 6)
	yt, y0, y1 := niceTicks(ylo, yhi, 6)
	px := func(x float64) float64 { return padL + (x-x0)/(x1-x0)*plotW }
	py := func(y float64) float64 { return padT + (y1-y)/(y1-y0)*plotH }
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="%d">`+"\n", svgW, svgH, svgW, svgH, fontSize)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	fmt.Fprintf(&b, `<clipPath id="plot"><rect x="%d" y="%d" width="%d" height="%d"/></clipPath>`+"\n", padL, padT, plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-weight="bold">%s</text>`+"\n", padL, html.EscapeString(c.Title))
	// Grid and ticks.
	for _, v := range xt {
		x := px(v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>`+"\n", x, padT, x, padT+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" font-size="%d">%s</text>`+"\n", x, padT+plotH+16, smallFont, fmtTick(v))
	}
	for _, v := range yt {
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", padL, y, padL+plotW, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" font-size="%d">%s</text>`+"\n", padL-6, y+4, smallFont, fmtTick(v))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", padL, padT, plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", padL+plotW/2, svgH-12, html.EscapeString(c.XLabel))
	fmt.Fprintf(&b, `<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">%s</text>`+"\n", padT+plotH/2, padT+plotH/2, html.EscapeString(c.YLabel))
	legendY := padT + 8
	legend := func(color string, dashed bool, name string) {
		dash := ""
		if dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", padL+plotW+12, legendY, padL+plotW+36, legendY, color, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="%d">%s</text>`+"\n", padL+plotW+42, legendY+4, smallFont, html.EscapeString(name))
		legendY += legendSpace
	}
	for _, h := range c.HLines {
		if !finite(h.Y) {
			continue
		}
		y := py(h.Y)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#777" stroke-width="1.5" stroke-dasharray="2 3"/>`+"\n", padL, y, padL+plotW, y)
		legend("#777", true, h.Name)
	}
	for i, s := range c.Series {
		color := palette[i%len(palette)]
		var pts bytes.Buffer
		for j := range s.X {
			if finite(s.X[j]) && finite(s.Y[j]) {
				fmt.Fprintf(&pts, "%.1f,%.1f ", px(s.X[j]), py(s.Y[j]))
			}
		}
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		if !s.NoLine {
			fmt.Fprintf(&b, `<polyline clip-path="url(#plot)" fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", color, dash, bytes.TrimSpace(pts.Bytes()))
		}
		for j := range s.X {
			if !finite(s.X[j]) || !finite(s.Y[j]) || s.Y[j] < y0 || s.Y[j] > y1 {
				continue
			}
			if s.Markers {
				fmt.Fprintf(&b, `<circle clip-path="url(#plot)" cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", px(s.X[j]), py(s.Y[j]), color)
			}
			if j < len(s.Labels) && s.Labels[j] != "" {
				dy := -6.0 // alternate above and below so that neighbours do not collide
				if j%2 == 1 {
					dy = 15
				}
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" fill="%s">%s</text>`+"\n", px(s.X[j])+6, py(s.Y[j])+dy, smallFont, color, html.EscapeString(s.Labels[j]))
			}
		}
		legend(color, s.Dashed, s.Name)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}
