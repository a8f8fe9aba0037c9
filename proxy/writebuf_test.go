package proxy

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// failWriter fails every write after the first n bytes.
type failWriter struct {
	buf bytes.Buffer
	n   int
}

var errWrite = errors.New("write failed")

func (f *failWriter) Write(p []byte) (int, error) {
	if f.buf.Len()+len(p) > f.n {
		return 0, errWrite
	}
	return f.buf.Write(p)
}

func TestBurstWriter(t *testing.T) {
	var out bytes.Buffer
	w := &burstWriter{dst: &out}
	if w.bw != nil || w.Flush() != nil {
		t.Fatal("a new writer holds a buffer, or its Flush fails")
	}
	w.Write([]byte("* 1 EXISTS\r\n"))
	w.WriteString("a1 OK done\r\n")
	if w.bw == nil || w.Buffered() != 24 || out.Len() != 0 {
		t.Fatalf("during a burst: buffer %v, %d buffered, %d written", w.bw != nil, w.Buffered(), out.Len())
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if w.bw != nil || w.Buffered() != 0 {
		t.Fatal("Flush kept the buffer")
	}
	if out.String() != "* 1 EXISTS\r\na1 OK done\r\n" {
		t.Fatalf("written %q", out.String())
	}

	// A burst larger than the buffer goes out in order, as with bufio.
	out.Reset()
	var want strings.Builder
	for i := range 1000 {
		line := strings.Repeat("x", i%97) + "\r\n"
		want.WriteString(line)
		if i%3 == 0 {
			w.Write([]byte(line))
		} else {
			w.WriteString(line)
		}
	}
	big := strings.Repeat("L", 3*writeBufSize)
	want.WriteString(big)
	w.WriteString(big)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != want.String() {
		t.Fatalf("a large burst came out wrong (%d bytes, want %d)", out.Len(), want.Len())
	}
}

func TestBurstWriterError(t *testing.T) {
	for _, at := range []string{"write", "flush"} {
		t.Run(at, func(t *testing.T) {
			f := &failWriter{n: 10}
			w := &burstWriter{dst: f}
			var err error
			if at == "write" {
				_, err = w.Write(bytes.Repeat([]byte("x"), 2*writeBufSize))
			} else {
				w.WriteString("0123456789abcdef\r\n")
				err = w.Flush()
			}
			if !errors.Is(err, errWrite) {
				t.Fatalf("err = %v, want the write error", err)
			}
			if w.bw != nil {
				t.Fatal("a failed writer kept its buffer")
			}
			// Every later call fails the same way, as with bufio.Writer.
			if _, err := w.WriteString("more\r\n"); !errors.Is(err, errWrite) {
				t.Fatalf("WriteString after the error: %v", err)
			}
			if _, err := w.Write([]byte("more\r\n")); !errors.Is(err, errWrite) {
				t.Fatalf("Write after the error: %v", err)
			}
			if err := w.Flush(); !errors.Is(err, errWrite) {
				t.Fatalf("Flush after the error: %v", err)
			}
			if w.bw != nil {
				t.Fatal("a failed writer took a buffer")
			}
		})
	}
}

func TestBurstWriterAllocs(t *testing.T) {
	w := &burstWriter{dst: &bytes.Buffer{}}
	line := []byte("* 3 EXISTS\r\n")
	allocs := testing.AllocsPerRun(1000, func() {
		w.dst.(*bytes.Buffer).Reset()
		w.Write(line)
		w.Flush()
	})
	// The buffer comes from the pool: nothing is allocated per burst (the
	// pool may lose its buffers to a GC now and then, and under the race
	// detector drops some on purpose).
	if allocs >= 1 {
		t.Errorf("%v allocations per burst", allocs)
	}
}
