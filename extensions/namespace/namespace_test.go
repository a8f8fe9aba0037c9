package namespace_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/namespace"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestMain fails the package if a test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startProxy starts a proxy with the NAMESPACE and IDLE extensions in
// front of upAddr.
func startProxy(t *testing.T, upAddr string) *imaptest.Proxy {
	t.Helper()
	return imaptest.StartProxy(t, upAddr, proxy.Config{
		Upstream:   imaptest.DefaultUpstream(),
		Extensions: []proxy.Extension{namespace.New(), idle.New()},
		Logger:     imaptest.Logger(),
	})
}

// startMem starts go-imap's in-memory server advertising caps (beyond
// IMAP4rev1, and what go-imap always adds) with user alice.
func startMem(t *testing.T, caps []imap.Cap) *memupstream.Server {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{Caps: caps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	return up
}

// TestSynthesized: in front of an upstream without NAMESPACE the proxy
// advertises it after login and answers it from LIST "" "" in both states
// that allow it (RFC 2342 §5); go-imap's server separates with "/".
func TestSynthesized(t *testing.T) {
	up := startMem(t, []imap.Cap{imap.CapUIDPlus})
	p := startProxy(t, up.Addr)
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("a", "CAPABILITY", "* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE AUTH=PLAIN", "a OK Capability completed.")
	c.ExpectDo("b", "NAMESPACE", "b BAD NAMESPACE not allowed before authentication; log in first.")
	c.ExpectDo("l", "LOGIN alice secret", "l OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT UIDPLUS NAMESPACE IDLE] *")
	c.ExpectDo("n", "NAMESPACE", `* NAMESPACE (("" "/")) NIL NIL`, "n OK NAMESPACE completed.")
	c.ExpectDo("x", "NAMESPACE extra", "x BAD NAMESPACE takes no arguments.")
	c.ExpectDo("s", "SELECT INBOX", "* 0 EXISTS", "*", "*", "*", "*", "*", "s OK [READ-WRITE] *")
	c.ExpectDo("m", "NAMESPACE", `* NAMESPACE (("" "/")) NIL NIL`, "m OK NAMESPACE completed.")
}

// TestRelayed: where the upstream has NAMESPACE the extension stands
// aside: the capability is the upstream's (once), and so are the answers,
// refusals included.
func TestRelayed(t *testing.T) {
	up := startMem(t, nil) // memupstream.DefaultCaps: NAMESPACE among them
	p := startProxy(t, up.Addr)
	c := imaptest.Dial(t, p.Addr)
	c.ExpectDo("l", "LOGIN alice secret", "l OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT NAMESPACE UIDPLUS MOVE IDLE] *")
	c.ExpectDo("n", "NAMESPACE", `* NAMESPACE (("" "/")) NIL NIL`, "n OK NAMESPACE completed")
	c.ExpectDo("x", "NAMESPACE extra", "x BAD *")
	if got := c.Do("y", "NAMESPACE extra"); strings.Contains(got[0], "takes no arguments.") {
		t.Errorf("the proxy answered a NAMESPACE it should have relayed: %q", got)
	}
}

// TestCourierStyle: an upstream that reports the root "INBOX." with a "."
// separator gets RFC 2342's Courier-style personal namespace. The
// hierarchy is asked once per account, whatever the number of sessions
// and NAMESPACE commands.
func TestCourierStyle(t *testing.T) {
	f := startFake(t, `* LIST (\Noselect) "." "INBOX."`)
	p := startProxy(t, f.addr())
	for i := range 2 {
		c := imaptest.Dial(t, p.Addr)
		c.LoginTagged("alice", "secret")
		for j := range 2 {
			tag := fmt.Sprintf("n%d%d", i, j)
			c.ExpectDo(tag, "NAMESPACE", `* NAMESPACE (("INBOX." ".")) NIL NIL`, tag+" OK NAMESPACE completed.")
		}
	}
	if n := f.lists.Load(); n != 1 {
		t.Errorf(`the upstream was asked LIST "" "" %d times, want 1`, n)
	}
}

// TestFlat: a NIL delimiter is a flat namespace, not a delimiter "NIL".
func TestFlat(t *testing.T) {
	f := startFake(t, `* LIST (\Noselect) NIL ""`)
	p := startProxy(t, f.addr())
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.ExpectDo("n", "NAMESPACE", `* NAMESPACE (("" NIL)) NIL NIL`, "n OK NAMESPACE completed.")
}

// TestListFails: when the upstream will not say, NAMESPACE fails with NO
// and the next one asks again (nothing wrong was remembered).
func TestListFails(t *testing.T) {
	f := startFake(t, "NO")
	p := startProxy(t, f.addr())
	c := imaptest.Dial(t, p.Addr)
	c.LoginTagged("alice", "secret")
	c.ExpectDo("n", "NAMESPACE", "n NO [UNAVAILABLE] Cannot ask the upstream server for its hierarchy now; try again later.")
	f.setList(`* LIST (\Noselect) "/" ""`)
	c.ExpectDo("m", "NAMESPACE", `* NAMESPACE (("" "/")) NIL NIL`, "m OK NAMESPACE completed.")
}

// TestDovecotRelayByteFaithful: Dovecot (legacy profile) has NAMESPACE:
// through the proxy its answer arrives exactly as Dovecot sends it.
func TestDovecotRelayByteFaithful(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	p := startProxy(t, dc.Addr)
	direct := imaptest.Login(t, dc.Addr, "alice", "alicepass").Do("n", "NAMESPACE")
	proxied := imaptest.Login(t, p.Addr, "alice", "alicepass").Do("n", "NAMESPACE")
	if len(direct) != 2 || !strings.HasPrefix(direct[0], "* NAMESPACE ((") || !strings.HasPrefix(direct[1], "n OK ") {
		t.Fatalf("Dovecot's NAMESPACE: %q", direct)
	}
	// The tagged text carries Dovecot's timings, "(0.001 + 0.000 secs)".
	want := []string{direct[0], "n OK Namespace completed (*"}
	imaptest.AssertLines(t, "NAMESPACE through the proxy", proxied, want)
}

// fake is a scripted upstream without NAMESPACE: it logs in anyone and
// answers LIST "" "" with list (a LIST response line, or "NO" to refuse).
type fake struct {
	ln    net.Listener
	mu    sync.Mutex
	list  string
	conns map[net.Conn]bool
	lists atomic.Int32
	wg    sync.WaitGroup
}

func startFake(t *testing.T, list string) *fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{ln: ln, list: list, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fake) addr() string { return f.ln.Addr().String() }

func (f *fake) setList(l string) {
	f.mu.Lock()
	f.list = l
	f.mu.Unlock()
}

func (f *fake) serve() {
	defer f.wg.Done()
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns[nc] = true
		f.mu.Unlock()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer nc.Close()
			f.session(nc)
		}()
	}
}

func (f *fake) session(nc net.Conn) {
	const caps = "IMAP4rev1 AUTH=PLAIN SASL-IR"
	r, w := bufio.NewReader(nc), bufio.NewWriter(nc)
	fmt.Fprintf(w, "* OK [CAPABILITY %s] fake ready\r\n", caps)
	for w.Flush() == nil {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		name, args, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(name) {
		case "CAPABILITY":
			fmt.Fprintf(w, "* CAPABILITY %s\r\n%s OK done\r\n", caps, tag)
		case "AUTHENTICATE", "LOGIN", "NOOP":
			fmt.Fprintf(w, "%s OK done\r\n", tag)
		case "LIST":
			if args != `"" ""` {
				fmt.Fprintf(w, "%s OK done\r\n", tag)
				break
			}
			f.lists.Add(1)
			f.mu.Lock()
			list := f.list
			f.mu.Unlock()
			if list == "NO" {
				fmt.Fprintf(w, "%s NO not now\r\n", tag)
				break
			}
			fmt.Fprintf(w, "%s\r\n%s OK done\r\n", list, tag)
		case "LOGOUT":
			fmt.Fprintf(w, "* BYE bye\r\n%s OK done\r\n", tag)
			w.Flush()
			return
		default:
			fmt.Fprintf(w, "%s BAD unknown\r\n", tag)
		}
	}
}
