package load

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Result is what one run measured.
type Result struct {
	Scenario string    `json:"scenario"`
	Label    string    `json:"label,omitempty"`
	Target   string    `json:"target"`
	Outside  string    `json:"outside,omitempty"`
	Start    time.Time `json:"start"`
	Seconds  float64   `json:"seconds"`
	Params   Params    `json:"params"`
	Machine  Machine   `json:"machine"`
	Metrics  []Metric  `json:"metrics"`
	// Errors counts everything that went wrong: failed sessions, lost
	// connections, missing pushes, and for mixed every client view that
	// disagreed with the model. A run passes only with none.
	Errors       int64            `json:"errors"`
	ErrorKinds   map[string]int64 `json:"error_kinds,omitempty"`
	ErrorSamples []string         `json:"error_samples,omitempty"`
	Notes        []string         `json:"notes,omitempty"`
}

// Params are the run's settings that shape its figures.
type Params struct {
	Clients     int     `json:"clients"`
	Accounts    int     `json:"accounts"`
	Compress    bool    `json:"compress"`
	Duration    float64 `json:"duration_s,omitempty"`
	Rate        float64 `json:"rate,omitempty"`
	Sources     int     `json:"sources,omitempty"`
	Concurrency int     `json:"concurrency"`
	Mailbox     string  `json:"mailbox,omitempty"`
	Messages    int     `json:"messages,omitempty"`
	Changes     int     `json:"changes,omitempty"`
	Rounds      int     `json:"rounds,omitempty"`
	Size        int     `json:"size,omitempty"`
	QResync     bool    `json:"qresync,omitempty"`
	MaxLag      float64 `json:"max_lag_s,omitempty"`
	Seed        int64   `json:"seed,omitempty"`
}

// Metric is one figure.
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Metric returns the value of the named metric.
func (r *Result) Metric(name string) (float64, bool) {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m.Value, true
		}
	}
	return 0, false
}

func (r *Result) add(name string, v float64, unit string) {
	r.Metrics = append(r.Metrics, Metric{name, v, unit})
}

// WriteJSON writes the result as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadResult reads a result written by WriteJSON.
func ReadResult(rd io.Reader) (*Result, error) {
	var r Result
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, err
	}
	return &r, nil
}

// WriteTable writes the result as a text table.
func (r *Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	label := ""
	if r.Label != "" {
		label = " (" + r.Label + ")"
	}
	fmt.Fprintf(&b, "lemonproxy load %s%s against %s", r.Scenario, label, r.Target)
	if r.Outside != "" && r.Outside != r.Target {
		fmt.Fprintf(&b, ", outside changes on %s", r.Outside)
	}
	fmt.Fprintf(&b, "\n%s, %.1f s; %d clients on %d accounts", r.Start.Format(time.RFC3339), r.Seconds, r.Params.Clients, r.Params.Accounts)
	if r.Params.Compress {
		b.WriteString(", COMPRESS")
	}
	if r.Params.Messages > 0 {
		fmt.Fprintf(&b, "; mailbox of %d messages", r.Params.Messages)
	}
	fmt.Fprintf(&b, "\nmachine: %d CPUs, load average %.2f %.2f %.2f before, %.2f %.2f %.2f after, %.0f%% busy during the run\n\n",
		r.Machine.CPUs, r.Machine.LoadBefore[0], r.Machine.LoadBefore[1], r.Machine.LoadBefore[2],
		r.Machine.LoadAfter[0], r.Machine.LoadAfter[1], r.Machine.LoadAfter[2], r.Machine.BusyPercent)
	width := len("errors")
	for _, m := range r.Metrics {
		width = max(width, len(m.Name))
	}
	for _, m := range r.Metrics {
		fmt.Fprintf(&b, "%-*s  %14s  %s\n", width, m.Name, formatValue(m.Value), m.Unit)
	}
	fmt.Fprintf(&b, "%-*s  %14d\n", width, "errors", r.Errors)
	for _, k := range slices.Sorted(maps.Keys(r.ErrorKinds)) {
		fmt.Fprintf(&b, "  %-*s  %12d\n", width-2, k, r.ErrorKinds[k])
	}
	for _, s := range r.ErrorSamples {
		fmt.Fprintf(&b, "  ! %s\n", s)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// formatValue prints integers with thousands separators and fractions
// with three significant decimals.
func formatValue(v float64) string {
	if v == float64(int64(v)) && v < 1e15 && v > -1e15 {
		return groupDigits(strconv.FormatInt(int64(v), 10))
	}
	switch a := abs(v); {
	case a >= 1000:
		return groupDigits(strconv.FormatFloat(v, 'f', 0, 64))
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

func groupDigits(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// percentiles of samples (nearest rank).
type summary struct {
	n                  int
	p50, p90, p99, max float64
	mean               float64
}

func summarize(samples []float64) summary {
	if len(samples) == 0 {
		return summary{}
	}
	s := slices.Clone(samples)
	sort.Float64s(s)
	at := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	sum := 0.0
	for _, v := range s {
		sum += v
	}
	return summary{len(s), at(0.50), at(0.90), at(0.99), s[len(s)-1], sum / float64(len(s))}
}

// addSummary adds name-p50, -p90, -p99 and -max metrics.
func (r *Result) addSummary(name string, s summary, unit string) {
	r.add(name+"-p50", s.p50, unit)
	r.add(name+"-p90", s.p90, unit)
	r.add(name+"-p99", s.p99, unit)
	r.add(name+"-max", s.max, unit)
}

// errorLog collects errors by kind, with the first few as samples.
type errorLog struct {
	mu      sync.Mutex
	total   int64
	kinds   map[string]int64
	samples []string
}

const maxSamples = 20

func (e *errorLog) add(kind, format string, a ...any) { e.addN(kind, 1, format, a...) }

// addN counts n errors of a kind under one sample.
func (e *errorLog) addN(kind string, n int64, format string, a ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.total += n
	if e.kinds == nil {
		e.kinds = map[string]int64{}
	}
	e.kinds[kind] += n
	if len(e.samples) < maxSamples {
		e.samples = append(e.samples, kind+": "+truncate(fmt.Sprintf(format, a...), 3000))
	}
}

func (e *errorLog) count() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total
}

func (e *errorLog) fill(r *Result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r.Errors = e.total
	if len(e.kinds) > 0 {
		r.ErrorKinds = map[string]int64{}
		for k, v := range e.kinds {
			r.ErrorKinds[k] = v
		}
	}
	r.ErrorSamples = slices.Clone(e.samples)
}
