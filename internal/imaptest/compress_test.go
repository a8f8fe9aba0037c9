package imaptest

import (
	"bufio"
	"fmt"
	"net"
	"testing"

	"github.com/lemonproxy/lemonproxy/internal/deflate"
)

// TestCompressedCommandOneWrite plays a server that, like the proxy after
// a LOGOUT, closes the connection as soon as it has read a whole command
// and reads nothing more. The client's write of that command must not
// fail: by then it must have sent the command's whole deflate flush.
// net.Pipe hands each Write to the peer's reads on its own and a Write
// waits until it has been read, and the peer inflates with package
// deflate, which (like the proxy) returns a stored block's bytes as soon
// as they arrive; so a flush split over several writes fails here every
// time, where over TCP it failed only now and then (TestCompressTLS in
// extensions/compress, with "broken pipe", under load).
func TestCompressedCommandOneWrite(t *testing.T) {
	cli, srv := net.Pipe()
	peer := make(chan error, 1)
	go func() {
		defer srv.Close()
		if _, err := srv.Write([]byte("* OK ready\r\n")); err != nil {
			peer <- err
			return
		}
		line, err := bufio.NewReader(deflate.NewReader(srv, nil)).ReadString('\n')
		if err == nil && line != "c1 LOGOUT\r\n" {
			err = fmt.Errorf("peer read %q", line)
		}
		peer <- err
	}()
	c := NewClient(t, cli)
	c.StartCompression(5)
	if err := c.TryWrite([]byte("c1 LOGOUT\r\n")); err != nil {
		t.Fatalf("client's write of LOGOUT: %v", err)
	}
	if err := <-peer; err != nil {
		t.Fatalf("peer: %v", err)
	}
}
