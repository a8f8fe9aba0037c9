package conformance

// The suite against lemonproxy itself (issue 7, item 3): the proxy runs
// in-process with the extensions a real deployment gets (cmd/lemonproxy's
// extensions()) in front of Dovecot's full profile, Dovecot's legacy profile
// and go-imap's imapmemserver, and every scenario must pass in front of all
// three. Outside changes are made on the upstream directly, behind the
// proxy's back, so the proxy has to notice them itself.

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/extensions/chain"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
)

// proxyPoll is the proxy's poll interval in these tests, for both the hub's
// mailbox watchers (upstreams without IDLE) and NOTIFY's account watchers
// (mailboxes other than INBOX and the selected one, upstreams without
// NOTIFY). The deployment default is 30 s; the suite waits up to
// Config.EventWait (6 s) for an event.
const proxyPoll = 250 * time.Millisecond

// Scenarios run at once against the proxy. In front of Dovecot one at a
// time: with 4 the load brings out Dovecot's own maildir races (CREATE
// answered NO [ALREADYEXISTS], upstream sessions ended as "inconsistent",
// so the proxy answers NO [UNAVAILABLE]) and more of the proxy's races
// (see proxyBugs), for a third less time. In front of imapmemserver 4,
// which takes the run from about 35 s to 15 s. Running the three targets
// side by side (t.Parallel) gains nothing on a two-core machine with -race:
// it is CPU-bound.
const (
	dovecotParallel = 1
	memParallel     = 4
)

// startLemonproxyQueue starts lemonproxy in front of upAddr as `lemonproxy
// serve` would run it (the same extensions, a bbolt state store), with
// short poll intervals and NOTIFY's limit of queued events per session
// (notify.Config.MaxQueued; 0 is the default, 1,000), and returns its
// address.
func startLemonproxyQueue(t *testing.T, upAddr string, maxQueued int) string {
	t.Helper()
	return startLemonproxyWith(t, upAddr, maxQueued, nil)
}

// memIdleRenew is the hub's IdleRenew in front of imapmemserver. go-imap's
// server does not report, in an IDLE, changes that were queued for the
// session before the IDLE began (SessionTracker.Idle waits for the next
// change only), so a change landing between a watcher's sync and its next
// IDLE would wait for the IDLE's renewal, 25 minutes by default; renewing
// every second (DONE makes the server flush its queue) bounds that delay.
// Operators of upstreams with this fault set idle-renew the same way
// (docs/conformance.md).
const memIdleRenew = time.Second

// startLemonproxyWith is startLemonproxyQueue with the configuration
// changed by edit (if not nil) before the proxy starts.
func startLemonproxyWith(t *testing.T, upAddr string, maxQueued int, edit func(*proxy.Config)) string {
	t.Helper()
	store, err := statestore.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the proxy's cleanup, so it runs after the proxy
	// has shut down.
	t.Cleanup(func() { store.Close() })
	cfg := proxy.Config{
		Upstream:   imaptest.DefaultUpstream(),
		Extensions: chain.Extensions(chain.Config{NotifyPollInterval: proxyPoll, NotifyMaxQueued: maxQueued}),
	}
	cfg.Upstream.Timeout = 10 * time.Second
	cfg.Hub.PollInterval = proxyPoll
	cfg.Hub.Store = store
	if edit != nil {
		edit(&cfg)
	}
	return imaptest.StartProxy(t, upAddr, cfg).Addr
}

// proxyBug marks a scenario lemonproxy is known to fail: a bug in the
// proxy (see the BUG comment at each entry in proxyBugs), to be fixed by
// the proxy's owners, who then remove the entry.
type proxyBug struct {
	// targets are the upstreams in front of which it fails.
	targets []string
	// flaky is set for a race: the scenario fails in some runs only, so
	// passing is no proof of a fix. Without it the scenario must fail, and
	// the test says when it passes so that the mark goes.
	flaky bool
}

// Targets of the proxy runs.
const (
	dovecotFull   = "dovecot-full"
	dovecotLegacy = "dovecot-legacy"
	memServer     = "imapmemserver"
)

// proxyBugs are lemonproxy's known failures (docs/conformance.md,
// "Where lemonproxy fails").
var proxyBugs = map[string]proxyBug{
	// None open. The last ones, fixed or explained:
	//  - 5465-own-mailboxname-suppressed in front of Dovecot full (the
	//    session's own CREATE announced to it): Dovecot answered the CREATE
	//    NO [ALREADYEXISTS] although it created the mailbox (the account
	//    watcher's LIST at the same moment), and NOTIFY suppressed only
	//    what a command answered OK had done; a CREATE answered so counts
	//    as the session's own now (notify's
	//    TestOwnCreateAnsweredAlreadyExists).
	//  - 5465-mailboxname-rename (a rename announced as a deletion and a
	//    creation when the account watcher's last poll had UIDVALIDITY 0
	//    for the old name): fixed by 7866bd4, new NOTIFY subscribers join
	//    after a fresh poll; not seen since.
	//  - 2177-idle-*, 4978-idle-flushed, 5465-selected-*, and
	//    7162-unchangedsince-* in front of imapmemserver: its IDLE misses
	//    changes queued before the IDLE began; the proxy now runs there
	//    with a short IdleRenew (memIdleRenew).
}

// maySkip are scenarios that may be skipped against any server: they
// depend on a choice the RFC leaves to it.
var maySkip = map[string]bool{
	"5465-notificationoverflow": true, // when to overflow is the server's choice (§5.8)
	// Whether LITERAL+ is offered before login is the server's choice:
	// go-imap's server offers it after login only.
	"7888-login-nonsync": true,
	// LANGUAGE is optional: Dovecot does not implement it (the proxy
	// always does).
	"5255-language": true,
}

// proxyConfig is the suite's configuration for a lemonproxy at proxyAddr
// whose upstream is upAddr: outside changes bypass the proxy.
func proxyConfig(proxyAddr, upAddr, user, pass, user2, pass2 string) Config {
	cfg := Target(proxyAddr, user, pass)
	cfg.Outside = Endpoint{Addr: upAddr}
	cfg.User2, cfg.Pass2 = user2, pass2
	return cfg
}

// checkProxyRun requires every scenario to pass in front of target but
// the known bugs, and none to be skipped but those in maySkip.
func checkProxyRun(t *testing.T, target string, rep *Report, only *regexp.Regexp) {
	t.Helper()
	t.Logf("%s: %s in %.1fs", target, rep.CountLine(), rep.Seconds)
	for _, r := range rep.Results {
		if r.Outcome == Skip && !maySkip[r.ID] {
			t.Errorf("%s skipped in front of %s: %s", r.ID, target, r.Reason)
		}
		if r.Cleanup != "" {
			t.Errorf("%s did not clean up: %s", r.ID, r.Cleanup)
		}
		bug, known := proxyBugs[r.ID]
		known = known && slices.Contains(bug.targets, target)
		switch {
		case r.Outcome == Fail && known:
			t.Logf("known proxy bug (see proxyBugs): %s: %s", r.ID, r.Reason)
		case r.Outcome == Fail:
			t.Errorf("lemonproxy in front of %s fails %s (RFC %d §%s %s): %s\ntranscript:\n%s", target, r.ID, r.RFC, r.Section, r.Level, r.Reason, r.Transcript)
		case r.Outcome == Pass && known && !bug.flaky:
			t.Errorf("%s now passes in front of %s: remove that target from its mark in proxyBugs", r.ID, target)
		}
	}
	for id, bug := range proxyBugs {
		if _, ran := rep.Result(id); !ran && (only == nil || only.MatchString(id)) && slices.Contains(bug.targets, target) {
			t.Errorf("proxyBugs names %s, which is not a scenario", id)
		}
	}
}

// parallelFromEnv lets a developer try another -parallel:
// LEMONPROXY_CONFORMANCE_PARALLEL=N.
func parallelFromEnv(t *testing.T, def int) int {
	if s := os.Getenv("LEMONPROXY_CONFORMANCE_PARALLEL"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("LEMONPROXY_CONFORMANCE_PARALLEL=%q: want a positive number", s)
		}
		return n
	}
	return def
}

// runProxy runs the suite against a lemonproxy at proxyAddr whose
// upstream is upAddr and checks the outcome: every scenario passes, and
// the Lemonade report counts the whole profile (RFC 5550 section 3)
// advertised.
func runProxy(t *testing.T, target, proxyAddr, upAddr, user, pass, user2, pass2 string, parallel int) {
	t.Helper()
	cfg := proxyConfig(proxyAddr, upAddr, user, pass, user2, pass2)
	cfg.Only = onlyFromEnv(t)
	cfg.Parallel = parallelFromEnv(t, parallel)
	rep := runAgainst(t, cfg)
	checkProxyRun(t, target, rep, cfg.Only)
	checkLemonade(t, target, rep)
}

// checkLemonade requires the Lemonade report, where it ran, to count all
// 24 extensions of the profile advertised.
func checkLemonade(t *testing.T, target string, rep *Report) {
	t.Helper()
	if r, ok := rep.Result("5550-profile-report"); ok && !strings.HasPrefix(r.Reason, "24 of 24 advertised") {
		t.Errorf("Lemonade report in front of %s: %q, want 24 of 24 advertised", target, r.Reason)
	}
}

// dovecotSearch tells the chain that the upstream's SEARCH is Dovecot's,
// which compares with i;unicode-casemap whatever capabilities it
// advertises: the proxy then relays searches for I18NLEVEL=1 rather than
// evaluating their substring keys (extensions/casesearch), as an operator
// would set it. The chain is built anew rather than one extension
// replaced, since extensions/thread holds the sort it takes its keys from.
func dovecotSearch(cfg *proxy.Config) {
	cfg.Extensions = chain.Extensions(chain.Config{NotifyPollInterval: proxyPoll, UpstreamSearchCasemap: true})
}

func TestProxyDovecotFull(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Full)
	addr := startLemonproxyWith(t, dc.Addr, 0, dovecotSearch)
	runProxy(t, dovecotFull, addr, dc.Addr, "alice", "alicepass", "bob", "bobpass", dovecotParallel)
}

func TestProxyDovecotLegacy(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	addr := startLemonproxyWith(t, dc.Addr, 0, dovecotSearch)
	runProxy(t, dovecotLegacy, addr, dc.Addr, "alice", "alicepass", "bob", "bobpass", dovecotParallel)
}

// TestProxyDovecotLegacyEvaluated runs the I18NLEVEL scenarios and the
// Lemonade report in front of Dovecot's legacy profile without
// upstream-search-casemap: the proxy evaluates the substring keys itself
// (extensions/casesearch), as over go-imap's server.
func TestProxyDovecotLegacyEvaluated(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	addr := startLemonproxyWith(t, dc.Addr, 0, nil)
	cfg := proxyConfig(addr, dc.Addr, "alice", "alicepass", "bob", "bobpass")
	cfg.Only = regexp.MustCompile(`^(5255|5550)-`)
	cfg.Parallel = dovecotParallel
	rep := runAgainst(t, cfg)
	checkProxyRun(t, dovecotLegacy+"-evaluated", rep, cfg.Only)
	checkLemonade(t, dovecotLegacy+"-evaluated", rep)
	if n := len(rep.Results); n != 7 {
		t.Errorf("%d scenarios ran, want the 6 of RFC 5255 and the report", n)
	}
}

func TestProxyMemUpstream(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() }) // after the proxy's shutdown
	for _, u := range [][2]string{{"u", "p"}, {"u2", "p2"}} {
		if err := up.AddUser(u[0], u[1]); err != nil {
			t.Fatal(err)
		}
	}
	addr := startLemonproxyWith(t, up.Addr, 0, func(cfg *proxy.Config) { cfg.Hub.IdleRenew = memIdleRenew })
	runProxy(t, memServer, addr, up.Addr, "u", "p", "u2", "p2", memParallel)
}

// TestProxyMemUpstreamPlain runs the NAMESPACE and LITERAL+ scenarios in
// front of go-imap's server stripped of both (it still advertises
// LITERAL-, which it cannot be stripped of): the proxy must synthesize
// NAMESPACE and take every non-synchronising literal itself.
func TestProxyMemUpstreamPlain(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{Caps: []imap.Cap{imap.CapUIDPlus}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("u", "p"); err != nil {
		t.Fatal(err)
	}
	addr := startLemonproxyWith(t, up.Addr, 0, func(cfg *proxy.Config) { cfg.Hub.IdleRenew = memIdleRenew })
	cfg := proxyConfig(addr, up.Addr, "u", "p", "", "")
	cfg.Only = regexp.MustCompile(`^(2342|7888|5550)-`)
	cfg.Parallel = memParallel
	rep := runAgainst(t, cfg)
	checkProxyRun(t, memServer+"-plain", rep, cfg.Only)
	// The Lemonade report tells what only the proxy advertises over this
	// upstream (go-imap's server without NAMESPACE, LITERAL+ and the rest).
	for _, r := range rep.Results {
		if r.ID != "5550-profile-report" {
			continue
		}
		for _, want := range []string{"also advertised by the upstream (-outside), 20 by the target only: ", " SORT", " ESORT", " CONTEXT=SORT", " I18NLEVEL=1", " LANGUAGE", " CATENATE", " URLAUTH", " NAMESPACE", " LITERAL+", " ESEARCH", " CONTEXT=SEARCH", " SEARCHRES", " WITHIN", " BINARY", " FILTERS", " CONVERT", " CONDSTORE", " QRESYNC", " NOTIFY", " COMPRESS=DEFLATE"} {
			if !strings.Contains(r.Reason, want) {
				t.Errorf("Lemonade report %q lacks %q", r.Reason, want)
			}
		}
		if i := strings.Index(r.Reason, "by the target only"); i < 0 || strings.Contains(r.Reason[i:], "UIDPLUS") {
			t.Errorf("Lemonade report counts the upstream's UIDPLUS as the proxy's own: %q", r.Reason)
		}
	}
}

// TestProxyNotificationOverflow checks the overflow scenario itself, which
// the runs above skip: the proxy gives up on a session only beyond 1,000
// queued events, more than the scenario makes. With a limit of 4 the
// scenario's MailboxName events overflow the queue, and the scenario must
// see the proxy announce it and then stay silent.
func TestProxyNotificationOverflow(t *testing.T) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("u", "p"); err != nil {
		t.Fatal(err)
	}
	addr := startLemonproxyQueue(t, up.Addr, 4)
	cfg := proxyConfig(addr, up.Addr, "u", "p", "", "")
	cfg.Only = regexp.MustCompile(`^5465-notificationoverflow$`)
	rep := runAgainst(t, cfg)
	if r, ok := rep.Result("5465-notificationoverflow"); !ok || r.Outcome != Pass {
		t.Errorf("5465-notificationoverflow: %s %s, want a pass\n%s", r.Outcome, r.Reason, r.Transcript)
	}
}
