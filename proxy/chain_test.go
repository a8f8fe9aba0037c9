package proxy_test

import (
	"context"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// chainExt is an extension that leaves a mark at every seam of the core,
// so a test can see in which order the core calls several of them.
type chainExt struct {
	name  string
	trace *[]string
	// answers, if set, is a command the extension answers itself.
	answers string
}

func (e *chainExt) Name() string { return e.name }

func (e *chainExt) Commands() []string { return []string{"LIST", "XTEST", "FETCH"} }

func (e *chainExt) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	*e.trace = append(*e.trace, e.name+">"+x.Name)
	if x.Name == e.answers {
		return x.Reply("OK", "", "answered by "+e.name)
	}
	x.Filter(func(r *proxy.Response) *proxy.Response {
		if r.Head.Name == "LIST" {
			r.Segments[0].Text = append(r.Segments[0].Text, e.name...)
		}
		return r
	})
	x.OnTagged(func(h *imapcodec.ResponseHead) { h.Text += " " + e.name })
	err := next(ctx, x)
	*e.trace = append(*e.trace, e.name+"<"+x.Status())
	return err
}

func (e *chainExt) FilterResponse(s *proxy.Session, r *proxy.Response) *proxy.Response {
	if r.Head.Name == "LIST" {
		r.Segments[0].Text = append(r.Segments[0].Text, strings.ToUpper(e.name)...)
	}
	return r
}

func (e *chainExt) FetchItems(s *proxy.Session, uid uint32, unsolicited bool) []byte {
	return []byte("X-" + strings.ToUpper(e.name) + " NIL")
}

func (e *chainExt) ReportExpunged(s *proxy.Session, b []byte, uids, seqs []uint32) ([]byte, bool) {
	return b, false
}

func (e *chainExt) ExpungesHeld(*proxy.Session) []byte { return nil }

func (e *chainExt) BatchDone(_ *proxy.Session, _ *proxy.Exchange, b []byte, _ bool) []byte { return b }

// TestChainOrder: a command passes through the extensions' handlers in the
// order of Config.Extensions, each filter and tagged hook in the same
// order, the first handler that answers ends the chain, and every handler
// before it sees the outcome; ChangeReporters' FETCH items compose in that
// order too.
func TestChainOrder(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("u", "p"); err != nil {
		t.Fatal(err)
	}
	if err := up.Append("u", "INBOX", []imap.Flag{imap.FlagSeen}, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	var trace []string
	a := &chainExt{name: "a", trace: &trace}
	b := &chainExt{name: "b", trace: &trace, answers: "XTEST"}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{a, b}})
	c := imaptest.Login(t, p.Addr, "u", "p")

	got := c.MustOK(`LIST "" INBOX`)
	if want := `* LIST (\HasNoChildren) "/" INBOXabAB`; len(got) != 2 || !strings.HasPrefix(got[0], "* LIST") || !strings.HasSuffix(got[0], "INBOXabAB") {
		t.Errorf("LIST through two extensions: %q, want %q (exchange filters in chain order, then the ResponseFilters)", got, want)
	}
	if tagged := imaptest.Tagged(got); !strings.HasSuffix(tagged, " a b") {
		t.Errorf("tagged answer %q: want the OnTagged hooks of a then b", tagged)
	}
	if want := "a>LIST b>LIST b<OK a<OK"; strings.Join(trace, " ") != want {
		t.Errorf("trace %q, want %q", strings.Join(trace, " "), want)
	}

	trace = nil
	got = c.Cmd("XTEST")
	if tagged := imaptest.Tagged(got); tagged != "OK answered by b a" {
		t.Errorf("XTEST: %q, want b's answer with a's tagged hook", got)
	}
	if want := "a>XTEST b>XTEST a<OK"; strings.Join(trace, " ") != want {
		t.Errorf("trace %q, want %q: b answers and ends the chain, a sees the outcome", strings.Join(trace, " "), want)
	}

	c.MustOK("SELECT INBOX")
	got = c.MustOK("FETCH 1 (FLAGS)")
	if want := `* 1 FETCH (UID 1 X-A NIL X-B NIL FLAGS (`; !strings.HasPrefix(got[0], want) {
		t.Errorf("FETCH: %q, want %q", got[0], want)
	}
}

// TestChainConfigErrors: an extension twice, or two extensions claiming the
// same SELECT parameter, are refused when the server is built.
func TestChainConfigErrors(t *testing.T) {
	var trace []string
	cfg := proxy.Config{
		Upstream:   upstream.Config{Addr: "127.0.0.1:1"},
		Logger:     imaptest.Logger(),
		Extensions: []proxy.Extension{&chainExt{name: "a", trace: &trace}, &chainExt{name: "a", trace: &trace}},
	}
	if srv, err := proxy.NewServer(cfg); err == nil || !strings.Contains(err.Error(), `"a" configured twice`) {
		if srv != nil {
			srv.Shutdown(context.Background())
		}
		t.Errorf("two extensions named a: %v", err)
	}
	cfg.Extensions = []proxy.Extension{selectParamExt{"x"}, selectParamExt{"y"}}
	if srv, err := proxy.NewServer(cfg); err == nil || !strings.Contains(err.Error(), "SELECT parameter P claimed by x and y") {
		if srv != nil {
			srv.Shutdown(context.Background())
		}
		t.Errorf("a SELECT parameter claimed twice: %v", err)
	}
}

type selectParamExt struct{ name string }

func (e selectParamExt) Name() string               { return e.name }
func (selectParamExt) SelectParams() []string       { return []string{"P"} }
func (selectParamExt) SelectClosing(*proxy.Session) {}
func (selectParamExt) SelectOpened(*proxy.Session, map[string]any) error {
	return nil
}
func (selectParamExt) SelectParam(*proxy.Session, string, imapcodec.List) (any, error) {
	return nil, nil
}

// execExt answers XSEARCH with what Session.Exec got from the upstream:
// the UIDs of UID SEARCH ALL, in the selected mailbox.
type execExt struct{}

func (execExt) Name() string       { return "exec" }
func (execExt) Commands() []string { return []string{"XSEARCH"} }
func (execExt) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	var got []string
	_, err := x.Session().Exec(ctx, "UID SEARCH ALL", func(r *upstream.Response) {
		if r.Head.Name == "SEARCH" {
			got = append(got, string(r.Segments[0].Text))
		}
	})
	if err != nil {
		return x.Reply("NO", "", err.Error())
	}
	return x.Reply("OK", "", strings.Join(got, "|"))
}

// TestExec: an extension runs its own command upstream in the session's
// mailbox and sees the answers in upstream terms (UIDs); the client sees
// only the extension's answer, and the connection goes back to the pool.
func TestExec(t *testing.T) {
	up := threeInInbox(t)
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{execExt{}}})
	c := imaptest.Login(t, p.Addr, "u", "p")
	c.MustOK("SELECT INBOX")
	c.MustOK("STORE 2 +FLAGS (\\Deleted)")
	c.MustOK("EXPUNGE")
	c.ExpectDo("x", "XSEARCH", "x OK * SEARCH 1 3")
	if st := p.Srv.Stats(); st.UpstreamLeased != 0 {
		t.Fatalf("%d connections still leased after Exec", st.UpstreamLeased)
	}
	c.MustOK("UNSELECT")
	if got := c.Cmd("XSEARCH"); !strings.Contains(imaptest.Tagged(got), "NO") {
		t.Fatalf("UID SEARCH outside a mailbox: %q", got)
	}
}

// execInThenExec (also in internal/integration) runs, after the tagged answer of every UID SEARCH, the
// command in in the mailbox mailbox (Session.ExecIn) and then own in the
// session's mailbox (Session.Exec), both on the connection the UID SEARCH
// held, and puts what each found (SEARCH answers, or an error) into the
// tagged answer's text.
type execInThenExec struct{ mailbox, in, own string }

func (execInThenExec) Name() string       { return "execin-then-exec" }
func (execInThenExec) Commands() []string { return []string{"UID SEARCH"} }
func (e execInThenExec) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		search := func(run func(func(*upstream.Response)) error) string {
			var got []string
			if err := run(func(r *upstream.Response) {
				if r.Head.Name == "SEARCH" {
					got = append(got, string(r.Segments[0].Text))
				}
			}); err != nil {
				return err.Error()
			}
			return strings.Join(got, "|")
		}
		other := search(func(f func(*upstream.Response)) error {
			_, err := s.ExecIn(ctx, e.mailbox, e.in, f)
			return err
		})
		own := search(func(f func(*upstream.Response)) error {
			_, err := s.Exec(ctx, e.own, f)
			return err
		})
		h.Text = "in: " + other + "; own: " + own
	})
	return next(ctx, x)
}

// TestExecAfterExecIn: a hook's ExecIn switches the held connection to
// another mailbox; an Exec after it, in the same hook, still runs in the
// session's mailbox (the connection selects it again). The same with the
// session's own mailbox EXAMINEd: internal/integration
// TestExecAfterExecInReadOnly (go-imap's server lets a read-only
// connection change flags).
func TestExecAfterExecIn(t *testing.T) {
	up := threeInInbox(t)
	up.Append("u", "Other", nil, []byte("Subject: other\r\n\r\nx\r\n"))

	p := imaptest.StartProxy(t, up.Addr, proxy.Config{Extensions: []proxy.Extension{
		execInThenExec{mailbox: "Other", in: "UID SEARCH ALL", own: "UID SEARCH ALL"},
	}})
	c := imaptest.Login(t, p.Addr, "u", "p")
	c.MustOK("SELECT INBOX")
	c.ExpectDo("a", "UID SEARCH ALL", "* SEARCH 1 2 3", "a OK in: * SEARCH 1; own: * SEARCH 1 2 3")
	c.ExpectDo("b", "UID STORE 3 +FLAGS.SILENT (\\Deleted)", "b OK UID STORE completed")
	c.ExpectDo("c", "EXPUNGE", "* 3 EXPUNGE", "c OK EXPUNGE completed")
	c.ExpectDo("d", "UID SEARCH ALL", "* SEARCH 1 2", "d OK in: * SEARCH 1; own: * SEARCH 1 2")

}

// threeInInbox starts an upstream with the user u (password p) and three
// messages in INBOX (UIDs 1, 2, 3).
func threeInInbox(t *testing.T) *memupstream.Server {
	t.Helper()
	up := startUpstream(t, memupstream.Options{}, "u", "p")
	for i := range 3 {
		if err := up.Append("u", "INBOX", nil, []byte("Subject: "+string(rune('a'+i))+"\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	return up
}

// TestUIDSearchSequenceKey: a sequence set in a UID SEARCH's criteria is
// in the client's numbering (RFC 3501 6.4.4), which the upstream
// connection's may not be: here another session has expunged the first
// message, which this client has not been told yet, so the upstream's
// message 1 is the client's message 2. K-9 Mail's "UID SEARCH n:m NOT
// DELETED" is such a search.
func TestUIDSearchSequenceKey(t *testing.T) {
	up := threeInInbox(t)
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{})
	a := imaptest.Login(t, p.Addr, "u", "p")
	a.MustOK("SELECT INBOX")
	b := imaptest.Login(t, p.Addr, "u", "p")
	b.MustOK("SELECT INBOX")
	b.ExpectDo("b1", `UID STORE 1 +FLAGS.SILENT (\Deleted)`, "b1 OK UID STORE completed")
	b.ExpectDo("b2", "EXPUNGE", "* 1 EXPUNGE", "b2 OK EXPUNGE completed")
	a.ExpectDo("a1", "UID SEARCH 1", "* 1 EXPUNGE", "* SEARCH", "a1 OK UID SEARCH completed")
	a.ExpectDo("a2", "UID SEARCH 1:2 NOT DELETED", "* SEARCH 2 3", "a2 OK UID SEARCH completed")
}
