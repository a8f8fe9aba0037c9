package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

// TestShutdownDuringStreamedFetch: Shutdown while a FETCH body over the
// inline limit is being streamed to a client that does not read. Shutdown
// gives each session's BYE 2 s; the stream cannot finish in that time, and
// the BYE must not land inside the literal, where the client would take it
// for bytes of the message. What the client gets is the response's head
// and a prefix of the real body, then the end of the connection; or, had it
// read the whole body in time, the complete response followed by the BYE.
func TestShutdownDuringStreamedFetch(t *testing.T) {
	e := startFaultEnv(t)
	c := e.login(t)
	e.selectInbox(c, "s")
	c.Send("f FETCH 1 (BODY.PEEK[])")
	// Let the proxy fill the socket buffers and block in the write.
	time.Sleep(300 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- e.p.Srv.Shutdown(context.Background()) }()
	// Only now read, slowly at first: the BYE's 2 s run out before the
	// body is through.
	time.Sleep(2500 * time.Millisecond)
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c.R)
	if err != nil {
		t.Fatalf("reading the FETCH response: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	head := fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n", len(e.big))
	if !bytes.HasPrefix(got, []byte(head)) {
		t.Fatalf("response starts %q, want %q", got[:min(len(got), 60)], head)
	}
	body := got[len(head):]
	if len(body) <= len(e.big) {
		if !bytes.Equal(body, e.big[:len(body)]) {
			i := 0
			for i < len(body) && body[i] == e.big[i] {
				i++
			}
			t.Fatalf("the literal's %d bytes differ from the message at byte %d: %q", len(body), i, body[i:min(len(body), i+60)])
		}
		t.Logf("client got %d of %d body bytes, then the connection ended", len(body), len(e.big))
		return
	}
	rest := string(body[len(e.big):])
	if want := ")\r\nf OK FETCH completed\r\n* BYE Server shutting down\r\n"; rest != want && rest != ")\r\n* BYE Server shutting down\r\n" {
		t.Fatalf("after the whole body: %q, want %q", rest, want)
	}
}
