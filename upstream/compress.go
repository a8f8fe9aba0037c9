package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/deflate"
)

// CompressPolicy says when the proxy compresses its connections to the
// upstream with COMPRESS=DEFLATE (RFC 4978), if the upstream offers it.
type CompressPolicy string

const (
	// CompressAuto compresses connections to non-loopback upstreams.
	CompressAuto CompressPolicy = "auto"
	// CompressOn compresses every connection.
	CompressOn CompressPolicy = "on"
	// CompressOff never compresses.
	CompressOff CompressPolicy = "off"
)

// ParseCompressPolicy validates an -upstream-compress value ("" is auto).
func ParseCompressPolicy(s string) (CompressPolicy, error) {
	switch p := CompressPolicy(strings.ToLower(s)); p {
	case "":
		return CompressAuto, nil
	case CompressAuto, CompressOn, CompressOff:
		return p, nil
	}
	return "", fmt.Errorf("upstream compress %q: want auto, on or off", s)
}

// Compressed reports whether the connection runs COMPRESS=DEFLATE.
func (c *Conn) Compressed() bool { return c.compressed }

// wantCompress applies the policy to this connection.
func (c *Conn) wantCompress() bool {
	switch c.cfg.Compress {
	case CompressOn:
		return true
	case CompressOff:
		return false
	}
	ta, ok := c.nc.RemoteAddr().(*net.TCPAddr)
	return !ok || !ta.IP.IsLoopback()
}

// startCompression turns on COMPRESS=DEFLATE after login when the policy
// asks for it and the upstream offers it. A refusal leaves the connection
// uncompressed; only I/O failures are errors.
//
// Both directions use the same codec as the client side (package deflate):
// a connection idle in the pool holds neither a deflater nor an inflater.
// Every write the connection's bufio.Writer makes is compressed and flushed
// at once, so Writer().Flush() still puts every byte on the wire.
func (c *Conn) startCompression(ctx context.Context) error {
	if c.compressed || !c.caps.Has("COMPRESS=DEFLATE") || !c.wantCompress() {
		return nil
	}
	if _, err := c.Exec(ctx, "COMPRESS DEFLATE", nil); err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			return nil
		}
		return err
	}
	// Whatever the server sent after its OK is already compressed.
	pending := c.r.TakeBuffered()
	c.r = imapcodec.NewReader(deflate.NewReader(c.nc, pending), c.cfg.limits())
	c.releaseWriter()
	c.out = nil // the compressed writer is the connection's own: never released
	c.w = bufio.NewWriterSize(flushingWriter{deflate.NewWriter(c.nc, deflate.WriterOptions{})}, 8192)
	c.compressed = true
	return nil
}

// flushingWriter compresses and sends each write as a burst of its own.
type flushingWriter struct{ w *deflate.Writer }

func (f flushingWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.w.Flush()
}
