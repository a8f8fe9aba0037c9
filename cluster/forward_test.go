package cluster

import (
	"errors"
	"os"
	"testing"
	"time"
)

// TestForwardToDeadOwnerCut: a session forwarded to an owner that stops
// without its connections closing (a SIGSTOP, a frozen VM, power lost
// behind a switch that keeps nothing) stayed open at the forwarding node
// for as long as TCP did not notice: its client, idling, heard nothing of
// the new mail, and its commands went nowhere, while another node took
// the account over once the owner's lease expired. The forwarding node
// now cuts the sessions it forwards to a node that its renewal finds no
// longer live, so that their clients reconnect and reach the new owner.
func TestForwardToDeadOwnerCut(t *testing.T) {
	url := newDB(t)
	a, b := startNode(t, url, "a", nil), startNode(t, url, "b", nil)
	waitRenewals(t, a, b)
	acct := accountFor("b", "a", "b")
	conn, _, err := login(t, a, acct)
	if err != nil || conn == nil {
		t.Fatalf("login at a of an account b prefers: conn %v, %v", conn, err)
	}
	defer conn.Close()
	b.host.mu.Lock()
	b.host.frozen = true
	b.host.mu.Unlock()
	resume := pauseRenewals(b.Node)
	defer resume()
	waitLeaseExpired(t, url, "b")
	waitRenewals(t, a)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf [64]byte
	n, err := conn.Read(buf[:])
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the session forwarded to b is still open after b's lease expired")
	}
	if err == nil {
		t.Fatalf("read %q from the session forwarded to the dead b", buf[:n])
	}
	if st := a.Stats(); st.ForwardedOut != 0 {
		t.Errorf("a still counts %d forwarded sessions", st.ForwardedOut)
	}
	if _, release, err := login(t, a, acct); err != nil {
		t.Fatalf("login after b's lease expired: %v", err)
	} else if release != nil {
		release()
	}
}
