// Package compress gives clients COMPRESS=DEFLATE (RFC 4978).
//
// Once authenticated, a client may send "COMPRESS DEFLATE"; the tagged OK
// goes out uncompressed and from the byte after its CRLF both directions
// are raw deflate (RFC 1951, no zlib header), inside TLS if the connection
// has it. RFC 4978 makes each direction one deflate stream for the life of
// the connection; the proxy compresses like a stateful deflater while it
// sends and costs almost nothing while the client is idle:
//
//   - While the session sends (a command's responses, however many
//     flushes they take, or a push), it borrows a stateful deflater
//     (klauspost/compress/flate, level 6, about 1 MB) from a pool shared
//     by all sessions, and gives it back when it next reads from its
//     client: every burst ends byte-aligned with a sync marker, so nothing
//     of the deflater is left in the stream. The next burst's deflater is
//     primed with the last 2 KiB of plaintext sent, the only deflate state
//     an idle session keeps. Bursts under 512 bytes that find no deflater
//     held, and bursts when MaxCompressors are all lent out, are compressed
//     statelessly with the same dictionary. Chunks in which the deflater
//     finds nothing to match, such as base64 attachments, leave as
//     Huffman-only blocks (about 3/4 of their size; klauspost's fast levels
//     would store them as is). See package deflate.
//   - The inflater for the client's data is dropped whenever the client has
//     sent a whole deflate block and nothing more, and rebuilt from the
//     plaintext window the client may still refer to when bytes arrive.
//
// Measured (docs/compress.md, docs/benchmarks.md): downloads within 1.03x
// of Dovecot's own COMPRESS in bytes at about a quarter of its CPU per MB,
// and an idle compressed session 2.4 KiB of heap above an uncompressed one.
//
// Protocol decisions (RFC 4978 section 3 lists the results):
//   - COMPRESS before authentication: BAD. The command is defined only in
//     the authenticated and selected states (its ABNF extends command-auth);
//     the core answers every command used in the wrong state with BAD.
//   - An argument other than DEFLATE, or none, or more: BAD ("invalid or
//     unknown argument").
//   - COMPRESS when compression is already on: NO [COMPRESSIONACTIVE], as
//     Dovecot and most servers answer; RFC 4978 allows BAD too.
//   - Compressed data that is not valid raw deflate (or starts with a zlib
//     header) ends the session with "* BYE", compressed.
package compress

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/lemonproxy/lemonproxy/internal/deflate"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Extension implements COMPRESS=DEFLATE. The zero value is ready to use.
type Extension struct {
	// DictSize is how much recently sent plaintext each session keeps as
	// the dictionary of its next response burst: 0 selects 2 KiB, the most
	// used is 8 KiB, a negative size keeps none.
	DictSize int
	// Level is the deflate level of the compressor a busy session borrows
	// (klauspost/compress/flate, 1-9): 0 selects deflate.DefaultLevel.
	Level int
	// MaxCompressors bounds the compressors lent out at once, about 1 MB
	// each: 0 selects DefaultMaxCompressors, a negative value sets no
	// bound. A session that finds none free compresses its burst
	// statelessly (about level 1 with an 8 KiB window).
	MaxCompressors int

	compsOnce sync.Once
	comps     *deflate.Compressors
	compsErr  error

	activations atomic.Int64
	active      atomic.Int64
	corrupt     atomic.Int64
	plainIn     atomic.Int64 // client to proxy, after inflating
	compIn      atomic.Int64
	plainOut    atomic.Int64 // proxy to client, before deflating
	compOut     atomic.Int64
}

// DefaultMaxCompressors is the default bound on compressors lent out at
// once: sessions busy sending responses at the same moment (a client that
// does not read keeps its session busy for up to the write timeout).
const DefaultMaxCompressors = 256

// compressors returns the extension's pool of deflaters, made on first use.
func (e *Extension) compressors() (*deflate.Compressors, error) {
	e.compsOnce.Do(func() {
		max := e.MaxCompressors
		switch {
		case max == 0:
			max = DefaultMaxCompressors
		case max < 0:
			max = 0
		}
		e.comps, e.compsErr = deflate.NewCompressors(e.Level, max)
	})
	return e.comps, e.compsErr
}

func (e *Extension) compressorsInUse() int64 {
	c, err := e.compressors()
	if err != nil {
		return 0
	}
	return int64(c.InUse())
}

// New returns the extension with default settings.
func New() *Extension { return &Extension{} }

// Stats are counters over all sessions of the extension.
type Stats struct {
	Activations int64 // COMPRESS commands that succeeded
	Active      int64 // sessions compressing now
	Corrupt     int64 // sessions ended by invalid compressed input
	// Compressors lent out now: to sessions sending responses, or
	// holding them until they next wait for their client.
	Compressors int64
	// Bytes of sessions that have ended or flushed: plaintext and
	// compressed, in each direction.
	PlainIn, CompressedIn, PlainOut, CompressedOut int64
}

// Stats returns the extension's counters.
func (e *Extension) Stats() Stats {
	return Stats{
		Activations:   e.activations.Load(),
		Active:        e.active.Load(),
		Corrupt:       e.corrupt.Load(),
		Compressors:   e.compressorsInUse(),
		PlainIn:       e.plainIn.Load(),
		CompressedIn:  e.compIn.Load(),
		PlainOut:      e.plainOut.Load(),
		CompressedOut: e.compOut.Load(),
	}
}

func (e *Extension) Name() string { return "compress" }

// Capabilities advertises COMPRESS=DEFLATE once the client is authenticated,
// whatever the upstream offers: the proxy compresses its own connection.
func (e *Extension) Capabilities(st proxy.State, _ upstream.Caps) []string {
	if st == proxy.StateAuthenticated || st == proxy.StateSelected {
		return []string{"COMPRESS=DEFLATE"}
	}
	return nil
}

func (e *Extension) Commands() []string { return []string{"COMPRESS"} }

type sessionKey struct{}

// ServeCommand runs COMPRESS DEFLATE: the tagged OK goes out plain, and
// everything after it, both ways, is compressed.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, _ proxy.Next) error {
	s, cmd := x.Session(), x.Command()
	if s.State() != proxy.StateAuthenticated && s.State() != proxy.StateSelected {
		return x.Reply("BAD", "", "COMPRESS not allowed before authentication; log in first.")
	}
	var mech string
	err := cmd.Args.SP()
	if err == nil {
		mech, err = cmd.Args.Atom()
	}
	if err != nil || !cmd.Args.AtEnd() {
		return x.Reply("BAD", "", "Usage: COMPRESS DEFLATE.")
	}
	if !strings.EqualFold(mech, "DEFLATE") {
		return x.Reply("BAD", "", "Unknown compression mechanism; only DEFLATE is supported.")
	}
	if s.Value(sessionKey{}) != nil {
		return x.Reply("NO", "COMPRESSIONACTIVE", "DEFLATE compression is already active.")
	}
	comps, err := e.compressors()
	if err != nil {
		s.Logger().Error("COMPRESS unavailable", "err", err)
		return x.Reply("NO", "", "Compression is not available.")
	}
	if err := x.Reply("OK", "", "DEFLATE active."); err != nil {
		return err
	}
	var t *transport
	err = s.WrapTransport(func(base proxy.Transport, pending []byte) (proxy.Transport, error) {
		t = &transport{
			ext:  e,
			base: base,
			w: deflate.NewWriter(base, deflate.WriterOptions{
				DictSize:    e.DictSize,
				Compressors: comps,
				Hold:        true,
			}),
		}
		t.r = deflate.NewReader(idleReader{t}, pending)
		return t, nil
	})
	if err != nil {
		return err
	}
	s.SetValue(sessionKey{}, t)
	e.activations.Add(1)
	e.active.Add(1)
	s.Logger().Debug("COMPRESS=DEFLATE active")
	return nil
}

// StateChanged is part of proxy.SessionHook.
func (e *Extension) StateChanged(*proxy.Session, proxy.State) {}

// Push is part of proxy.SessionHook: COMPRESS queues nothing.
func (e *Extension) Push(*proxy.Session) error { return nil }

// SessionClosed releases the session's compression state.
func (e *Extension) SessionClosed(s *proxy.Session) {
	t, _ := s.Value(sessionKey{}).(*transport)
	if t == nil {
		return
	}
	t.close()
	e.active.Add(-1)
}

// transport is the deflate layer between the session and its connection.
// The session reads from one goroutine and writes under its own lock, so
// the two halves need no locking of their own.
type transport struct {
	ext  *Extension
	base proxy.Transport
	r    *deflate.Reader
	w    *deflate.Writer

	lastIn, lastPlainIn   int64 // reader counters already added to ext
	lastOut, lastPlainOut int64
	closed                atomic.Bool
	corruptOnce           atomic.Bool
}

func (t *transport) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil {
		t.countIn()
		var ce *deflate.CorruptError
		switch {
		case errors.Is(err, deflate.ErrZlibHeader):
			err = t.corruptError(err, "Compressed data starts with a zlib header; COMPRESS=DEFLATE is raw deflate (RFC 1951).")
		case errors.As(err, &ce):
			err = t.corruptError(err, "Corrupt compressed data.")
		case errors.Is(err, deflate.ErrStreamLost):
			err = t.corruptError(err, "Compression state lost.")
		}
	}
	return n, err
}

func (t *transport) corruptError(err error, text string) error {
	if t.corruptOnce.CompareAndSwap(false, true) {
		t.ext.corrupt.Add(1)
	}
	return &byeError{err: err, text: text}
}

func (t *transport) Write(p []byte) (int, error) { return t.w.Write(p) }

// Flush compresses the burst and sends it.
func (t *transport) Flush() error {
	err := t.w.Flush()
	plain, comp := t.w.Stats()
	t.ext.plainOut.Add(plain - t.lastPlainOut)
	t.ext.compOut.Add(comp - t.lastOut)
	t.lastPlainOut, t.lastOut = plain, comp
	if err != nil {
		return err
	}
	return t.base.Flush()
}

// idleReader is the inflater's source. The session reads from the client
// only when it has nothing more to do until the client speaks (between
// commands, during IDLE, while a client sends a literal), so a read is
// when the deflater goes back to the pool: a burst of responses, however
// many flushes it took, keeps its 32 KiB window, and an idle session holds
// none.
type idleReader struct{ t *transport }

func (r idleReader) Read(p []byte) (int, error) {
	r.t.w.Release()
	return r.t.base.Read(p)
}

func (t *transport) countIn() {
	comp, plain, _ := t.r.Stats()
	t.ext.compIn.Add(comp - t.lastIn)
	t.ext.plainIn.Add(plain - t.lastPlainIn)
	t.lastIn, t.lastPlainIn = comp, plain
}

// close runs when the session has ended: no more reads.
func (t *transport) close() {
	if t.closed.CompareAndSwap(false, true) {
		t.countIn()
		t.r.Close()
		t.w.Close()
	}
}

// byeError ends the session with a BYE of its own text (the session core
// looks for a ByeText method).
type byeError struct {
	err  error
	text string
}

func (e *byeError) Error() string   { return "COMPRESS: " + e.err.Error() }
func (e *byeError) Unwrap() error   { return e.err }
func (e *byeError) ByeText() string { return e.text }
