package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/pgtest"
)

// Cluster mode across real processes (issue 19): what the in-process
// tests of internal/integration cannot show. A node killed with SIGKILL
// releases nothing and its sockets are closed by the kernel; a node stopped
// with SIGSTOP wakes with stale beliefs and must fence itself; the cluster
// commands run as an operator runs them; and clients come through a real
// TCP balancer.

// clusterTTL is the lease TTL of the test clusters: short, so that a
// takeover is quick, and long enough for the race detector on a shared
// machine.
const clusterTTL = 2 * time.Second

// lpCluster is PostgreSQL, one Dovecot and lemonproxy processes sharing
// them.
type lpCluster struct {
	t      *testing.T
	pg     *pgtest.Server
	db     string
	dc     *dovecottest.Server
	secret string // path of the secret file
	nodes  map[string]*lpNode
	sql    *pgx.Conn // the test's own look into the database
	extra  []string  // further flags of every node (push's)
}

// lpNode is one lemonproxy serve process.
type lpNode struct {
	name string
	p    *proc
	addr string // the IMAP listener
	link string // the internal link listener
}

func startLPCluster(t *testing.T, dc *dovecottest.Server, names ...string) *lpCluster {
	t.Helper()
	return startLPClusterWith(t, dc, nil, names...)
}

// startLPClusterWith is startLPCluster with further flags for every node.
func startLPClusterWith(t *testing.T, dc *dovecottest.Server, extra []string, names ...string) *lpCluster {
	t.Helper()
	pg := pgtest.Start(t)
	dir := t.TempDir()
	b := make([]byte, 32)
	rand.Read(b)
	secret := filepath.Join(dir, "cluster-secret")
	if err := os.WriteFile(secret, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &lpCluster{t: t, pg: pg, db: pg.NewDatabase(t), dc: dc, secret: secret, nodes: map[string]*lpNode{}, extra: extra}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	c.sql = conn
	for _, name := range names {
		c.start(name)
	}
	return c
}

// start starts (or restarts) the node called name and waits until it
// serves.
func (c *lpCluster) start(name string) *lpNode {
	t := c.t
	t.Helper()
	args := []string{"serve", "-listen", "127.0.0.1:0", "-upstream", c.dc.Addr,
		"-cluster-db", c.db, "-node", name, "-cluster-listen", "127.0.0.1:0", "-cluster-secret", c.secret,
		"-cluster-lease-ttl", clusterTTL.String(), "-cluster-release-after", "1h",
		"-auth-failure-delay", "10ms", "-log-level", "info"}
	p := start(t, append(args, c.extra...)...)
	n := &lpNode{name: name, p: p}
	n.link = p.waitFor(t, p.stderr, 0, `msg="cluster node registered" node=`+regexp.QuoteMeta(name)+` cluster-listen=(\S+)`)[1]
	n.addr = p.listenAddr(t, false)
	c.nodes[name] = n
	return n
}

// kill ends the node with SIGKILL and waits until it is gone.
func (n *lpNode) kill(t *testing.T) {
	t.Helper()
	n.p.signal(t, syscall.SIGKILL)
	select {
	case <-n.p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("node %s still runs after SIGKILL", n.name)
	}
}

// logins counts the client logins the node accepted itself (served here
// or forwarded from here), not those handed over to it by another node.
func (n *lpNode) logins() int {
	count := 0
	for l := range strings.SplitSeq(n.p.stderr.String(), "\n") {
		if strings.Contains(l, ` msg="logged in`) && !strings.Contains(l, " via=") {
			count++
		}
	}
	return count
}

// accountKey is the cluster's key of user's account.
func (c *lpCluster) accountKey(user string) []byte { return []byte(c.dc.Addr + "\x00" + user) }

func (c *lpCluster) query(sql string, args ...any) pgx.Row {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c.t.Cleanup(cancel)
	return c.sql.QueryRow(ctx, sql, args...)
}

// owner returns the node that owns user's account by the database and
// its epoch ("" if none), and whether that node's lease is live.
func (c *lpCluster) owner(user string) (node string, epoch int64, live bool) {
	c.t.Helper()
	var n *string
	err := c.query(`SELECT o.node, o.epoch, coalesce(l.lease_until > now(), false)
		FROM lp_owners o LEFT JOIN lp_nodes l ON l.name = o.node WHERE o.account = $1`, c.accountKey(user)).Scan(&n, &epoch, &live)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, false
	}
	if err != nil {
		c.t.Fatal(err)
	}
	if n != nil {
		node = *n
	}
	return node, epoch, live
}

// liveOwner returns the live owner of user's account, failing the test if
// there is none.
func (c *lpCluster) liveOwner(user string) *lpNode {
	c.t.Helper()
	name, epoch, live := c.owner(user)
	if name == "" || !live || c.nodes[name] == nil {
		c.t.Fatalf("%s's account: owner %q (epoch %d, live %v); want a live node", user, name, epoch, live)
	}
	return c.nodes[name]
}

// leaseExpired tells whether node's lease has run out by the database's
// clock.
func (c *lpCluster) leaseExpired(node string) bool {
	c.t.Helper()
	var expired bool
	if err := c.query(`SELECT lease_until <= now() FROM lp_nodes WHERE name = $1`, node).Scan(&expired); err != nil {
		c.t.Fatal(err)
	}
	return expired
}

// waitRenewal waits until node has completed a lease renewal that started
// after this call: from then on its list of live nodes is as the database
// said at that renewal. (Two renewals: the first may have updated its
// row before the call and be taking the list yet.)
func (c *lpCluster) waitRenewal(node string) {
	c.t.Helper()
	updated := func() time.Time {
		var u time.Time
		if err := c.query(`SELECT updated FROM lp_nodes WHERE name = $1`, node).Scan(&u); err != nil {
			c.t.Fatal(err)
		}
		return u
	}
	for range 2 {
		u := updated()
		waitCond(c.t, 2*clusterTTL, node+" to renew its lease", func() bool { return updated().After(u) })
	}
}

// stateSnapshot describes everything the database holds of user's
// account: its owner row and its mailboxes' sync state, to show that no
// node wrote anything between two snapshots.
func (c *lpCluster) stateSnapshot(user string) string {
	c.t.Helper()
	var s string
	err := c.query(`SELECT concat_ws(' | ',
		(SELECT concat_ws(',', node, epoch) FROM lp_owners WHERE account = $1),
		(SELECT string_agg(concat_ws(',', encode(key, 'escape'), uidvalidity, highest, base, max_uid, mark), ';' ORDER BY key)
			FROM lp_state_mailboxes WHERE account = $1),
		(SELECT string_agg(concat_ws(',', m.mailbox, m.uid, m.modseq, m.flagset), ';' ORDER BY m.mailbox, m.uid)
			FROM lp_state_messages m JOIN lp_state_mailboxes b ON b.id = m.mailbox WHERE b.account = $1),
		(SELECT string_agg(concat_ws(',', e.mailbox, e.modseq, e.uid), ';' ORDER BY e.mailbox, e.modseq)
			FROM lp_state_expunges e JOIN lp_state_mailboxes b ON b.id = e.mailbox WHERE b.account = $1),
		(SELECT string_agg(concat_ws(',', f.mailbox, f.id, encode(f.flags, 'escape')), ';' ORDER BY f.mailbox, f.id)
			FROM lp_state_flagsets f JOIN lp_state_mailboxes b ON b.id = f.mailbox WHERE b.account = $1))`,
		c.accountKey(user)).Scan(&s)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// highestStored returns the stored HIGHESTMODSEQ of user's INBOX.
func (c *lpCluster) highestStored(user string) uint64 {
	c.t.Helper()
	var h int64
	if err := c.query(`SELECT highest FROM lp_state_mailboxes WHERE account = $1 AND key = $2`,
		c.accountKey(user), append(c.accountKey(user), "\x00INBOX"...)).Scan(&h); err != nil {
		c.t.Fatalf("stored state of %s's INBOX: %v", user, err)
	}
	return uint64(h)
}

// waitCond polls cond (a look at the database or a log: there is no
// event to wait on) until it holds or d passes.
func waitCond(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loginAlice logs in as alice through addr, retrying while the cluster
// answers NO [UNAVAILABLE] (an account between owners) as a real client
// does, and returns the client and how long it took.
func loginAlice(t *testing.T, addr string, within time.Duration) (*imaptest.Client, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		c := imaptest.Dial(t, addr)
		c.MustGreetOK()
		lines := c.Cmd("LOGIN alice alicepass")
		tagged := imaptest.Tagged(lines)
		if strings.HasPrefix(tagged, "OK") {
			return c, time.Since(start)
		}
		c.Close()
		if !strings.HasPrefix(tagged, "NO [UNAVAILABLE]") {
			t.Fatalf("login through %s: %q; want OK or NO [UNAVAILABLE]", addr, lines)
		}
		if time.Since(start) > within {
			t.Fatalf("login through %s still refused after %v: %q", addr, within, lines)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// qrSelect is the answer to a SELECT with QRESYNC enabled.
type qrSelect struct {
	lines       []string
	uidvalidity uint32
	highest     uint64
	exists      int
	earlier     []uint32
	fetch       map[uint32]qrFetch
}

type qrFetch struct {
	modseq uint64
	flags  []string // lower case, sorted, without \recent
}

var (
	qrFetchRE   = regexp.MustCompile(`^\* \d+ FETCH \((.*)\)$`)
	qrUIDRE     = regexp.MustCompile(`\bUID (\d+)`)
	qrModSeqRE  = regexp.MustCompile(`\bMODSEQ \((\d+)\)`)
	qrFlagsRE   = regexp.MustCompile(`\bFLAGS \(([^)]*)\)`)
	qrUVRE      = regexp.MustCompile(`^\* OK \[UIDVALIDITY (\d+)\]`)
	qrHighestRE = regexp.MustCompile(`^\* OK \[HIGHESTMODSEQ (\d+)\]`)
	qrExistsRE  = regexp.MustCompile(`^\* (\d+) EXISTS$`)
)

// qresyncSelect enables QRESYNC and selects INBOX, with the QRESYNC
// parameter when known is not zero.
func qresyncSelect(t *testing.T, c *imaptest.Client, uv uint32, known uint64) qrSelect {
	t.Helper()
	c.MustOK("ENABLE QRESYNC")
	cmd := "SELECT INBOX"
	if known != 0 {
		cmd = fmt.Sprintf("SELECT INBOX (QRESYNC (%d %d))", uv, known)
	}
	lines := c.MustOK(cmd)
	r := qrSelect{lines: lines, exists: -1, fetch: map[uint32]qrFetch{}}
	for _, l := range lines[:len(lines)-1] {
		if m := qrFetchRE.FindStringSubmatch(l); m != nil {
			u := qrUIDRE.FindStringSubmatch(m[1])
			ms := qrModSeqRE.FindStringSubmatch(m[1])
			fl := qrFlagsRE.FindStringSubmatch(m[1])
			if u == nil || ms == nil || fl == nil {
				t.Fatalf("%s: FETCH without UID, MODSEQ or FLAGS: %q", cmd, l)
			}
			uid, _ := strconv.ParseUint(u[1], 10, 32)
			modseq, _ := strconv.ParseUint(ms[1], 10, 64)
			if _, dup := r.fetch[uint32(uid)]; dup {
				t.Fatalf("%s: UID %d reported twice: %q", cmd, uid, lines)
			}
			r.fetch[uint32(uid)] = qrFetch{modseq: modseq, flags: normFlags(fl[1])}
			continue
		}
		if rest, ok := strings.CutPrefix(l, "* VANISHED (EARLIER) "); ok {
			r.earlier = append(r.earlier, parseUIDSet(t, rest)...)
			continue
		}
		if strings.HasPrefix(l, "* VANISHED ") {
			t.Fatalf("%s: VANISHED without (EARLIER) in a SELECT: %q", cmd, lines)
		}
		if m := qrUVRE.FindStringSubmatch(l); m != nil {
			v, _ := strconv.ParseUint(m[1], 10, 32)
			r.uidvalidity = uint32(v)
		}
		if m := qrHighestRE.FindStringSubmatch(l); m != nil {
			r.highest, _ = strconv.ParseUint(m[1], 10, 64)
		}
		if m := qrExistsRE.FindStringSubmatch(l); m != nil {
			r.exists, _ = strconv.Atoi(m[1])
		}
	}
	if r.uidvalidity == 0 || r.highest == 0 || r.exists < 0 {
		t.Fatalf("%s: no UIDVALIDITY, HIGHESTMODSEQ or EXISTS: %q", cmd, lines)
	}
	slices.Sort(r.earlier)
	return r
}

func normFlags(s string) []string {
	out := []string{}
	for _, f := range strings.Fields(s) {
		if !strings.EqualFold(f, `\Recent`) {
			out = append(out, strings.ToLower(f))
		}
	}
	slices.Sort(out)
	return out
}

func parseUIDSet(t *testing.T, s string) []uint32 {
	t.Helper()
	var out []uint32
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, err1 := strconv.ParseUint(lo, 10, 32)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.ParseUint(hi, 10, 32)
		}
		if err1 != nil || err2 != nil || a == 0 || b == 0 {
			t.Fatalf("bad UID set %q", s)
		}
		if a > b {
			a, b = b, a
		}
		for u := a; u <= b; u++ {
			out = append(out, uint32(u))
		}
	}
	return out
}

// wantResync checks a QRESYNC resync against what changed since the
// client's mod-sequence known: exactly the vanished UIDs in VANISHED
// (EARLIER), exactly the changed UIDs in FETCH with their flags and a
// mod-sequence above known, and a HIGHESTMODSEQ above known.
func wantResync(t *testing.T, what string, r qrSelect, known uint64, vanished []uint32, changed map[uint32][]string) {
	t.Helper()
	slices.Sort(vanished)
	if !slices.Equal(r.earlier, vanished) {
		t.Errorf("%s: VANISHED (EARLIER) %v; want %v\n%q", what, r.earlier, vanished, r.lines)
	}
	for uid, f := range r.fetch {
		want, ok := changed[uid]
		switch {
		case !ok:
			t.Errorf("%s: FETCH of the unchanged UID %d\n%q", what, uid, r.lines)
		case f.modseq <= known:
			t.Errorf("%s: UID %d with MODSEQ %d, not above the known %d\n%q", what, uid, f.modseq, known, r.lines)
		case !slices.Equal(f.flags, normFlags(strings.Join(want, " "))):
			t.Errorf("%s: UID %d with flags %v; want %v", what, uid, f.flags, want)
		}
	}
	for uid := range changed {
		if _, ok := r.fetch[uid]; !ok {
			t.Errorf("%s: no FETCH of the changed UID %d\n%q", what, uid, r.lines)
		}
	}
	if r.highest <= known {
		t.Errorf("%s: HIGHESTMODSEQ %d, not above the known %d", what, r.highest, known)
	}
}

// startIdle starts IDLE on c.
func startIdle(t *testing.T, c *imaptest.Client) {
	t.Helper()
	c.Send("i IDLE")
	if l := c.ReadLine(); !strings.HasPrefix(l, "+") {
		t.Fatalf("IDLE: %q", l)
	}
}

// waitExists reads an IDLE client's responses until "* n EXISTS"; a BYE
// or the end of the connection fails the test.
func waitExists(t *testing.T, what string, c *imaptest.Client, n int) {
	t.Helper()
	want := fmt.Sprintf("* %d EXISTS", n)
	for {
		l, err := c.TryReadLine(10 * time.Second)
		if err != nil {
			t.Fatalf("%s: %v while waiting for %q", what, err, want)
		}
		if l == want {
			return
		}
		if strings.HasPrefix(l, "* BYE") || qrExistsRE.MatchString(l) {
			t.Fatalf("%s: %q while waiting for %q", what, l, want)
		}
	}
}

// outside is a direct connection to Dovecot with INBOX selected, for
// changes the proxy learns of only through its watcher.
type outside struct {
	t *testing.T
	c *imaptest.Client
}

func direct(t *testing.T, dc *dovecottest.Server) *outside {
	t.Helper()
	c := imaptest.Login(t, dc.Addr, "alice", "alicepass")
	c.MustOK("SELECT INBOX")
	return &outside{t: t, c: c}
}

var appendUIDRE = regexp.MustCompile(`\[APPENDUID \d+ (\d+)\]`)

// add appends a message and returns its UID.
func (o *outside) add(subject string) uint32 {
	o.t.Helper()
	msg := "From: bob@example.com\r\nSubject: " + subject + "\r\n\r\nhello\r\n"
	lines := o.c.MustOK(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(msg), msg))
	m := appendUIDRE.FindStringSubmatch(imaptest.Tagged(lines))
	if m == nil {
		o.t.Fatalf("APPEND without APPENDUID: %q", lines)
	}
	uid, _ := strconv.ParseUint(m[1], 10, 32)
	return uint32(uid)
}

func (o *outside) flag(uid uint32, flag string) {
	o.t.Helper()
	o.c.MustOK(fmt.Sprintf("UID STORE %d +FLAGS (%s)", uid, flag))
}

func (o *outside) expunge(uid uint32) {
	o.t.Helper()
	o.c.MustOK(fmt.Sprintf("UID STORE %d +FLAGS (\\Deleted)", uid))
	o.c.MustOK(fmt.Sprintf("UID EXPUNGE %d", uid))
}

// expectClosed reads c until its connection ends: only a BYE
// [UNAVAILABLE] may come before, never a change.
func expectClosed(t *testing.T, what string, c *imaptest.Client, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		l, err := c.TryReadLine(time.Until(deadline))
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return
			}
			t.Fatalf("%s: %v (%q); want the connection closed within %v", what, err, l, within)
		}
		if !strings.HasPrefix(l, "* BYE [UNAVAILABLE]") {
			t.Fatalf("%s: told %q; want only a BYE [UNAVAILABLE] and the end of the connection", what, l)
		}
	}
}

// others returns the names of the nodes but the one named skip, sorted.
func (c *lpCluster) others(skip string) []string {
	var out []string
	for name := range c.nodes {
		if name != skip {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// TestClusterKillOwner: the owner of alice's account dies by SIGKILL
// while QRESYNC clients of alice IDLE through every node; changes are made
// on Dovecot meanwhile. Every client's connection ends without a word of
// the changes; each comes back through a surviving node, retrying on NO
// [UNAVAILABLE], and is served again within the TTL plus the reconcile,
// its resync reporting exactly the changes. The killed node restarts
// under its name without taking alice back: logins through it are
// forwarded to the new owner, whose sessions go on undisturbed.
func TestClusterKillOwner(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	var seed []uint32
	for i := range 5 {
		seed = append(seed, dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte(fmt.Sprintf("Subject: seed %d\r\n\r\nhello\r\n", i))))
	}
	c := startLPCluster(t, dc, "n1", "n2", "n3")

	type idler struct {
		c     *imaptest.Client
		via   string
		known uint64
	}
	var idlers []idler
	var uv uint32
	for _, name := range []string{"n1", "n2", "n3"} {
		for range 2 {
			cl, _ := loginAlice(t, c.nodes[name].addr, 10*time.Second)
			r := qresyncSelect(t, cl, 0, 0)
			if r.exists != len(seed) {
				t.Fatalf("SELECT through %s: %d EXISTS; want %d", name, r.exists, len(seed))
			}
			uv = r.uidvalidity
			startIdle(t, cl)
			idlers = append(idlers, idler{cl, name, r.highest})
		}
	}
	owner := c.liveOwner("alice")
	_, epoch, _ := c.owner("alice")
	t.Logf("alice is owned by %s (epoch %d)", owner.name, epoch)

	owner.kill(t)
	killed := time.Now()
	for i, id := range idlers {
		expectClosed(t, fmt.Sprintf("client %d through %s after the owner's SIGKILL", i, id.via), id.c, 10*time.Second)
	}

	o := direct(t, dc)
	added := []uint32{o.add("while the owner is dead 1"), o.add("while the owner is dead 2")}
	o.flag(seed[0], `\Answered`)
	o.expunge(seed[1])
	changed := map[uint32][]string{seed[0]: {`\Answered`}, added[0]: nil, added[1]: nil}

	survivors := c.others(owner.name)
	var keep *imaptest.Client
	var keepN int
	for i, id := range idlers {
		via := id.via
		if via == owner.name {
			via = survivors[i%len(survivors)]
		}
		cl, waited := loginAlice(t, c.nodes[via].addr, 4*clusterTTL+5*time.Second)
		since := time.Since(killed)
		r := qresyncSelect(t, cl, uv, id.known)
		t.Logf("client %d (was through %s) served again through %s %v after the kill (its own retries: %v); resync %d lines",
			i, id.via, via, since.Round(time.Millisecond), waited.Round(time.Millisecond), len(r.lines))
		if i == 0 && since > clusterTTL+3*time.Second {
			t.Errorf("first client served again %v after the kill; want within the TTL %v plus the reconcile", since, clusterTTL)
		}
		wantResync(t, fmt.Sprintf("client %d through %s", i, via), r, id.known, []uint32{seed[1]}, changed)
		if i == len(idlers)-1 {
			keep, keepN = cl, r.exists
			startIdle(t, keep)
		} else {
			cl.MustOK("LOGOUT")
		}
	}
	newOwner := c.liveOwner("alice")
	_, newEpoch, _ := c.owner("alice")
	if newOwner.name == owner.name || newEpoch <= epoch {
		t.Fatalf("after the kill of %s (epoch %d): owner %s, epoch %d", owner.name, epoch, newOwner.name, newEpoch)
	}
	newOwner.p.waitFor(t, newOwner.p.stderr, 0, `msg="cluster account taken over" (?:node=\S+ )*account=\S+ from=`+owner.name+` `)

	// The killed node comes back under its name.
	back := c.start(owner.name)
	if name, e, live := c.owner("alice"); name != newOwner.name || e != newEpoch || !live {
		t.Fatalf("after %s restarted: alice owned by %s (epoch %d, live %v); want %s, epoch %d", owner.name, name, e, live, newOwner.name, newEpoch)
	}
	known := c.highestStored("alice")
	later := o.add("after the restart")
	o.flag(added[0], `\Seen`)
	keepN++
	waitExists(t, "the idle client of the new owner", keep, keepN)
	cl, _ := loginAlice(t, back.addr, 10*time.Second)
	back.p.waitFor(t, back.p.stderr, 0, `msg="logged in; session forwarded to the owning node"`)
	r := qresyncSelect(t, cl, uv, known)
	wantResync(t, "through the restarted node", r, known, nil, map[uint32][]string{later: nil, added[0]: {`\Seen`}})
	if name, e, _ := c.owner("alice"); name != newOwner.name || e != newEpoch {
		t.Fatalf("after a login through the restarted %s: alice owned by %s (epoch %d); want %s, epoch %d", owner.name, name, e, newOwner.name, newEpoch)
	}
	keep.Send("DONE")
	keep.ReadUntilTagged("i")
	keep.MustOK("NOOP")
}

// TestClusterPausedOwner: the owner A of alice's account is stopped
// (SIGSTOP) past its lease; B takes the account over and a change is made
// through B; then A resumes (SIGCONT). A's own client, IDLE in a session
// served by A, gets BYE [UNAVAILABLE] or the end of its connection, never
// a change; A logs that it fenced itself and writes nothing: the database
// holds exactly what B left. A resync through A (now forwarding) is
// exact.
func TestClusterPausedOwner(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	var seed []uint32
	for i := range 3 {
		seed = append(seed, dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte(fmt.Sprintf("Subject: seed %d\r\n\r\nhello\r\n", i))))
	}
	c := startLPCluster(t, dc, "n1", "n2")
	first, _ := loginAlice(t, c.nodes["n1"].addr, 10*time.Second)
	first.MustOK("LOGOUT")
	a := c.liveOwner("alice")
	b := c.nodes[c.others(a.name)[0]]
	_, epochA, _ := c.owner("alice")

	// A client of A itself: its session is served by A.
	ca, _ := loginAlice(t, a.addr, 10*time.Second)
	r := qresyncSelect(t, ca, 0, 0)
	uv, known := r.uidvalidity, r.highest
	startIdle(t, ca)

	a.p.signal(t, syscall.SIGSTOP)
	stopped := time.Now()
	t.Cleanup(func() { a.p.cmd.Process.Signal(syscall.SIGCONT) })
	waitCond(t, 2*clusterTTL+5*time.Second, "the paused node's lease to expire", func() bool { return c.leaseExpired(a.name) })
	// Once B has renewed since, it knows A is not live: it does not offer
	// alice to A (a stopped node whose link handshake would time out).
	c.waitRenewal(b.name)

	cb, waited := loginAlice(t, b.addr, 2*clusterTTL+5*time.Second)
	t.Logf("%s stopped: a login through %s served %v after the stop (its own retries %v)", a.name, b.name, time.Since(stopped).Round(time.Millisecond), waited.Round(time.Millisecond))
	b.p.waitFor(t, b.p.stderr, 0, `msg="cluster account taken over" (?:node=\S+ )*account=\S+ from=`+a.name+` `)
	if name, e, _ := c.owner("alice"); name != b.name || e <= epochA {
		t.Fatalf("after the takeover: alice owned by %s, epoch %d; want %s above epoch %d", name, e, b.name, epochA)
	}
	if rb := qresyncSelect(t, cb, uv, known); len(rb.earlier) != 0 || len(rb.fetch) != 0 || rb.highest != known {
		t.Fatalf("resync through %s after the takeover, nothing changed: %q; want no VANISHED, no FETCH, HIGHESTMODSEQ %d", b.name, rb.lines, known)
	}
	lines := cb.MustOK(fmt.Sprintf("UID STORE %d +FLAGS (\\Flagged)", seed[0]))
	if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "UID "+strconv.Itoa(int(seed[0]))) }) {
		t.Fatalf("STORE through %s: %q", b.name, lines)
	}
	msg := "Subject: through B\r\n\r\nhello\r\n"
	lines = cb.MustOK(fmt.Sprintf("APPEND INBOX {%d}", len(msg)), msg)
	m := appendUIDRE.FindStringSubmatch(imaptest.Tagged(lines))
	if m == nil {
		t.Fatalf("APPEND through %s without APPENDUID: %q", b.name, lines)
	}
	u, _ := strconv.ParseUint(m[1], 10, 32)
	newUID := uint32(u)
	if !slices.Contains(lines, fmt.Sprintf("* %d EXISTS", len(seed)+1)) {
		// Reported once stored: wait for it.
		startIdle(t, cb)
		waitExists(t, "the client of "+b.name, cb, len(seed)+1)
		cb.Send("DONE")
		cb.ReadUntilTagged("i")
	}
	cb.MustOK("NOOP")
	before := c.stateSnapshot("alice")
	highestB := c.highestStored("alice")

	mark := a.p.stderr.Len()
	a.p.signal(t, syscall.SIGCONT)
	expectClosed(t, "the client served by the paused "+a.name, ca, 2*clusterTTL+5*time.Second)
	a.p.waitFor(t, a.p.stderr, mark, `level=ERROR msg="cluster node fenced: ending its sessions" node=`+a.name)
	// A's moves after waking: it fenced itself, evicted, renewed its
	// lease and serves again (as a forwarding node for alice).
	a.p.waitFor(t, a.p.stderr, mark, `msg="cluster lease renewed: node serving again"`)
	if after := c.stateSnapshot("alice"); after != before {
		t.Errorf("the database changed after %s woke:\nbefore %s\nafter  %s", a.name, before, after)
	}
	if name, _, live := c.owner("alice"); name != b.name || !live {
		t.Errorf("after %s woke: alice owned by %s (live %v); want %s", a.name, name, live, b.name)
	}

	cl, _ := loginAlice(t, a.addr, 2*clusterTTL+5*time.Second)
	a.p.waitFor(t, a.p.stderr, mark, `msg="logged in; session forwarded to the owning node"`)
	r = qresyncSelect(t, cl, uv, known)
	wantResync(t, "through the woken "+a.name, r, known, nil, map[uint32][]string{seed[0]: {`\Flagged`}, newUID: nil})
	if r.highest != highestB {
		t.Errorf("HIGHESTMODSEQ %d through %s; %s stored %d", r.highest, a.name, b.name, highestB)
	}
	if after := c.stateSnapshot("alice"); after != before {
		t.Errorf("the database changed after a resync through %s:\nbefore %s\nafter  %s", a.name, before, after)
	}
}

// clusterStatus runs lemonproxy cluster status and returns its rows by
// node name (the fields of each line).
func clusterStatus(t *testing.T, db string) map[string][]string {
	t.Helper()
	code, stdout, stderr := runLP(t, "cluster", "status", "-cluster-db", db)
	if code != 0 || stderr != "" {
		t.Fatalf("cluster status: exit %d, stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) == 0 || !regexp.MustCompile(`^NODE +ADDR +STATE +LEASE AGE +LEASE LEFT +ACCOUNTS +SESSIONS +FORWARDED$`).MatchString(lines[0]) {
		t.Fatalf("cluster status: header %q", lines)
	}
	rows := map[string][]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 8 {
			t.Fatalf("cluster status: line %q", l)
		}
		rows[f[0]] = f
	}
	return rows
}

// TestClusterStatusDrain: lemonproxy cluster status and drain as an
// operator runs them against two running nodes.
func TestClusterStatusDrain(t *testing.T) {
	dc := dovecottest.Start(t, dovecottest.Legacy)
	// Accounts land on their preferred node, by hashing names that
	// include Dovecot's random port: enough users that some land on each
	// node (all of 26 on one node: odds of 1 in 2^25).
	candidates := []string{"alice", "bob"}
	more := map[string]string{}
	for i := range 24 {
		u := fmt.Sprintf("user%d", i)
		more[u] = "pass" + u
		candidates = append(candidates, u)
	}
	dc.AddUsers(t, more)
	c := startLPCluster(t, dc, "n1", "n2")
	// n1 learns of n2 at a renewal: only then does it send accounts there.
	c.waitRenewal("n1")
	pass := func(u string) string {
		if u == "alice" || u == "bob" {
			return u + "pass"
		}
		return "pass" + u
	}
	// Every account logged in through n1: each lands on its preferred
	// node (rendezvous hashing), so both nodes own some.
	type sess struct {
		c    *imaptest.Client
		user string
	}
	var sessions []sess
	var users []string
	owned := map[string]int{}
	ownerOf := map[string]string{}
	for _, u := range candidates {
		if owned["n1"] >= 2 && owned["n2"] >= 2 {
			break
		}
		users = append(users, u)
		cl := imaptest.Login(t, c.nodes["n1"].addr, u, pass(u))
		cl.MustOK("SELECT INBOX")
		sessions = append(sessions, sess{cl, u})
		name, _, live := c.owner(u)
		if !live {
			t.Fatalf("%s: owner %q not live", u, name)
		}
		owned[name]++
		ownerOf[u] = name
	}
	t.Logf("accounts owned: %v", owned)
	if owned["n1"] == 0 || owned["n2"] == 0 {
		t.Fatalf("accounts owned %v: want some on each node", owned)
	}
	// Sessions and forwarded counts are reported at each renewal.
	var rows map[string][]string
	waitCond(t, 3*clusterTTL, "cluster status to show every session", func() bool {
		rows = clusterStatus(t, c.db)
		return len(rows) == 2 && rows["n1"][6] == strconv.Itoa(owned["n1"]) && rows["n2"][6] == strconv.Itoa(owned["n2"]) &&
			rows["n1"][7] == strconv.Itoa(owned["n2"]) && rows["n2"][7] == "0"
	})
	for _, name := range []string{"n1", "n2"} {
		r := rows[name]
		if r[1] != c.nodes[name].link || r[2] != "live" || r[5] != strconv.Itoa(owned[name]) {
			t.Errorf("cluster status for %s: %q; want addr %s, live, %d accounts", name, r, c.nodes[name].link, owned[name])
		}
	}

	// Drain n2: its sessions (all forwarded from n1) get BYE and the
	// accounts move to n1.
	code, stdout, stderr := runLP(t, "cluster", "drain", "-cluster-db", c.db, "-node", "n2")
	if code != 0 || stderr != "" || !regexp.MustCompile(`^node n2 drained in \S+: it owns no account\n$`).MatchString(stdout) {
		t.Fatalf("cluster drain: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	var n int
	if err := c.query(`SELECT count(*) FROM lp_owners WHERE node = 'n2'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("after drain: n2 owns %d accounts (%v)", n, err)
	}
	for _, s := range sessions {
		if ownerOf[s.user] != "n2" {
			s.c.MustOK("NOOP") // n1's own sessions are untouched
			continue
		}
		l, err := s.c.TryReadLine(10 * time.Second)
		if err != nil || !strings.HasPrefix(l, "* BYE [UNAVAILABLE]") {
			t.Errorf("session of %s on the drained n2: %q, %v; want * BYE [UNAVAILABLE]", s.user, l, err)
		}
		expectClosed(t, "session of "+s.user+" on the drained n2", s.c, 10*time.Second)
	}
	// Logins through the draining node are forwarded to n1.
	mark := c.nodes["n2"].p.stderr.Len()
	for _, u := range users {
		if ownerOf[u] != "n2" {
			continue
		}
		cl := imaptest.Login(t, c.nodes["n2"].addr, u, pass(u))
		cl.MustOK("SELECT INBOX")
		if name, _, _ := c.owner(u); name != "n1" {
			t.Errorf("%s logged in through the drained n2: owned by %q; want n1", u, name)
		}
		cl.MustOK("LOGOUT")
	}
	c.nodes["n2"].p.waitFor(t, c.nodes["n2"].p.stderr, mark, `msg="logged in; session forwarded to the owning node"`)
	rows = clusterStatus(t, c.db)
	if r := rows["n2"]; r[2] != "draining" || r[5] != "0" {
		t.Errorf("cluster status after drain, n2: %q; want draining with 0 accounts", r)
	}
	if r := rows["n1"]; r[2] != "live" || r[5] != strconv.Itoa(len(users)) {
		t.Errorf("cluster status after drain, n1: %q; want live with %d accounts", r, len(users))
	}

	// Operator mistakes.
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"cluster", "drain", "-cluster-db", c.db}, 2, "lemonproxy cluster drain: missing or extra arguments\n\n" + clusterUsage},
		{[]string{"cluster", "status"}, 2, "lemonproxy cluster status: missing or extra arguments\n\n" + clusterUsage},
		{[]string{"cluster", "drain", "-cluster-db", c.db, "-node", "nosuch"}, 1, "lemonproxy cluster drain: cluster: drain: no node named \"nosuch\"\n"},
		{[]string{"cluster", "status", "-cluster-db", "postgres://127.0.0.1:1/none?connect_timeout=5"}, 1, "lemonproxy cluster status: "},
		{[]string{"cluster", "status", "-cluster-db", "not a url"}, 1, "lemonproxy cluster status: cluster: database URL: "},
	} {
		code, stdout, stderr := runLP(t, tc.args...)
		if code != tc.code || stdout != "" || !strings.HasPrefix(stderr, tc.stderr) || strings.Count(stderr, "\n") == 0 {
			t.Errorf("lemonproxy %q: exit %d, stdout %q, stderr %q; want %d and %q", tc.args, code, stdout, stderr, tc.code, tc.stderr)
		}
	}
}

// TestClusterHAProxy: three nodes behind HAProxy (mode tcp, round robin,
// no stickiness). A phone reconnects six times, landing on each node in
// turn, and each QRESYNC resync after outside changes is exactly the
// changes; an outside APPEND reaches IDLE sessions opened through
// HAProxy.
func TestClusterHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv(dovecottest.RequireEnv) == "1" {
			t.Fatalf("haproxy not found (Debian's haproxy package): %v", err)
		}
		t.Skipf("haproxy not found (Debian's haproxy package): %v", err)
	}
	dc := dovecottest.Start(t, dovecottest.Legacy)
	var uids []uint32
	for i := range 4 {
		uids = append(uids, dc.Append(t, "alice", "alicepass", "INBOX", nil, []byte(fmt.Sprintf("Subject: seed %d\r\n\r\nhello\r\n", i))))
	}
	c := startLPCluster(t, dc, "n1", "n2", "n3")
	lb := startHAProxy(t, bin, c.nodes["n1"].addr, c.nodes["n2"].addr, c.nodes["n3"].addr)

	o := direct(t, dc)
	var uv uint32
	var known uint64
	landed := map[string]int{}
	flags := []string{`\Seen`, `\Answered`, `\Flagged`, `$Forwarded`, `\Draft`, `$Junk`}
	for i := range 6 {
		var vanished []uint32
		changed := map[uint32][]string{}
		if i > 0 {
			// A few outside changes: a new message, a flag, an expunge.
			nu := o.add(fmt.Sprintf("before reconnect %d", i))
			changed[nu] = nil
			o.flag(uids[0], flags[i])
			changed[uids[0]] = flags[1 : i+1]
			if i%2 == 0 {
				gone := uids[len(uids)-1]
				o.expunge(gone)
				vanished = append(vanished, gone)
				uids = uids[:len(uids)-1]
			}
			uids = append(uids, nu)
		}
		before := map[string]int{}
		for name, n := range c.nodes {
			before[name] = n.logins()
		}
		cl, _ := loginAlice(t, lb, 10*time.Second)
		// The node that took the connection logs the login (after its
		// answer, when it forwards it).
		var via string
		waitCond(t, 5*time.Second, fmt.Sprintf("reconnect %d: a node to log the login", i), func() bool {
			var grew []string
			for name, n := range c.nodes {
				if n.logins() > before[name] {
					grew = append(grew, name)
				}
			}
			if len(grew) > 1 {
				t.Fatalf("reconnect %d: one login logged by %v", i, grew)
			}
			if len(grew) == 1 {
				via = grew[0]
			}
			return via != ""
		})
		landed[via]++
		r := qresyncSelect(t, cl, uv, known)
		if i == 0 {
			uv = r.uidvalidity
		} else {
			wantResync(t, fmt.Sprintf("reconnect %d through %s", i, via), r, known, vanished, changed)
		}
		if r.exists != len(uids) {
			t.Errorf("reconnect %d through %s: %d EXISTS; want %d", i, via, r.exists, len(uids))
		}
		t.Logf("reconnect %d landed on %s: %d lines", i, via, len(r.lines))
		known = r.highest
		cl.MustOK("LOGOUT")
	}
	if landed["n1"] != 2 || landed["n2"] != 2 || landed["n3"] != 2 {
		t.Errorf("six reconnects landed %v; want each node twice (round robin)", landed)
	}

	var idlers []*imaptest.Client
	for range 3 {
		cl, _ := loginAlice(t, lb, 10*time.Second)
		r := qresyncSelect(t, cl, 0, 0)
		if r.exists != len(uids) {
			t.Fatalf("SELECT through HAProxy: %d EXISTS; want %d", r.exists, len(uids))
		}
		startIdle(t, cl)
		idlers = append(idlers, cl)
	}
	o.add("to every idler")
	for i, cl := range idlers {
		waitExists(t, fmt.Sprintf("idle session %d through HAProxy", i), cl, len(uids)+1)
	}
}

// startHAProxy runs haproxy in the foreground in front of servers and
// returns the address clients dial.
func startHAProxy(t *testing.T, bin string, servers ...string) string {
	t.Helper()
	dir := t.TempDir()
	addr := freePort(t)
	var b strings.Builder
	fmt.Fprintf(&b, "global\n    maxconn 200\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n\n")
	fmt.Fprintf(&b, "frontend imap\n    bind %s\n    default_backend nodes\n\nbackend nodes\n    balance roundrobin\n", addr)
	for i, s := range servers {
		fmt.Fprintf(&b, "    server n%d %s\n", i+1, s)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", cfg, "-db")
	out := &output{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("haproxy:\n%s", out)
		}
	})
	// Ready once it accepts connections (it exits if it cannot bind).
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			t.Fatalf("haproxy exited:\n%s\nconfig:\n%s", out, b.String())
		default:
		}
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			nc.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy does not listen on %s: %v\n%s", addr, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
