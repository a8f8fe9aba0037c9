// Command loadplot turns the JSON results of "lemonproxy load" into the
// plots of docs/load.md:
//
//	go run ./load/loadplot -dir docs/load            # SVG plots next to the results
//	go run ./load/loadplot -dir docs/load -format png
//
// It reads every *.json file in -dir (as written by "lemonproxy load
// -format json"), groups the results by scenario, label ("proxy",
// "dovecot", "proxy-compress", ...) and size (sessions, or messages for
// resync), takes the median where a point was measured more than once,
// and writes one plot per figure that has data. It is a separate command
// so that the plotting library stays out of the lemonproxy binary.
package main

import (
	"flag"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/lemonproxy/lemonproxy/load"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadplot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "docs/load", "directory of JSON results; the plots are written there too")
	out := fs.String("out", "", "directory for the plots (default: -dir)")
	format := fs.String("format", "svg", "svg or png")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *format != "svg" && *format != "png" {
		fmt.Fprintln(stderr, "loadplot: -format must be svg or png")
		return 2
	}
	if *out == "" {
		*out = *dir
	}
	results, err := readResults(*dir, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "loadplot:", err)
		return 1
	}
	files, err := generate(results, *out, *format)
	if err != nil {
		fmt.Fprintln(stderr, "loadplot:", err)
		return 1
	}
	for _, f := range files {
		fmt.Fprintln(stdout, f)
	}
	if len(files) == 0 {
		fmt.Fprintf(stderr, "loadplot: no plottable results in %s\n", *dir)
		return 1
	}
	return 0
}

// readResults reads every *.json file of dir that is a load result.
func readResults(dir string, warn io.Writer) ([]*load.Result, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	slices.Sort(paths)
	var out []*load.Result
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		r, err := load.ReadResult(f)
		f.Close()
		if err != nil || r.Scenario == "" {
			fmt.Fprintf(warn, "loadplot: skipping %s: not a load result (%v)\n", p, err)
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// line is one metric drawn for each label that has it.
type line struct {
	metric string
	name   string // shown after the label in the legend
	// labels limits the line to these labels (none: every label).
	labels []string
}

// chart is one figure.
type chart struct {
	file, title, scenario string
	x                     string // "clients" or "messages": the x axis
	xLabel, yLabel        string
	div                   float64 // values are divided by this
	logX, logY            bool
	bars                  bool // one bar per label and line, x ignored
	lines                 []line
}

var charts = []chart{
	{
		file: "idle-memory", title: "Memory per idle session", scenario: "idle", x: "clients",
		xLabel: "idle sessions", yLabel: "KiB per idle session", div: 1024, logY: true,
		lines: []line{
			{metric: "target-rss-per-session", name: "proxy RSS", labels: []string{"proxy", "proxy-compress"}},
			{metric: "dovecot-pss-per-session", name: "Dovecot PSS behind the proxy", labels: []string{"proxy", "proxy-compress"}},
			{metric: "target-rss+dovecot-pss-per-session", name: "proxy RSS + Dovecot PSS", labels: []string{"proxy", "proxy-compress"}},
			{metric: "dovecot-pss-per-session", name: "Dovecot PSS", labels: []string{"dovecot", "dovecot-compress"}},
			{metric: "target-heap-inuse-per-session", name: "proxy heap in use", labels: []string{"proxy", "proxy-compress"}},
		},
	},
	{
		// The push runs hold their sessions idle before the APPENDs begin
		// and measure the proxy's heap then.
		file: "idle-heap", title: "Proxy heap per idle session (before the APPENDs of the push runs)", scenario: "push", x: "clients",
		xLabel: "idle sessions", yLabel: "KiB per idle session", div: 1024,
		lines: []line{
			{metric: "target-heap-inuse-per-session", name: "heap in use (with garbage)", labels: []string{"proxy"}},
			{metric: "target-heap-live-per-session", name: "heap live at the last GC", labels: []string{"proxy"}},
			{metric: "target-rss-per-session", name: "RSS", labels: []string{"proxy"}},
		},
	},
	{
		file: "idle-upstream", title: "Upstream connections per idle session", scenario: "idle", x: "clients",
		xLabel: "idle sessions", yLabel: "connections to Dovecot per session", div: 1,
		lines: []line{{metric: "upstream-connections-per-session", name: "connections"}},
	},
	{
		file: "push-latency", title: "APPEND (tagged OK) to EXISTS at every idle client", scenario: "push", x: "clients",
		xLabel: "idle sessions", yLabel: "ms", div: 1,
		lines: []line{
			{metric: "push-latency-p50", name: "p50"},
			{metric: "push-latency-p99", name: "p99"},
		},
	},
	{
		file: "resync-bytes", title: "Bytes to resync a mailbox after 15 changes", scenario: "resync", x: "messages",
		xLabel: "messages in the mailbox", yLabel: "bytes to the client", div: 1, logX: true, logY: true,
		lines: []line{
			{metric: "qresync-bytes-p50", name: "QRESYNC SELECT"},
			{metric: "full-resync-bytes-p50", name: "full: SELECT + UID FETCH 1:* (FLAGS)"},
		},
	},
	{
		file: "resync-time", title: "Time to resync a mailbox after 15 changes", scenario: "resync", x: "messages",
		xLabel: "messages in the mailbox", yLabel: "ms", div: 1, logX: true, logY: true,
		lines: []line{
			{metric: "qresync-time-p50", name: "QRESYNC SELECT"},
			{metric: "full-resync-time-p50", name: "full: SELECT + UID FETCH 1:* (FLAGS)"},
		},
	},
	{
		file: "fetch-throughput", title: "Bulk FETCH of bodies", scenario: "fetch", bars: true,
		yLabel: "MB/s of message bodies", div: 1,
		lines: []line{{metric: "throughput", name: ""}},
	},
	{
		file: "fetch-cpu", title: "Server CPU per MB of bodies fetched", scenario: "fetch", bars: true,
		yLabel: "ms of CPU per MB", div: 1,
		lines: []line{
			{metric: "target-cpu-per-MB", name: "proxy", labels: []string{"proxy", "proxy-compress", "proxy-1client"}},
			{metric: "dovecot-cpu-per-MB", name: "Dovecot"},
		},
	},
}

// generate writes every chart that has data and returns the files.
func generate(results []*load.Result, dir, format string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for _, c := range charts {
		p, ok, err := c.plot(results)
		if err != nil {
			return files, fmt.Errorf("%s: %w", c.file, err)
		}
		if !ok {
			continue
		}
		path := filepath.Join(dir, c.file+"."+format)
		if err := p.Save(18*vg.Centimeter, 12*vg.Centimeter, path); err != nil {
			return files, err
		}
		files = append(files, path)
	}
	return files, nil
}

// labelsOf returns the labels of a scenario's results, in a fixed order.
func labelsOf(results []*load.Result, scenario string) []string {
	seen := map[string]bool{}
	for _, r := range results {
		if r.Scenario == scenario {
			seen[labelOf(r)] = true
		}
	}
	order := []string{"proxy", "proxy-compress", "dovecot", "dovecot-compress"}
	var out []string
	for _, l := range order {
		if seen[l] {
			out = append(out, l)
			delete(seen, l)
		}
	}
	rest := make([]string, 0, len(seen))
	for l := range seen {
		rest = append(rest, l)
	}
	sort.Strings(rest)
	return append(out, rest...)
}

func labelOf(r *load.Result) string {
	if r.Label == "" {
		return "unlabelled"
	}
	return r.Label
}

func xOf(r *load.Result, x string) float64 {
	if x == "messages" {
		if v, ok := r.Metric("messages"); ok {
			return v
		}
		return float64(r.Params.Messages)
	}
	return float64(r.Params.Clients)
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// points returns the median of metric per x for one label.
func points(results []*load.Result, scenario, label, metric, x string, div float64) plotter.XYs {
	byX := map[float64][]float64{}
	for _, r := range results {
		if r.Scenario != scenario || labelOf(r) != label {
			continue
		}
		if v, ok := r.Metric(metric); ok {
			byX[xOf(r, x)] = append(byX[xOf(r, x)], v/div)
		}
	}
	xs := make([]float64, 0, len(byX))
	for k := range byX {
		xs = append(xs, k)
	}
	slices.Sort(xs)
	var out plotter.XYs
	for _, k := range xs {
		out = append(out, plotter.XY{X: k, Y: median(byX[k])})
	}
	return out
}

func (c chart) plot(results []*load.Result) (*plot.Plot, bool, error) {
	p := plot.New()
	p.Title.Text = c.title
	p.X.Label.Text = c.xLabel
	p.Y.Label.Text = c.yLabel
	p.Legend.Top = true
	p.Legend.Left = true
	if c.bars {
		return c.barPlot(p, results)
	}
	if c.logX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if c.logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	p.Add(plotter.NewGrid())
	n := 0
	yMax := 0.0
	for _, label := range labelsOf(results, c.scenario) {
		for _, l := range c.lines {
			if len(l.labels) > 0 && !slices.Contains(l.labels, label) {
				continue
			}
			xys := points(results, c.scenario, label, l.metric, c.x, c.div)
			if len(xys) == 0 || (c.logY && slices.ContainsFunc(xys, func(v plotter.XY) bool { return v.Y <= 0 })) {
				continue
			}
			for _, xy := range xys {
				yMax = max(yMax, xy.Y)
			}
			ln, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, false, err
			}
			col := plotutil.Color(n)
			ln.Color, pts.Color = col, col
			ln.Width = vg.Points(1.5)
			if strings.HasPrefix(label, "dovecot") {
				ln.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			}
			pts.Shape = plotutil.Shape(n)
			p.Add(ln, pts)
			p.Legend.Add(legendName(label, l.name), ln, pts)
			n++
		}
	}
	// Room above the lines for the legend.
	if c.logY {
		p.Y.Max = yMax * 30
	} else {
		p.Y.Min = 0
		p.Y.Max = yMax * (1.15 + 0.12*float64(n))
	}
	return p, n > 0, nil
}

func legendName(label, name string) string {
	if name == "" {
		return label
	}
	return label + ": " + name
}

func (c chart) barPlot(p *plot.Plot, results []*load.Result) (*plot.Plot, bool, error) {
	labels := labelsOf(results, c.scenario)
	if len(labels) == 0 {
		return nil, false, nil
	}
	w := vg.Points(18)
	var lines []line
	for _, l := range c.lines {
		for _, label := range labels {
			if len(points(results, c.scenario, label, l.metric, "clients", c.div)) > 0 && (len(l.labels) == 0 || slices.Contains(l.labels, label)) {
				lines = append(lines, l)
				break
			}
		}
	}
	if len(lines) == 0 {
		return nil, false, nil
	}
	for i, l := range lines {
		vals := make(plotter.Values, len(labels))
		for j, label := range labels {
			if len(l.labels) > 0 && !slices.Contains(l.labels, label) {
				continue
			}
			var ys []float64
			for _, xy := range points(results, c.scenario, label, l.metric, "clients", c.div) {
				ys = append(ys, xy.Y)
			}
			if len(ys) > 0 {
				vals[j] = median(ys)
			}
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return nil, false, err
		}
		b.Color = plotutil.Color(i)
		b.LineStyle.Color = color.Black
		b.Offset = vg.Length(float64(i)-float64(len(lines)-1)/2) * w
		p.Add(b)
		if l.name != "" {
			p.Legend.Add(l.name, b)
		}
	}
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = 0
	p.Legend.Top, p.Legend.Left = true, false
	p.Add(plotter.NewGrid())
	p.Y.Min = 0
	return p, true, nil
}
