package link

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fuzzConn is a dialer played from bytes. Unsigned, it sends in as is.
// Signed, it sends a good greeting and, once the listener has sent its
// proof, a handoff line of a good MAC and signed's first line (anything
// may be in it, the MAC covers it), then what follows that line.
type fuzzConn struct {
	in     []byte // to be read
	signed []byte // nil when unsigned
	nonceD []byte
	wrote  []byte
	rest   string // what the MAC covers
	after  []byte // what follows the signed line
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	if c.signed != nil && len(c.in) == 0 && bytes.IndexByte(c.wrote, '\n') >= 0 {
		proof, _, _ := bytes.Cut(c.wrote, []byte("\n"))
		nl, _, _ := bytes.Cut(proof, []byte(" "))
		nonceL, _ := hex.DecodeString(string(nl))
		line, after, found := bytes.Cut(c.signed, []byte("\n"))
		c.rest = strings.TrimSuffix(string(line), "\r")
		if !found {
			line = append(line, "\r\n"...)
		} else {
			line = append(line, '\n')
		}
		c.after = after
		m := hex.EncodeToString(mac(secret, labelDialer, nonceL, c.nonceD, c.rest))
		c.in = append([]byte(m+" "), append(line, after...)...)
		c.signed = nil
	}
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *fuzzConn) Write(p []byte) (int, error) {
	c.wrote = append(c.wrote, p...)
	return len(p), nil
}

func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzAccept plays arbitrary bytes to the listener's side. It must never
// panic, never accept bytes that carry no MAC over its fresh nonce, and,
// when they carry one, accept only a well-formed handoff line, which
// re-encodes to exactly the bytes sent, and keep what follows for the
// stream.
func FuzzAccept(f *testing.F) {
	nonceD := newNonce()
	greeting := Version + " " + hex.EncodeToString(nonceD) + "\r\n"
	rest, err := encodeRest(secret, "node-b", handoff)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(greeting), false)
	f.Add([]byte(greeting+strings.Repeat("0", 64)+" "+rest+"\r\n"), false)
	f.Add([]byte("LPLINK1 \r\n\r\n"), false)
	f.Add([]byte(rest+"\r\n"), true)
	f.Add([]byte(rest+"\r\na2 NOOP\r\n"), true)
	f.Add([]byte(`node-b {"account":"","tag":"","user":"","pass":"","addr":"","tls":false,"via":""}`), true)
	f.Add([]byte(`n {"account":"YQ==","tag":"YQ==","user":"/w==","pass":"AA==","addr":"::1%x","tls":true,"via":""}`+"\r\nx"), true)
	f.Fuzz(func(t *testing.T, in []byte, signed bool) {
		c := &fuzzConn{in: append([]byte(nil), in...), nonceD: nonceD}
		if signed {
			c.in = []byte(greeting)
			c.signed = append([]byte{}, in...)
		}
		req, err := Accept(context.Background(), c, secret)
		if err != nil {
			if req != nil {
				t.Fatal("a Request with an error")
			}
			return
		}
		if !signed {
			t.Fatalf("accepted without a MAC: %q", in)
		}
		if checkName(req.From) != nil {
			t.Fatalf("accepted node name %q", req.From)
		}
		js, err := encodeHandoff(req.Handoff)
		if err != nil || c.rest != req.From+" "+string(js) {
			t.Fatalf("accepted %q as %q %+v (%s, %v)", c.rest, req.From, req.Handoff, js, err)
		}
		raw, err := req.Reply(Reply{Kind: ReplyOK})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(raw); !bytes.Equal(got, c.after) {
			t.Fatalf("stream %q, want %q", got, c.after)
		}
	})
}
