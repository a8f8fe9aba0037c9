package proxy

import (
	"bufio"
	"io"
	"sync"
)

// writeBufSize is the size of a session's write buffer during a burst.
const writeBufSize = 4096

// writeBufs holds the write buffers of sessions that are not writing.
var writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}

// burstWriter is a session's output buffer. It takes a buffer from a pool
// shared by all sessions when a burst of responses begins and gives it back
// at Flush, which the session calls before it waits for its client: an idle
// session holds none. It behaves as a bufio.Writer of writeBufSize bytes,
// errors included (the first write error is returned by every later call).
//
// Like the rest of the session's output, it is used under the session's
// write lock.
type burstWriter struct {
	dst io.Writer
	bw  *bufio.Writer // nil between bursts
	err error
}

func (w *burstWriter) buf() *bufio.Writer {
	if w.bw == nil {
		w.bw = writeBufs.Get().(*bufio.Writer)
		w.bw.Reset(w.dst)
	}
	return w.bw
}

// put gives the buffer back; whatever it still holds is dropped.
func (w *burstWriter) put() {
	if w.bw != nil {
		w.bw.Reset(nil)
		writeBufs.Put(w.bw)
		w.bw = nil
	}
}

func (w *burstWriter) fail(err error) error {
	w.err = err
	w.put()
	return err
}

func (w *burstWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.buf().Write(p)
	if err != nil {
		return n, w.fail(err)
	}
	return n, nil
}

func (w *burstWriter) WriteString(s string) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.buf().WriteString(s)
	if err != nil {
		return n, w.fail(err)
	}
	return n, nil
}

// Flush writes what is buffered to dst and gives the buffer back.
func (w *burstWriter) Flush() error {
	if w.err != nil {
		return w.err
	}
	if w.bw == nil {
		return nil
	}
	if err := w.bw.Flush(); err != nil {
		return w.fail(err)
	}
	w.put()
	return nil
}

// Buffered returns the number of bytes written but not flushed.
func (w *burstWriter) Buffered() int {
	if w.bw == nil {
		return 0
	}
	return w.bw.Buffered()
}
