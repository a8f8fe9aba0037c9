package hub

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/syncstate"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// fakeUpstream is a scripted IMAP server for one watcher: the test decides
// what the watcher's connection reads and when (push, answers to the next
// NOOP), which go-imap's server cannot be made to do, and follows the
// watcher's commands as events ("IDLE" once "+ idling" is sent, "DONE",
// "NOOP" once answered).
type fakeUpstream struct {
	t      testing.TB
	ln     net.Listener
	idle   bool // offer IDLE
	wg     sync.WaitGroup
	closed chan struct{}
	events chan string

	mu    sync.Mutex
	uids  []uint32          // the mailbox, in sequence order
	flags map[uint32]string // flags by UID, as the listing reports them
	noop  []string          // untagged lines for the next NOOP's answer
	hold  chan struct{}     // if set, the next NOOP is answered once it is closed
	noops int               // NOOPs answered
	nth   map[int][]string  // untagged lines for the NOOP of that number (from 1)
	conn  net.Conn
	w     *bufio.Writer // writes to conn, under mu
	down  bool          // refuse connections
}

// startFake starts a server whose mailbox holds uids with no flags.
func startFake(t testing.TB, idle bool, uids ...uint32) *fakeUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &fakeUpstream{t: t, ln: ln, idle: idle, closed: make(chan struct{}), events: make(chan string, 4096),
		uids: uids, flags: map[uint32]string{}}
	u.wg.Add(1)
	go u.accept()
	t.Cleanup(func() {
		close(u.closed)
		ln.Close()
		u.cut()
		u.wg.Wait()
	})
	return u
}

func (u *fakeUpstream) accept() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.mu.Lock()
		if u.down {
			u.mu.Unlock()
			c.Close()
			continue
		}
		u.conn, u.w = c, bufio.NewWriter(c)
		u.mu.Unlock()
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer c.Close()
			u.serve(c)
		}()
	}
}

// cut closes the watcher's connection.
func (u *fakeUpstream) cut() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn != nil {
		u.conn.Close()
	}
}

func (u *fakeUpstream) setDown(down bool) {
	u.mu.Lock()
	u.down = down
	u.mu.Unlock()
}

// push sends untagged lines to the watcher's connection, in one write.
func (u *fakeUpstream) push(lines ...string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, l := range lines {
		u.w.WriteString(l + "\r\n")
	}
	u.w.Flush()
}

// holdNextNoop makes the server hold its answer to the next NOOP (after
// the event "NOOP held") until release is called.
func (u *fakeUpstream) holdNextNoop() (release func()) {
	h := make(chan struct{})
	u.mu.Lock()
	u.hold = h
	u.mu.Unlock()
	return sync.OnceFunc(func() { close(h) })
}

// answerNoop makes the answer of the watcher's n-th NOOP from now carry
// lines (n = 1: the next).
func (u *fakeUpstream) answerNoop(n int, lines ...string) {
	u.mu.Lock()
	if u.nth == nil {
		u.nth = map[int][]string{}
	}
	u.nth[u.noops+n] = append(u.nth[u.noops+n], lines...)
	u.mu.Unlock()
}

// answerNextNoop makes the next NOOP's answer carry lines (as Dovecot
// sends the notifications it delayed when asked).
func (u *fakeUpstream) answerNextNoop(lines ...string) {
	u.mu.Lock()
	u.noop = append(u.noop, lines...)
	u.mu.Unlock()
}

func (u *fakeUpstream) send(format string, args ...any) {
	fmt.Fprintf(u.w, format+"\r\n", args...)
}

func (u *fakeUpstream) event(e string) {
	select {
	case u.events <- e:
	default:
		u.t.Error("too many events")
	}
}

func (u *fakeUpstream) serve(c net.Conn) {
	br := bufio.NewReader(c)
	caps := "IMAP4rev1"
	if u.idle {
		caps += " IDLE"
	}
	u.mu.Lock()
	u.send("* OK [CAPABILITY %s] fake ready", caps)
	u.w.Flush()
	u.mu.Unlock()
	idleTag := ""
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "DONE" {
			u.event("DONE")
			u.mu.Lock()
			u.send("%s OK Idle completed.", idleTag)
			u.w.Flush()
			u.mu.Unlock()
			continue
		}
		tag, cmd, _ := strings.Cut(line, " ")
		verb, args, _ := strings.Cut(cmd, " ")
		u.mu.Lock()
		ev := ""
		switch strings.ToUpper(verb) {
		case "LOGIN":
			u.send("%s OK Logged in.", tag)
		case "CAPABILITY":
			u.send("* CAPABILITY %s", caps)
			u.send("%s OK done", tag)
		case "EXAMINE", "SELECT":
			u.send("* %d EXISTS", len(u.uids))
			u.send("* OK [UIDVALIDITY 7] ok")
			u.send("%s OK [READ-ONLY] done", tag)
		case "UID":
			// UID FETCH n:* (FLAGS)
			from, _, _ := strings.Cut(strings.TrimPrefix(args, "FETCH "), ":")
			n, _ := strconv.Atoi(from)
			for i, uid := range u.uids {
				if uid >= uint32(n) || i == len(u.uids)-1 {
					u.send("* %d FETCH (UID %d FLAGS (%s))", i+1, uid, u.flags[uid])
				}
			}
			u.send("%s OK Fetch completed.", tag)
		case "NOOP":
			if h := u.hold; h != nil {
				u.hold = nil
				u.mu.Unlock()
				u.event("NOOP held")
				select {
				case <-h:
				case <-u.closed:
				}
				u.mu.Lock()
			}
			u.noops++
			for _, l := range append(u.noop, u.nth[u.noops]...) {
				u.send("%s", l)
			}
			u.noop = nil
			u.send("%s OK NOOP completed.", tag)
			ev = "NOOP"
		case "IDLE":
			idleTag = tag
			u.send("+ idling")
			ev = "IDLE"
		case "LOGOUT":
			u.send("* BYE")
			u.send("%s OK bye", tag)
			u.w.Flush()
			u.mu.Unlock()
			return
		default:
			u.send("%s BAD what?", tag)
		}
		u.w.Flush()
		u.mu.Unlock()
		if ev != "" {
			u.event(ev)
		}
	}
}

// expect waits for the watcher's next command, which must be want.
func (u *fakeUpstream) expect(want string) {
	u.t.Helper()
	select {
	case got := <-u.events:
		if got != want {
			u.t.Fatalf("the watcher's next step: %s, want %s", got, want)
		}
	case <-time.After(5 * time.Second):
		u.t.Fatalf("the watcher did not get to %s", want)
	}
}

// quiet checks that the watcher sends nothing for d.
func (u *fakeUpstream) quiet(d time.Duration) {
	u.t.Helper()
	select {
	case got := <-u.events:
		u.t.Fatalf("the watcher sent %s, want nothing", got)
	case <-time.After(d):
	}
}

func (u *fakeUpstream) dial() DialFunc {
	cfg := &upstream.Config{Addr: u.ln.Addr().String(), Timeout: 5 * time.Second}
	return func(ctx context.Context) (*upstream.Conn, error) {
		return upstream.DialLogin(ctx, cfg, "alice", "alicepass")
	}
}

// flagLog records, for every notification a subscriber gets, the flags of
// one message at that moment (notify runs on the watcher's goroutine right
// after the change, so no intermediate state escapes it).
type flagLog struct {
	uid   uint32
	state atomic.Pointer[syncstate.Mailbox]
	mu    sync.Mutex
	seen  []string
}

func (l *flagLog) notify() {
	st := l.state.Load()
	if st == nil {
		return // the first full sync, before Watch returned
	}
	f, _, _ := st.Flags(l.uid)
	l.mu.Lock()
	l.seen = append(l.seen, strings.Join(f, " "))
	l.mu.Unlock()
}

func (l *flagLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

// watchLogged subscribes with a flagLog of uid.
func watchLogged(t *testing.T, h *Hub, dial DialFunc, uid uint32) (*Subscription, *flagLog) {
	t.Helper()
	l := &flagLog{uid: uid}
	sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, dial, l.notify)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	l.state.Store(sub.State())
	return sub, l
}

func own(t *testing.T, sub *Subscription, uid uint32, flags string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	modseq, ok, err := sub.Own(ctx, uid, strings.Fields(flags))
	if err != nil || !ok {
		t.Fatalf("Own(%d, %q) = %d, %v, %v", uid, flags, modseq, ok, err)
	}
	return modseq
}

// changeOf returns the one change ChangesSince(modseq) reports, failing
// if there is not exactly one.
func changeOf(t *testing.T, st *syncstate.Mailbox, modseq uint64) syncstate.Change {
	t.Helper()
	var all []syncstate.Change
	st.ChangesSince(modseq, func(c syncstate.Change) { all = append(all, c) })
	if len(all) != 1 {
		t.Fatalf("changes since %d: %+v, want exactly one", modseq, all)
	}
	return all[0]
}

// TestClaimOrdersStaleReports forces the interleaving behind the flaky
// TestCondstoreDovecot/Legacy/Changes: the session claims the flags its
// STORE left (Own), then the watcher's connection reports the message's
// older flags (Dovecot's IDLE notifications lag), then the flags of the
// STORE. The stale report must change nothing: HIGHESTMODSEQ advances once
// per claim, ChangesSince shows one change of the message with the last
// claim's flags and mod-sequence, and the subscribers are told of the
// claims and nothing else.
func TestClaimOrdersStaleReports(t *testing.T) {
	for _, tc := range []struct {
		name   string
		claims []string // the session's STORE answers, in order
		pushed []string // then what the watcher's IDLE reads (one write)
		noop   []string // and what the NOOP the watcher sends then reads
	}{{
		name:   "store answer, stale report, report of the store in the NOOP's answer",
		claims: []string{`\Flagged`},
		pushed: []string{`* 2 FETCH (UID 10 FLAGS ())`},
		noop:   []string{`* 2 FETCH (UID 10 FLAGS (\Flagged))`},
	}, {
		name:   "stale report and report of the store read together",
		claims: []string{`\Flagged`},
		pushed: []string{`* 2 FETCH (UID 10 FLAGS ())`, `* 2 FETCH (UID 10 FLAGS (\Flagged))`},
	}, {
		// The integration test's case: the report of the session's
		// previous STORE comes after its latest STORE's answer.
		name:   "report of the previous store after the latest",
		claims: []string{`\Seen`, `\Flagged \Seen`},
		pushed: []string{`* 2 FETCH (FLAGS (\Seen))`},
		noop:   []string{`* 2 FETCH (FLAGS (\Seen \Flagged))`},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			u := startFake(t, true, 9, 10, 11)
			h := testHub(t, Config{ModSeqBase: func() uint64 { return 1 }})
			sub, log := watchLogged(t, h, u.dial(), 10)
			_, other := watchLogged(t, h, u.dial(), 10)
			st := sub.State()
			u.expect("IDLE")
			h0 := st.HighestModSeq()

			var modseq uint64
			for i, f := range tc.claims {
				modseq = own(t, sub, 10, f)
				if want := h0 + uint64(i) + 1; modseq != want {
					t.Fatalf("claim %d got mod-sequence %d, want %d", i+1, modseq, want)
				}
			}
			u.answerNextNoop(tc.noop...)
			u.push(tc.pushed...)
			// The stale report makes the watcher ask: DONE and NOOP,
			// then IDLE again once everything is settled.
			u.expect("DONE")
			u.expect("NOOP")
			u.expect("IDLE")

			if got, want := st.HighestModSeq(), h0+uint64(len(tc.claims)); got != want {
				t.Errorf("HIGHESTMODSEQ %d -> %d, want %d (one change per claim)", h0, got, want)
			}
			last := strings.Join(syncstate.NormalizeFlags(strings.Fields(tc.claims[len(tc.claims)-1])), " ")
			c := changeOf(t, st, h0)
			if c.UID != 10 || c.Expunged || strings.Join(c.Flags, " ") != last || c.ModSeq != modseq {
				t.Errorf("change since %d: %+v, want UID 10 with %q at %d", h0, c, last, modseq)
			}
			want := make([]string, len(tc.claims))
			for i, f := range tc.claims {
				want[i] = strings.Join(syncstate.NormalizeFlags(strings.Fields(f)), " ")
			}
			for _, l := range []*flagLog{log, other} {
				if got := l.get(); !slices.Equal(got, want) {
					t.Errorf("a subscriber was told of flags %q, want %q (the claims only)", got, want)
				}
			}
		})
	}
}

// A report that contradicts a claim may be a later change by someone
// else, not a stale one: after the round trip it is applied, not lost.
func TestClaimLaterChangeApplied(t *testing.T) {
	t.Run("before the store's report", func(t *testing.T) {
		u := startFake(t, true, 10)
		h := testHub(t, Config{ModSeqBase: func() uint64 { return 1 }})
		sub, log := watchLogged(t, h, u.dial(), 10)
		st := sub.State()
		u.expect("IDLE")
		h0 := st.HighestModSeq()
		m1 := own(t, sub, 10, `\Flagged`)
		// Someone else answered the message right after the STORE;
		// the upstream reports only the result.
		u.push(`* 1 FETCH (UID 10 FLAGS (\Flagged \Answered))`)
		u.expect("DONE")
		u.expect("NOOP")
		u.expect("IDLE")
		if got := st.HighestModSeq(); got != m1+1 || m1 != h0+1 {
			t.Errorf("HIGHESTMODSEQ %d, claim at %d: want the claim at %d and one more change", got, m1, h0+1)
		}
		c := changeOf(t, st, m1)
		if c.UID != 10 || strings.Join(c.Flags, " ") != `\Answered \Flagged` {
			t.Errorf("change after the claim: %+v, want UID 10 with \\Answered \\Flagged", c)
		}
		if got, want := log.get(), []string{`\Flagged`, `\Answered \Flagged`}; !slices.Equal(got, want) {
			t.Errorf("the subscriber was told of %q, want %q", got, want)
		}
	})
	t.Run("after the store's report", func(t *testing.T) {
		u := startFake(t, true, 10)
		h := testHub(t, Config{ModSeqBase: func() uint64 { return 1 }})
		sub, log := watchLogged(t, h, u.dial(), 10)
		st := sub.State()
		u.expect("IDLE")
		m1 := own(t, sub, 10, `\Flagged`)
		// The report of the STORE confirms the claim: no round trip.
		u.push(`* 1 FETCH (UID 10 FLAGS (\Flagged))`)
		u.quiet(100 * time.Millisecond)
		if got := st.HighestModSeq(); got != m1 {
			t.Fatalf("HIGHESTMODSEQ %d after the confirming report, want %d", got, m1)
		}
		// Someone else's change, now: applied at once.
		u.push(`* 1 FETCH (UID 10 FLAGS (\Answered))`)
		deadline := time.Now().Add(5 * time.Second)
		for st.HighestModSeq() == m1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		u.quiet(50 * time.Millisecond)
		if c := changeOf(t, st, m1); c.UID != 10 || strings.Join(c.Flags, " ") != `\Answered` || c.ModSeq != m1+1 {
			t.Errorf("change after the claim: %+v, want UID 10 with \\Answered at %d", c, m1+1)
		}
		if got, want := log.get(), []string{`\Flagged`, `\Answered`}; !slices.Equal(got, want) {
			t.Errorf("the subscriber was told of %q, want %q", got, want)
		}
	})
}

// An expunge is applied at once, claim or no claim, and the expunged
// message cannot be claimed back.
func TestClaimExpungeApplied(t *testing.T) {
	u := startFake(t, true, 10, 11)
	h := testHub(t, Config{ModSeqBase: func() uint64 { return 1 }})
	sub, _ := watchLogged(t, h, u.dial(), 10)
	st := sub.State()
	u.expect("IDLE")
	m1 := own(t, sub, 10, `\Deleted`)
	u.push(`* 1 EXPUNGE`)
	deadline := time.Now().Add(5 * time.Second)
	for st.HighestModSeq() == m1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := since(st, m1); !slices.Equal(got, []string{"10:expunged"}) {
		t.Fatalf("changes after the claim: %q, want 10:expunged", got)
	}
	u.quiet(100 * time.Millisecond) // no round trip for an expunge
	if _, ok, err := sub.Own(context.Background(), 10, []string{`\Seen`}); ok || err != nil {
		t.Fatalf("Own of an expunged message = %v, %v; want false, nil", ok, err)
	}
	if got := since(st, m1); !slices.Equal(got, []string{"10:expunged"}) {
		t.Fatalf("changes after the claim of an expunged message: %q", got)
	}
}

// A claim is served at once in every phase of the watcher: blocked in an
// IDLE read (which it goes on with, without leaving IDLE), waiting to poll,
// backing off between reconnects.
func TestClaimServedPromptly(t *testing.T) {
	const limit = 100 * time.Millisecond
	timed := func(t *testing.T, sub *Subscription, uid uint32, flags string) {
		t.Helper()
		start := time.Now()
		own(t, sub, uid, flags)
		if d := time.Since(start); d > limit {
			t.Errorf("Own took %v, want under %v", d, limit)
		}
		if f, _, _ := sub.State().Flags(uid); strings.Join(f, " ") != flags {
			t.Errorf("flags %q after Own, want %q", f, flags)
		}
	}
	t.Run("idle", func(t *testing.T) {
		u := startFake(t, true, 10, 11, 12)
		h := testHub(t, Config{})
		sub, _ := watchLogged(t, h, u.dial(), 10)
		u.expect("IDLE")
		for i, f := range []string{`\Seen`, `\Flagged`, `\Answered`} {
			timed(t, sub, uint32(10+i), f)
		}
		u.quiet(200 * time.Millisecond) // still in IDLE
		// And the IDLE read goes on: a report still arrives.
		u.push(`* 2 FETCH (UID 11 FLAGS (\Flagged))`) // confirms
		u.push(`* 1 FETCH (UID 10 FLAGS (\Draft))`)   // holds: a round trip
		u.expect("DONE")
		u.expect("NOOP")
		u.expect("IDLE")
		if f, _, _ := sub.State().Flags(10); strings.Join(f, " ") != `\Draft` {
			t.Errorf("flags %q after the round trip, want \\Draft", f)
		}
	})
	t.Run("poll", func(t *testing.T) {
		u := startFake(t, false, 10)
		h := testHub(t, Config{PollInterval: time.Hour})
		sub, _ := watchLogged(t, h, u.dial(), 10)
		timed(t, sub, 10, `\Seen`)
	})
	// While a round trip a session asked for is on its way (the
	// upstream holds its answer), claims are served: the watcher does
	// not wait for the answer first (execServing). The claim stands
	// past that round trip, which started before it.
	for _, idle := range []bool{false, true} {
		name := "round trip, polling"
		if idle {
			name = "round trip, lingering after IDLE"
		}
		t.Run(name, func(t *testing.T) {
			u := startFake(t, idle, 10)
			h := testHub(t, Config{PollInterval: time.Hour, SyncLinger: time.Hour})
			sub, _ := watchLogged(t, h, u.dial(), 10)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if idle {
				// The first Sync leaves IDLE; the watcher then lingers
				// out of it and answers the next with NOOP alone.
				u.expect("IDLE")
				if err := sub.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				u.expect("DONE")
				u.expect("NOOP")
			}
			release := u.holdNextNoop()
			defer release()
			errc := make(chan error, 1)
			go func() { errc <- sub.Sync(ctx) }()
			u.expect("NOOP held")
			timed(t, sub, 10, `\Seen`)
			release()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			u.expect("NOOP")
			// The next round trip settles the claim; nothing reported
			// otherwise, so the claimed flags stay.
			if err := sub.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			u.expect("NOOP")
			if f, _, _ := sub.State().Flags(10); strings.Join(f, " ") != `\Seen` {
				t.Errorf("flags %q after the round trips, want \\Seen", f)
			}
		})
	}
	t.Run("backoff", func(t *testing.T) {
		u := startFake(t, true, 10)
		h := testHub(t, Config{MinBackoff: time.Minute, MaxBackoff: time.Minute})
		sub, _ := watchLogged(t, h, u.dial(), 10)
		u.expect("IDLE")
		u.setDown(true)
		u.cut()
		// Wait until the watcher has noticed and is backing off: Sync
		// fails once its connection is gone.
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			err := sub.Sync(ctx)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		timed(t, sub, 10, `\Seen`)
	})
}

// Once the watcher has stopped, Own says so at once and applies nothing.
func TestOwnAfterStop(t *testing.T) {
	u := startFake(t, true, 10)
	h := testHub(t, Config{})
	sub, _ := watchLogged(t, h, u.dial(), 10)
	u.expect("IDLE")
	h.Close()
	high := sub.State().HighestModSeq()
	start := time.Now()
	_, ok, err := sub.Own(context.Background(), 10, []string{`\Seen`})
	if !errors.Is(err, errStopped) || ok {
		t.Fatalf("Own after the watcher stopped = %v, %v; want false, %v", ok, err, errStopped)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Own after the watcher stopped took %v", d)
	}
	if sub.State().HighestModSeq() != high {
		t.Fatal("Own after the watcher stopped changed the state")
	}
}

// Claims are bounded: the claim beyond maxClaims makes the watcher do a
// round trip, which settles them all; fewer make none.
func TestClaimsBounded(t *testing.T) {
	uids := make([]uint32, maxClaims+1)
	for i := range uids {
		uids[i] = uint32(i + 1)
	}
	u := startFake(t, true, uids...)
	h := testHub(t, Config{})
	sub, _ := watchLogged(t, h, u.dial(), 1)
	u.expect("IDLE")
	for _, uid := range uids[:maxClaims] {
		own(t, sub, uid, `\Seen`)
	}
	u.quiet(100 * time.Millisecond)
	own(t, sub, uids[maxClaims], `\Seen`)
	u.expect("DONE")
	u.expect("NOOP")
	u.expect("IDLE")
	// The claims are settled: a report of other flags is someone
	// else's change, applied without a round trip.
	high := sub.State().HighestModSeq()
	u.push(`* 1 FETCH (UID 1 FLAGS (\Flagged))`)
	deadline := time.Now().Add(5 * time.Second)
	for sub.State().HighestModSeq() == high && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if f, _, _ := sub.State().Flags(1); strings.Join(f, " ") != `\Flagged` {
		t.Fatalf("flags %q, want \\Flagged", f)
	}
	u.quiet(100 * time.Millisecond)
}

// A full resync (after a reconnect) forgets every claim: its listing is the
// truth, and a later report of the flags once claimed is someone else's
// change, applied like any other.
func TestFullSyncForgetsClaims(t *testing.T) {
	u := startFake(t, true, 10)
	h := testHub(t, Config{MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	sub, _ := watchLogged(t, h, u.dial(), 10)
	st := sub.State()
	u.expect("IDLE")
	own(t, sub, 10, `\Flagged`)
	// Meanwhile someone else set other flags; the connection drops
	// before the watcher hears of either change.
	u.mu.Lock()
	u.flags[10] = `\Answered`
	u.mu.Unlock()
	u.cut()
	u.expect("IDLE") // reconnected, listed, idling again
	if f, _, _ := st.Flags(10); strings.Join(f, " ") != `\Answered` {
		t.Fatalf("flags %q after the resync, want \\Answered", f)
	}
	high := st.HighestModSeq()
	u.push(`* 1 FETCH (UID 10 FLAGS (\Flagged))`)
	deadline := time.Now().Add(5 * time.Second)
	for st.HighestModSeq() == high && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if f, _, _ := st.Flags(10); strings.Join(f, " ") != `\Flagged` {
		t.Fatalf("flags %q after a report of \\Flagged, want \\Flagged", f)
	}
	u.quiet(50 * time.Millisecond)
}

// TestSyncLinger: after a round trip a session asked for, the watcher
// stays out of IDLE for Config.SyncLinger and answers the next request
// with a NOOP alone (no DONE, no IDLE before it); once the linger passes
// without a request it goes back into IDLE. A negative linger goes back at
// once.
func TestSyncLinger(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sync := func(t *testing.T, sub *Subscription) {
		t.Helper()
		if err := sub.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("lingering", func(t *testing.T) {
		u := startFake(t, true, 10)
		h := testHub(t, Config{SyncLinger: time.Hour})
		sub, _ := watchLogged(t, h, u.dial(), 10)
		u.expect("IDLE")
		sync(t, sub)
		u.expect("DONE")
		u.expect("NOOP")
		for range 3 {
			sync(t, sub)
			u.expect("NOOP")
		}
		u.quiet(100 * time.Millisecond)
	})
	t.Run("back into IDLE", func(t *testing.T) {
		u := startFake(t, true, 10)
		h := testHub(t, Config{SyncLinger: 50 * time.Millisecond})
		sub, _ := watchLogged(t, h, u.dial(), 10)
		u.expect("IDLE")
		// What changed while the watcher lingered, which a server need
		// not report once IDLE has begun, comes with a last NOOP: the
		// second from now, after the Sync's.
		u.answerNoop(2, `* 1 FETCH (UID 10 FLAGS (\Answered))`)
		sync(t, sub)
		u.expect("DONE")
		u.expect("NOOP")
		u.expect("NOOP") // after the linger
		u.expect("IDLE")
		if f, _, _ := sub.State().Flags(10); strings.Join(f, " ") != `\Answered` {
			t.Fatalf("flags %q after the linger, want the change reported to its last NOOP", f)
		}
		// And an outside change reaches the watcher in IDLE again.
		u.push(`* 1 FETCH (UID 10 FLAGS (\Answered \Seen))`)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if f, _, _ := sub.State().Flags(10); strings.Join(f, " ") == `\Answered \Seen` {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the change pushed in IDLE never reached the state")
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	t.Run("off", func(t *testing.T) {
		u := startFake(t, true, 10)
		h := testHub(t, Config{SyncLinger: -1})
		sub, _ := watchLogged(t, h, u.dial(), 10)
		u.expect("IDLE")
		sync(t, sub)
		u.expect("DONE")
		u.expect("NOOP")
		u.expect("IDLE")
		sync(t, sub)
		u.expect("DONE")
		u.expect("NOOP")
	})
}

// TestSyncSoon: a round trip asked for ahead (SyncSoon, as SELECT does
// before it sends its SELECT upstream) starts at once, before anyone
// waits for it, and Await then waits for that one rather than asking for
// another. Nobody watching the mailbox, there is nothing to ask; Await of
// nothing is a Sync.
func TestSyncSoon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := startFake(t, true, 10)
	h := testHub(t, Config{SyncLinger: -1})
	if p := h.SyncSoon(Key{"alice", "INBOX"}); p != nil {
		t.Fatal("SyncSoon of a mailbox nobody watches asked for a round trip")
	}
	sub, _ := watchLogged(t, h, u.dial(), 10)
	u.expect("IDLE")
	p := h.SyncSoon(Key{"alice", "INBOX"})
	if p == nil {
		t.Fatal("SyncSoon of a watched mailbox asked for nothing")
	}
	u.expect("DONE")
	u.expect("NOOP")
	u.expect("IDLE")
	if err := sub.Await(ctx, p); err != nil {
		t.Fatal(err)
	}
	u.quiet(50 * time.Millisecond)
	if err := sub.Await(ctx, nil); err != nil {
		t.Fatal(err)
	}
	u.expect("DONE")
	u.expect("NOOP")
}

// blockingStore is the real Bolt store behind a gate: while gate is set,
// Save waits on it (after telling entered), as a slow disk would.
type blockingStore struct {
	*statestore.Bolt
	saves   atomic.Int32
	mu      sync.Mutex
	gate    chan struct{}
	entered chan struct{}
}

func (s *blockingStore) Save(key string, b statestore.Batch) error {
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		s.entered <- struct{}{}
		<-gate
	}
	s.saves.Add(1)
	return s.Bolt.Save(key, b)
}

// TestClaimsSavedTogether: claims that queue while the watcher saves
// another change are applied in one batch, one save, each answered with
// the mod-sequence of its own change; a second claim of a message in the
// queue waits for the next batch.
func TestClaimsSavedTogether(t *testing.T) {
	u := startFake(t, false, 10, 11, 12, 13)
	bolt, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	store := &blockingStore{Bolt: bolt, entered: make(chan struct{}, 1)}
	h := testHub(t, Config{Store: store, PollInterval: time.Hour})
	sub, _ := watchLogged(t, h, u.dial(), 10)
	st := sub.State()

	gate := make(chan struct{})
	store.mu.Lock()
	store.gate = gate
	store.mu.Unlock()
	type result struct {
		uid    uint32
		modseq uint64
	}
	results := make(chan result, 5)
	claim := func(uid uint32, flags string) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			m, ok, err := sub.Own(ctx, uid, strings.Fields(flags))
			if err != nil || !ok {
				t.Errorf("Own(%d): %v %v", uid, ok, err)
			}
			results <- result{uid, m}
		}()
	}
	claim(10, `\Seen`)
	<-store.entered // the box's goroutine is saving the first claim
	store.mu.Lock()
	store.gate = nil // the saves after this one go through
	store.mu.Unlock()
	before := store.saves.Load()
	// These queue behind it; their queue is served once it is saved.
	waitQueued := func(n int) {
		for queued(sub.box) != n {
			time.Sleep(time.Millisecond)
		}
	}
	claim(11, `\Seen`)
	claim(12, `\Flagged`)
	claim(13, `\Answered`)
	waitQueued(3)
	claim(11, `\Seen \Flagged`) // 11 again, queued last: the next batch
	waitQueued(4)
	close(gate)
	got := map[uint32][]uint64{}
	for range 5 {
		r := <-results
		got[r.uid] = append(got[r.uid], r.modseq)
	}
	if n := store.saves.Load() - before; n != 3 {
		t.Errorf("%d saves for the first claim and the four queued behind it, want 3 (the first, 11-13 together, 11 again)", n)
	}
	for _, uid := range []uint32{12, 13} {
		if _, m, _ := st.Flags(uid); len(got[uid]) != 1 || got[uid][0] != m {
			t.Errorf("UID %d: answered %v, its mod-sequence is %d", uid, got[uid], m)
		}
	}
	if f, m, _ := st.Flags(11); strings.Join(f, " ") != `\Flagged \Seen` || len(got[11]) != 2 || max(got[11][0], got[11][1]) != m || got[11][0] == got[11][1] {
		t.Errorf("UID 11: flags %q mod-sequence %d, answered %v", f, m, got[11])
	}
}

// queued returns how many claims wait for b's goroutine.
func queued(b *box) int {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	return len(b.claimReqs)
}
