package load

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// tsess is one client of the takeover runs: it idles, and when its link
// drops it reconnects through the balancer, retrying LOGIN while the
// cluster answers NO [UNAVAILABLE], as a phone would.
type tsess struct {
	acct    int
	mu      sync.Mutex
	dropped time.Time // when its link dropped (after the kill)
	back    time.Time // when it was idle again
	logins  int       // LOGIN attempts after the drop
}

// retryEvery is the takeover clients' pause between LOGIN attempts: 250
// to 750 ms, random.
func retryEvery() time.Duration { return 250*time.Millisecond + rand.N(500*time.Millisecond) }

// open connects through front, logs in (retrying on NO) and idles in
// INBOX; it returns the connection and the LOGIN attempts it took.
func (s *tsess) open(ctx context.Context, front string, src net.IP, a Account) (*rconn, int, error) {
	tries := 0
	for ctx.Err() == nil {
		d := net.Dialer{Timeout: 10 * time.Second}
		if src != nil {
			d.LocalAddr = &net.TCPAddr{IP: src}
		}
		nc, err := d.DialContext(ctx, "tcp", front)
		if err != nil {
			time.Sleep(retryEvery())
			continue
		}
		c := newRconn(nc)
		nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		if l, err := c.line(); err != nil || !strings.HasPrefix(l, "* OK") {
			c.close()
			time.Sleep(retryEvery())
			continue
		}
		for ctx.Err() == nil {
			tries++
			lines, err := c.cmd("LOGIN " + a.User + " " + a.Pass)
			if err != nil {
				break
			}
			if f := strings.Fields(lines[len(lines)-1]); len(f) > 1 && f[1] == "OK" {
				if _, err := c.must("SELECT INBOX"); err != nil {
					break
				}
				if err := c.startIdle(); err != nil {
					break
				}
				return c, tries, nil
			}
			time.Sleep(retryEvery())
		}
		c.close()
		time.Sleep(retryEvery())
	}
	return nil, tries, ctx.Err()
}

// takeoverRun is figure 4: b.takeover sessions (5 per account) idle
// through HAProxy in front of three nodes with the default lease TTL
// (10 s); one node is killed with SIGKILL; every client whose link drops
// reconnects. Reported: from the kill to the first session of an account
// the dead node owned served again through another node, the spread of
// those sessions' return, and the rate at which they came back.
func (b *cbench) takeoverRun(t *testing.T, run int) {
	quiet := waitQuiet(t)
	const ttl = 10 * time.Second
	nacc := max(b.takeover/5, 1)
	e := b.startEnv(t, 3, nacc, ttl)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sources, _ := ParseSources("127.0.0.2-127.0.0.9")
	sess := make([]*tsess, b.takeover)
	var killed time.Time
	var killMu sync.Mutex
	ready := make(chan struct{}, b.takeover)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range sess {
		s := &tsess{acct: i % nacc}
		sess[i] = s
		a := e.accts[s.acct]
		src := sources[i%len(sources)]
		wg.Go(func() {
			sem <- struct{}{}
			c, _, err := s.open(ctx, e.front, src, a)
			<-sem
			ready <- struct{}{}
			if err != nil {
				return
			}
			for {
				// Idle until the link drops.
				c.nc.SetReadDeadline(time.Time{})
				for {
					if _, err := c.line(); err != nil {
						break
					}
				}
				c.close()
				if ctx.Err() != nil {
					return
				}
				killMu.Lock()
				k := killed
				killMu.Unlock()
				if k.IsZero() {
					t.Errorf("session of %s dropped before the kill", a.User)
				}
				s.mu.Lock()
				s.dropped = time.Now()
				s.mu.Unlock()
				var tries int
				c, tries, err = s.open(ctx, e.front, src, a)
				if err != nil {
					return
				}
				s.mu.Lock()
				s.back, s.logins = time.Now(), tries
				s.mu.Unlock()
			}
		})
	}
	setupStart := time.Now()
	for range sess {
		<-ready
	}
	setup := time.Since(setupStart)
	time.Sleep(5 * time.Second)
	pgc := e.pgconn(ctx)
	victim := e.node("n2")
	owned := map[int]bool{}
	for i := range nacc {
		if e.owner(ctx, pgc, e.accts[i].User) == victim.name {
			owned[i] = true
		}
	}
	var leaseLeft float64
	pgc.QueryRow(ctx, `SELECT extract(epoch FROM lease_until - now())::float8 FROM lp_nodes WHERE name = $1`, victim.name).Scan(&leaseLeft)
	killMu.Lock()
	killed = time.Now()
	killMu.Unlock()
	victim.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.done

	// Wait until every dropped session is back, at most 3 minutes.
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		if time.Since(killed) < 5*time.Second {
			continue
		}
		pending := 0
		for _, s := range sess {
			s.mu.Lock()
			if !s.dropped.IsZero() && s.back.Before(s.dropped) {
				pending++
			}
			s.mu.Unlock()
		}
		if pending == 0 && time.Since(killed) > ttl+5*time.Second {
			break
		}
	}
	var affected, others []float64
	var dropsAffected, dropsOthers, notBack int
	var logins []float64
	buckets := map[int]int{}
	for _, s := range sess {
		s.mu.Lock()
		d, bk, n := s.dropped, s.back, s.logins
		s.mu.Unlock()
		if d.IsZero() {
			continue
		}
		if owned[s.acct] {
			dropsAffected++
		} else {
			dropsOthers++
		}
		if bk.Before(d) {
			notBack++
			continue
		}
		x := bk.Sub(killed).Seconds()
		if owned[s.acct] {
			affected = append(affected, x)
			logins = append(logins, float64(n))
			buckets[int(x)]++
		} else {
			others = append(others, x)
		}
	}
	slices.Sort(affected)
	sa, so, sl := summarize(affected), summarize(others), summarize(logins)
	out := map[string]any{
		"machine": quiet, "sessions": b.takeover, "accounts": nacc, "lease-ttl-s": ttl.Seconds(),
		"setup-s": setup.Seconds(), "victim": victim.name, "victim-lease-left-at-kill-s": leaseLeft,
		"accounts-owned-by-victim": len(owned), "sessions-of-victims-accounts-dropped": dropsAffected,
		"other-sessions-dropped": dropsOthers, "sessions-not-back": notBack,
		"login-retry-interval":        "250-750 ms, random",
		"affected-back-s":             map[string]any{"n": sa.n, "first": first(affected), "p50": sa.p50, "p90": sa.p90, "p99": sa.p99, "last": sa.max},
		"others-back-s":               map[string]any{"n": so.n, "first": first(slices.Sorted(slices.Values(others))), "p50": so.p50, "p99": so.p99, "last": so.max},
		"logins-per-affected-session": map[string]any{"p50": sl.p50, "p99": sl.p99, "max": sl.max},
		"affected-back-per-second":    buckets,
	}
	if len(affected) > 0 {
		out["first-affected-back-after-lease-expiry-s"] = affected[0] - leaseLeft
	}
	if len(affected) > 1 {
		out["affected-rate-per-s"] = float64(len(affected)) / (affected[len(affected)-1] - affected[0])
	}
	cancel()
	b.save(t, fmt.Sprintf("takeover-%d-r%d", b.takeover, run), out)
}

func first(s []float64) float64 {
	if len(s) == 0 {
		return 0
	}
	return s[0]
}

var (
	reUIDValidity = regexp.MustCompile(`\[UIDVALIDITY (\d+)\]`)
	reHighest     = regexp.MustCompile(`\[HIGHESTMODSEQ (\d+)\]`)
	reExists      = regexp.MustCompile(`^\* (\d+) EXISTS`)
)

func find(re *regexp.Regexp, lines []string) string {
	for _, l := range lines {
		if m := re.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	return ""
}

// pgStateTables are package pgstate's tables.
var pgStateTables = []string{"lp_state_mailboxes", "lp_state_flagsets", "lp_state_messages", "lp_state_expunges"}

func pgSize(ctx context.Context, conn *pgx.Conn) int64 {
	var n int64
	conn.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c::regclass)), 0)::bigint FROM unnest($1::text[]) c`, pgStateTables).Scan(&n)
	return n
}

// pgStats is the database's WAL position and its write counters.
type pgStats struct {
	LSN                    int64
	Commits, Ins, Upd, Del int64
	HotUpd                 int64
}

func readPGStats(ctx context.Context, conn *pgx.Conn) pgStats {
	var s pgStats
	conn.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`).Scan(&s.LSN)
	conn.QueryRow(ctx, `SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = current_database()`).Scan(&s.Commits, &s.Ins, &s.Upd, &s.Del)
	conn.QueryRow(ctx, `SELECT coalesce(sum(n_tup_hot_upd), 0)::bigint FROM pg_stat_user_tables`).Scan(&s.HotUpd)
	return s
}

// loginRetry dials addr and logs in, retrying while the login is refused
// (NO [UNAVAILABLE]: an account between owners) or the connection drops,
// as a client would; it returns the attempts and the refusals seen.
func loginRetry(addr string, a Account, within time.Duration) (*rconn, int, error) {
	c, _, err := loginRetryNote(addr, a, within)
	return c, 0, err
}

func loginRetryNote(addr string, a Account, within time.Duration) (*rconn, []string, error) {
	start := time.Now()
	var seen []string
	note := func(s string) {
		if len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
	}
	for {
		if time.Since(start) > within {
			return nil, seen, fmt.Errorf("LOGIN still refused after %v: %q", within, seen)
		}
		c, err := rdial(addr, 30*time.Second)
		if err != nil {
			note(err.Error())
			time.Sleep(200 * time.Millisecond)
			continue
		}
		for {
			lines, err := c.cmd("LOGIN " + a.User + " " + a.Pass)
			if err != nil {
				note("LOGIN: " + err.Error())
				c.close()
				break
			}
			last := lines[len(lines)-1]
			if f := strings.Fields(last); len(f) > 1 && f[1] == "OK" {
				return c, seen, nil
			}
			_, rest, _ := strings.Cut(last, " ")
			note(rest)
			if time.Since(start) > within {
				c.close()
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// resync is figures 5 and 6: a mailbox of b.messages messages synced
// through the cluster; then, in each of 3 rounds, its owner leaves (SIGTERM:
// it hands its accounts back), 15 changes are made on Dovecot (10 flag
// changes, 5 expunges), and the client resyncs with QRESYNC through
// another node. On one node (nodes 0) the client reconnects to the same
// node. Then, on the cluster, PostgreSQL's bytes per message and WAL per
// flag change and per new message.
func (b *cbench) resync(t *testing.T, nodes int) {
	quiet := waitQuiet(t)
	e := b.startEnv(t, nodes, 4, 10*time.Second)
	ctx := context.Background()
	user := e.accts[0]
	label := "cluster"
	var pgc *pgx.Conn
	if nodes == 0 {
		label = "single"
	} else {
		pgc = e.pgconn(ctx)
	}
	out := map[string]any{"machine": quiet, "messages": b.messages, "label": label}
	fillStart := time.Now()
	e.dc.FillMailbox(t, user.User, "big", b.messages, func(i int) []byte { return message(0, i, 400, "resync") })
	out["fill-s"] = time.Since(fillStart).Seconds()
	var size0 int64
	if pgc != nil {
		size0 = pgSize(ctx, pgc)
	}

	c, _, err := loginRetry(e.front, user, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c.must("ENABLE QRESYNC")
	start := time.Now()
	in0 := c.in.Load()
	lines, err := c.must("SELECT big")
	if err != nil {
		t.Fatal(err)
	}
	out["first-select-s"] = time.Since(start).Seconds()
	out["first-select-bytes"] = c.in.Load() - in0
	uv, hms := find(reUIDValidity, lines), find(reHighest, lines)
	exists, _ := strconv.Atoi(find(reExists, lines))
	c.must("LOGOUT")
	c.close()
	if uv == "" || hms == "" {
		t.Fatalf("SELECT big: no UIDVALIDITY or HIGHESTMODSEQ: %q", lines)
	}
	if pgc != nil {
		size1 := pgSize(ctx, pgc)
		out["pg-state-bytes-empty"] = size0
		out["pg-state-bytes"] = size1
		out["pg-state-bytes-per-message"] = float64(size1-size0) / float64(b.messages)
		var msgs int64
		pgc.QueryRow(ctx, `SELECT count(*) FROM lp_state_messages`).Scan(&msgs)
		out["pg-state-message-rows"] = msgs
	}

	rounds := 3
	if nodes > 0 {
		rounds = 5
	}
	var roundsOut []map[string]any
	for round := 1; round <= rounds; round++ {
		rr := map[string]any{}
		via := e.nodes[0]
		var left *cnode
		if pgc != nil {
			o := e.owner(ctx, pgc, user.User)
			left = e.node(o)
			if left == nil {
				t.Fatalf("round %d: no owner of %s", round, user.User)
			}
			// Rounds 1-3: the owner leaves (SIGTERM: it hands its
			// accounts back); rounds 4-5: it dies (kill -9), and the next
			// node takes over once the lease has expired.
			sig := syscall.SIGTERM
			if round > 3 {
				sig = syscall.SIGKILL
			}
			rr["owner-stopped-by"] = sig.String()
			left.stop(sig, time.Minute)
			for _, n := range e.nodes {
				if n != left && n.alive() {
					via = n
					break
				}
			}
			rr["owner-left"] = left.name
		}
		rr["via"] = via.name
		// 15 changes on Dovecot directly: 10 flag changes, 5 expunges.
		d, err := rdial(e.dc.Addr, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		d.must("LOGIN " + user.User + " " + user.Pass)
		d.must("SELECT big")
		// 15 distinct messages: the first 10 flagged, the last 5 expunged.
		picked := map[int]bool{}
		var seqs []int
		for len(seqs) < 15 {
			if q := 1 + rand.N(exists); !picked[q] {
				picked[q] = true
				seqs = append(seqs, q)
			}
		}
		for k, q := range seqs {
			flag := "\\Flagged"
			if k >= 10 {
				flag = "\\Deleted"
			}
			if _, err := d.must(fmt.Sprintf("STORE %d +FLAGS (%s)", q, flag)); err != nil {
				t.Fatal(err)
			}
		}
		d.must("EXPUNGE")
		exists -= 5
		d.must("LOGOUT")
		d.close()

		lstart := time.Now()
		c, seen, err := loginRetryNote(via.addr, user, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		rr["login-s"], rr["login-refusals"] = time.Since(lstart).Seconds(), seen
		c.must("ENABLE QRESYNC")
		in0 := c.in.Load()
		start := time.Now()
		lines, err := c.must(fmt.Sprintf("SELECT big (QRESYNC (%s %s))", uv, hms))
		if err != nil {
			t.Fatal(err)
		}
		rr["qresync-select-s"] = time.Since(start).Seconds()
		rr["qresync-select-bytes"] = c.in.Load() - in0
		fetches, vanished := 0, ""
		for _, l := range lines {
			if strings.Contains(l, " FETCH ") {
				fetches++
			}
			if strings.HasPrefix(l, "* VANISHED") {
				vanished = l
			}
		}
		rr["fetch-lines"], rr["vanished"] = fetches, vanished
		if h := find(reHighest, lines); h != "" {
			if hn, _ := strconv.ParseUint(h, 10, 64); hn != 0 {
				ho, _ := strconv.ParseUint(hms, 10, 64)
				rr["highestmodseq-before"], rr["highestmodseq-after"] = ho, hn
				if hn <= ho {
					t.Errorf("round %d: HIGHESTMODSEQ went from %d to %d", round, ho, hn)
				}
			}
			hms = h
		}
		c.must("LOGOUT")
		c.close()
		if left != nil {
			e.startNode(left)
		}
		roundsOut = append(roundsOut, rr)
	}
	out["rounds"] = roundsOut

	if pgc != nil {
		out["wal"] = e.walRun(t, ctx, pgc, exists)
	}
	b.save(t, fmt.Sprintf("resync-%s-%d", label, b.messages), out)
}

// walRun measures the WAL and the writes of flag changes and new messages,
// beside the background (the nodes' lease renewals) measured first.
func (e *cenv) walRun(t *testing.T, ctx context.Context, pgc *pgx.Conn, exists int) map[string]any {
	out := map[string]any{}
	time.Sleep(2 * time.Second)
	s0 := readPGStats(ctx, pgc)
	bgStart := time.Now()
	time.Sleep(30 * time.Second)
	s1 := readPGStats(ctx, pgc)
	bgDur := time.Since(bgStart).Seconds()
	bgRate := float64(s1.LSN-s0.LSN) / bgDur
	bgCommits := float64(s1.Commits-s0.Commits) / bgDur
	out["background-wal-bytes-per-s"], out["background-commits-per-s"] = bgRate, bgCommits

	const n = 1000
	delta := func(a, b pgStats, dur float64) map[string]any {
		wal := float64(b.LSN-a.LSN) - bgRate*dur
		return map[string]any{
			"n": n, "seconds": dur, "wal-bytes-total": b.LSN - a.LSN,
			"wal-bytes-per-item": wal / n, "commits-per-item": (float64(b.Commits-a.Commits) - bgCommits*dur) / n,
			"tuples-inserted-per-item": float64(b.Ins-a.Ins) / n, "tuples-updated-per-item": float64(b.Upd-a.Upd) / n,
			"hot-updates-per-item": float64(b.HotUpd-a.HotUpd) / n,
		}
	}
	// Flag changes through the cluster, one STORE each, on the big mailbox.
	user := e.accts[0]
	c, _, err := loginRetry(e.front, user, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c.must("SELECT big")
	a := readPGStats(ctx, pgc)
	start := time.Now()
	step := max(exists/n, 1)
	for i := range n {
		if _, err := c.must(fmt.Sprintf("STORE %d +FLAGS (\\Answered)", 1+(i*step)%exists)); err != nil {
			t.Fatal(err)
		}
	}
	dur := time.Since(start).Seconds()
	time.Sleep(1500 * time.Millisecond) // statistics are flushed within a second
	bst := readPGStats(ctx, pgc)
	out["flag-change"] = delta(a, bst, dur+1.5)
	c.must("LOGOUT")
	c.close()

	// New messages: APPENDs on Dovecot directly while a client idles on
	// the account through the cluster (the owner's watcher stores them).
	u2 := e.accts[1]
	w, _, err := loginRetry(e.front, u2, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	w.must("SELECT INBOX")
	if err := w.startIdle(); err != nil {
		t.Fatal(err)
	}
	base := w.last
	d, err := rdial(e.dc.Addr, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	d.must("LOGIN " + u2.User + " " + u2.Pass)
	a = readPGStats(ctx, pgc)
	start = time.Now()
	for i := range n {
		msg := string(message(1, i, 400, "wal"))
		if _, err := d.must(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(msg), msg)); err != nil {
			t.Fatal(err)
		}
	}
	w.nc.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for w.last < base+n {
		if _, err := w.line(); err != nil {
			t.Fatalf("waiting for the new messages' EXISTS: %v (at %d of %d)", err, w.last-base, n)
		}
	}
	dur = time.Since(start).Seconds()
	time.Sleep(1500 * time.Millisecond)
	bst = readPGStats(ctx, pgc)
	out["new-message"] = delta(a, bst, dur+1.5)
	var ckpt string
	pgc.QueryRow(ctx, `SHOW checkpoint_timeout`).Scan(&ckpt)
	out["checkpoint_timeout"] = ckpt
	return out
}

func newRconn(nc net.Conn) *rconn {
	return &rconn{nc: nc, r: bufioReader(nc)}
}
