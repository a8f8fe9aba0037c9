package condstore_test

// BenchmarkResync measures issue 4's benchmark: a mailbox of 100,000
// messages, 10 flag changes and 5 expunges since the client's mod-sequence.
//
//	go test -run '^$' -bench Resync -benchtime 1x ./extensions/condstore/
//
// The "proxy" part runs the proxy (with its bbolt state under a temporary
// data directory) in front of go-imap's in-memory server; the "dovecot"
// part connects directly to a private Dovecot (Full profile: its own
// CONDSTORE/QRESYNC) with the same mailbox, written as a maildir, for
// comparison (on tmpfs where /dev/shm exists, as the in-memory server is
// in memory); it is skipped when Dovecot is not installed. The proxy part,
// which runs second, logs a table of both side by side. Each resync is
// measured benchReps times and the median reported. LEMON_RESYNC_MESSAGES=n
// changes the mailbox size (for a quick run).

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/hub"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
)

const (
	benchFlagChanges = 10
	benchExpunges    = 5
	// benchReps is how many times each resync is measured per b.N; the
	// median is reported.
	benchReps = 3
)

// median returns the sample with the median time.
func median(cs []resyncCost) resyncCost {
	s := slices.Clone(cs)
	slices.SortFunc(s, func(a, b resyncCost) int { return int(a.time - b.time) })
	return s[len(s)/2]
}

// benchMessages is the mailbox size: 100,000 unless LEMON_RESYNC_MESSAGES
// says otherwise.
func benchMessages(b *testing.B) int {
	n := 100_000
	if v := os.Getenv("LEMON_RESYNC_MESSAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 100 {
			b.Fatalf("LEMON_RESYNC_MESSAGES=%q: want a number of at least 100", v)
		}
	}
	return n
}

// resyncCost is what one way of resynchronising cost: bytes from the server
// to the client and the time from the first command sent to the last
// tagged response read.
type resyncCost struct {
	bytes int64
	time  time.Duration
}

// resyncFigures collects both parts' results for the table.
type resyncFigures struct {
	messages                int
	proxyRan, dovecotRan    bool
	fill                    time.Duration // memupstream appends
	firstSelect             time.Duration // SELECT with no saved state: watcher EXAMINE + UID FETCH 1:* + reconcile + save
	qresync, changedSince   resyncCost
	plainSelect             resyncCost // SELECT through the proxy, no resync
	upstreamSelect          resyncCost // SELECT directly on the upstream
	upstreamFull            resyncCost // full resync directly on the upstream
	dcQResyncFirst          resyncCost // Dovecot's first QRESYNC after the changes
	full                    resyncCost
	stateBytes, stateFile   int64 // bbolt: tx.Size() and the file's size
	stateAlloc              int64 // the file's allocated blocks
	stateMessages           int
	restartSelect, boltLoad time.Duration
	qresyncAfterRestart     resyncCost
	dcWrite, dcIndex        time.Duration // maildir files written; Dovecot's first SELECT
	dcQResync, dcFull       resyncCost
	dcChangedSince          resyncCost
	dovecotSkipped          string
}

func BenchmarkResync(b *testing.B) {
	fig := &resyncFigures{messages: benchMessages(b)}
	b.Run("dovecot", func(b *testing.B) { benchResyncDovecot(b, fig) })
	b.Run("proxy", func(b *testing.B) {
		benchResyncProxy(b, fig)
		// Logged here: a leaf benchmark's log is shown without -v.
		fig.log(b)
	})
}

// benchFlags gives message i its initial flags: most mail is read, some is
// answered, a few are drafts or unread. None is \Flagged (the changes set
// it) or \Deleted.
func benchFlags(i int) []string {
	switch i % 8 {
	case 0:
		return nil
	case 1, 2:
		return []string{`\Answered`, `\Seen`}
	case 3:
		return []string{`\Draft`}
	}
	return []string{`\Seen`}
}

// benchChanged and benchGone are the UIDs changed and expunged after the
// client's mod-sequence: spread over the mailbox, disjoint.
func benchChanged(n int) []uint32 {
	var out []uint32
	for i := range benchFlagChanges {
		out = append(out, uint32(1+(i*n)/benchFlagChanges+7))
	}
	return out
}

func benchGone(n int) []uint32 {
	var out []uint32
	for i := range benchExpunges {
		out = append(out, uint32(1+(i*n)/benchExpunges+n/(2*benchExpunges)))
	}
	return out
}

func benchSet(uids []uint32) string {
	parts := make([]string, len(uids))
	for i, u := range uids {
		parts[i] = strconv.FormatUint(uint64(u), 10)
	}
	return strings.Join(parts, ",")
}

func benchProxyConfig(store statestore.Store) proxy.Config {
	return proxy.Config{
		Extensions: []proxy.Extension{idle.New(), condstore.New()},
		Hub:        hub.Config{Store: store, Timeout: 5 * time.Minute},
		Upstream:   imaptest.DefaultUpstream(),
	}
}

func benchResyncProxy(b *testing.B, fig *resyncFigures) {
	n := fig.messages
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { up.Close() })
	if err := up.AddUser(propUser, propPass); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	for i := range n {
		var flags []imap.Flag
		for _, f := range benchFlags(i) {
			flags = append(flags, imap.Flag(f))
		}
		msg := fmt.Appendf(nil, "Subject: message %d\r\nMessage-ID: <%d@bench>\r\n\r\nbody %d\r\n", i+1, i+1, i+1)
		if err := up.Append(propUser, "INBOX", flags, msg); err != nil {
			b.Fatal(err)
		}
	}
	fig.fill = time.Since(t0)

	dir := b.TempDir()
	store, err := statestore.OpenBolt(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	p := imaptest.StartProxy(b, up.Addr, benchProxyConfig(store))

	// The phone: selects with CONDSTORE, remembers HIGHESTMODSEQ, goes.
	phone := benchDial(b, p.Addr)
	phone.login()
	sel, _, d := phone.do("SELECT INBOX (CONDSTORE)", true)
	fig.firstSelect = d
	first := propParse(b, sel)
	if first.exists != n || !first.hasHighest {
		b.Fatalf("first SELECT: %d EXISTS (want %d), HIGHESTMODSEQ %v", first.exists, n, first.hasHighest)
	}
	h0, uidValidity := first.highest, first.uidValidity
	phone.close()

	// Another client keeps the mailbox watched meanwhile; the changes
	// are made on the upstream by a client the proxy does not see.
	keeper := benchDial(b, p.Addr)
	keeper.login()
	keeper.do("SELECT INBOX", false)
	benchChange(b, up.Addr, propUser, propPass, n)
	keeper.do("NOOP", false) // the watcher has seen every change

	check := func(what string, lines []string, wantExpunged bool) {
		b.Helper()
		r := propParse(b, lines)
		var fetched []uint32
		for _, f := range r.fetches {
			fetched = append(fetched, f.uid)
		}
		slices.Sort(fetched)
		if !slices.Equal(fetched, benchChanged(n)) || wantExpunged && !slices.Equal(r.vanishedEarlier, benchGone(n)) {
			b.Fatalf("%s: FETCH of %v, VANISHED (EARLIER) %v; want FETCH of %v, VANISHED %v", what, fetched, r.vanishedEarlier, benchChanged(n), benchGone(n))
		}
	}
	qresyncCmd := fmt.Sprintf("SELECT INBOX (QRESYNC (%d %d))", uidValidity, h0)
	var qr, cs, full, plain, direct, directFull []resyncCost
	b.ResetTimer()
	for range b.N * benchReps {
		// QRESYNC: ENABLE + SELECT, one round trip each.
		c := benchDial(b, p.Addr)
		c.login()
		_, n1, d1 := c.do("ENABLE QRESYNC", false)
		lines, n2, d2 := c.do(qresyncCmd, true)
		check("QRESYNC SELECT", lines, true)
		qr = append(qr, resyncCost{n1 + n2, d1 + d2})
		// CHANGEDSINCE on the selected mailbox.
		lines, n3, d3 := c.do(fmt.Sprintf("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)", h0), true)
		check("UID FETCH (CHANGEDSINCE VANISHED)", lines, true)
		cs = append(cs, resyncCost{n3, d3})
		c.close()

		// Full resync: SELECT and every message's flags.
		c = benchDial(b, p.Addr)
		c.login()
		_, n1, d1 = c.do("SELECT INBOX", false)
		_, n2, d2 = c.doCount("UID FETCH 1:* (FLAGS)", n-benchExpunges)
		plain = append(plain, resyncCost{n1, d1})
		full = append(full, resyncCost{n1 + n2, d1 + d2})
		c.close()

		// For scale: the upstream's own SELECT, which every SELECT
		// through the proxy waits for, and its own full resync.
		c = benchDial(b, up.Addr)
		c.login()
		_, n1, d1 = c.do("SELECT INBOX", false)
		_, n2, d2 = c.doCount("UID FETCH 1:* (FLAGS)", n-benchExpunges)
		direct = append(direct, resyncCost{n1, d1})
		directFull = append(directFull, resyncCost{n1 + n2, d1 + d2})
		c.close()
	}
	b.StopTimer()
	fig.qresync, fig.changedSince, fig.full = median(qr), median(cs), median(full)
	fig.plainSelect, fig.upstreamSelect, fig.upstreamFull = median(plain), median(direct), median(directFull)

	// The state on disk.
	fig.stateMessages = n - benchExpunges
	if fig.stateBytes, err = store.Size(); err != nil {
		b.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "state.db"))
	if err != nil {
		b.Fatal(err)
	}
	fig.stateFile = st.Size()
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		fig.stateAlloc = sys.Blocks * 512 // bbolt grows its file sparsely
	}

	// Restart: a new proxy on the same data directory. Its first SELECT
	// waits for the watcher to load the saved state and reconcile it with
	// a full UID FETCH 1:* (FLAGS) of the upstream.
	keeper.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Srv.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}
	store.Close()
	store, err = statestore.OpenBolt(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	t0 = time.Now()
	saved, err := store.Load(up.Addr + "\x00" + propUser + "\x00INBOX")
	fig.boltLoad = time.Since(t0)
	if err != nil || saved == nil || len(saved.Messages) != n-benchExpunges {
		b.Fatalf("loading the saved state: %v (%v)", err, saved != nil)
	}
	saved = nil
	p = imaptest.StartProxy(b, up.Addr, benchProxyConfig(store))
	c := benchDial(b, p.Addr)
	c.login()
	_, _, fig.restartSelect = c.do("SELECT INBOX", false)
	c.close()
	c = benchDial(b, p.Addr)
	c.login()
	_, n1, d1 := c.do("ENABLE QRESYNC", false)
	lines, n2, d2 := c.do(qresyncCmd, true)
	check("QRESYNC SELECT after the restart", lines, true)
	fig.qresyncAfterRestart = resyncCost{n1 + n2, d1 + d2}
	c.close()

	fig.proxyRan = true
	b.ReportMetric(float64(fig.qresync.bytes), "qresync-B")
	b.ReportMetric(ms(fig.qresync.time), "qresync-ms")
	b.ReportMetric(float64(fig.changedSince.bytes), "changedsince-B")
	b.ReportMetric(ms(fig.changedSince.time), "changedsince-ms")
	b.ReportMetric(float64(fig.full.bytes), "full-B")
	b.ReportMetric(ms(fig.full.time), "full-ms")
	b.ReportMetric(float64(fig.stateBytes)/float64(fig.stateMessages), "state-B/msg")
	b.ReportMetric(float64(fig.stateFile)/float64(fig.stateMessages), "statefile-B/msg")
	b.ReportMetric(float64(fig.stateAlloc)/float64(fig.stateMessages), "statealloc-B/msg")
	b.ReportMetric(ms(fig.firstSelect), "firstselect-ms")
	b.ReportMetric(ms(fig.restartSelect), "restart-select-ms")
	b.ReportMetric(ms(fig.plainSelect.time), "plainselect-ms")
	b.ReportMetric(ms(fig.upstreamFull.time), "upstreamfull-ms")
}

// benchChange makes the flag changes and expunges on the upstream itself.
func benchChange(b *testing.B, addr, user, pass string, n int) {
	d := benchDial(b, addr)
	d.login2(user, pass)
	d.do("SELECT INBOX", false)
	for _, u := range benchChanged(n) {
		d.do(fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Flagged)`, u), false)
	}
	set := benchSet(benchGone(n))
	d.do(`UID STORE `+set+` +FLAGS.SILENT (\Deleted)`, false)
	d.do("UID EXPUNGE "+set, false)
	d.close()
}

func benchResyncDovecot(b *testing.B, fig *resyncFigures) {
	n := fig.messages
	if _, err := os.Stat("/usr/sbin/dovecot"); err != nil {
		if _, err := exec.LookPath("dovecot"); err != nil && os.Getenv(dovecottest.RequireEnv) != "1" {
			fig.dovecotSkipped = "Dovecot not installed"
			b.Skip(fig.dovecotSkipped)
		}
	}
	dc := dovecottest.Start(b, dovecottest.Full)
	const user, pass = "alice", "alicepass"
	t0 := time.Now()
	benchWriteMaildir(b, filepath.Join(dc.Dir, "home"), user, n)
	fig.dcWrite = time.Since(t0)

	c := benchDial(b, dc.Addr)
	c.login2(user, pass)
	sel, _, d := c.do("SELECT INBOX (CONDSTORE)", true)
	fig.dcIndex = d
	first := propParse(b, sel)
	if first.exists != n || !first.hasHighest {
		b.Fatalf("Dovecot: first SELECT: %d EXISTS (want %d), HIGHESTMODSEQ %v:\n%q", first.exists, n, first.hasHighest, sel)
	}
	// Dovecot numbers the files in its own order; change and expunge
	// the messages with the same UIDs as in the proxy's part.
	h0, uidValidity := first.highest, first.uidValidity
	c.close()
	benchChange(b, dc.Addr, user, pass, n)

	var qr, cs, full []resyncCost
	b.ResetTimer()
	for range b.N * benchReps {
		c := benchDial(b, dc.Addr)
		c.login2(user, pass)
		_, n1, d1 := c.do("ENABLE QRESYNC", false)
		lines, n2, d2 := c.do(fmt.Sprintf("SELECT INBOX (QRESYNC (%d %d))", uidValidity, h0), true)
		r := propParse(b, lines)
		if len(r.fetches) != benchFlagChanges || !slices.Equal(r.vanishedEarlier, benchGone(n)) {
			b.Fatalf("Dovecot QRESYNC SELECT: %d FETCH, VANISHED (EARLIER) %v", len(r.fetches), r.vanishedEarlier)
		}
		qr = append(qr, resyncCost{n1 + n2, d1 + d2})
		_, n3, d3 := c.do(fmt.Sprintf("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)", h0), false)
		cs = append(cs, resyncCost{n3, d3})
		c.close()

		c = benchDial(b, dc.Addr)
		c.login2(user, pass)
		_, n1, d1 = c.do("SELECT INBOX", false)
		_, n2, d2 = c.doCount("UID FETCH 1:* (FLAGS)", n-benchExpunges)
		full = append(full, resyncCost{n1 + n2, d1 + d2})
		c.close()
	}
	b.StopTimer()
	fig.dcQResync, fig.dcChangedSince, fig.dcFull = median(qr), median(cs), median(full)
	fig.dcQResyncFirst = qr[0]
	fig.dovecotRan = true
	b.ReportMetric(float64(fig.dcQResync.bytes), "qresync-B")
	b.ReportMetric(ms(fig.dcQResync.time), "qresync-ms")
	b.ReportMetric(float64(fig.dcFull.bytes), "full-B")
	b.ReportMetric(ms(fig.dcFull.time), "full-ms")
	b.ReportMetric(ms(fig.dcIndex), "index-ms")
}

// benchWriteMaildir writes user's INBOX as a maildir of n messages under
// home, with the flags of benchFlags in the file names, owned like the
// home directory (Dovecot's mail user). Dovecot indexes it on the first
// SELECT, giving the files UIDs 1..n in name order.
func benchWriteMaildir(b *testing.B, home, user string, n int) {
	st, err := os.Stat(home)
	if err != nil {
		b.Fatal(err)
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	chown := func(p string) {
		if sys != nil && os.Geteuid() == 0 {
			if err := os.Lchown(p, int(sys.Uid), int(sys.Gid)); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(home, user), 0o700); err != nil {
		b.Fatal(err)
	}
	chown(filepath.Join(home, user))
	md := filepath.Join(home, user, "Maildir")
	// Creating 100,000 files costs minutes on some disks and a second on
	// tmpfs: the maildir (and the index Dovecot keeps in it) goes to
	// /dev/shm where there is one, behind a symbolic link.
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "lemonproxy-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(shm) })
		if err := os.Chmod(shm, 0o711); err != nil {
			b.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(shm, "Maildir"), md); err != nil {
			b.Fatal(err)
		}
		chown(md)
		md = filepath.Join(shm, "Maildir")
	}
	for _, d := range []string{md, filepath.Join(md, "cur"), filepath.Join(md, "new"), filepath.Join(md, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			b.Fatal(err)
		}
		chown(d)
	}
	letters := map[string]byte{`\Draft`: 'D', `\Flagged`: 'F', `\Answered`: 'R', `\Seen`: 'S'}
	base := time.Now().Add(-time.Duration(n) * time.Second).Unix()
	for i := range n {
		var fl []byte
		for _, f := range benchFlags(i) {
			fl = append(fl, letters[f])
		}
		slices.Sort(fl)
		msg := fmt.Sprintf("Subject: message %d\r\nMessage-ID: <%d@bench>\r\n\r\nbody %d\r\n", i+1, i+1, i+1)
		// Seconds, then a sequence number: name order is i's order.
		name := fmt.Sprintf("%d.M%06dP1.bench,S=%d,W=%d:2,%s", base+int64(i), i, len(msg), len(msg), fl)
		p := filepath.Join(md, "cur", name)
		if err := os.WriteFile(p, []byte(msg), 0o600); err != nil {
			b.Fatal(err)
		}
		chown(p)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// log prints the table (9 lines: the testing package cuts a benchmark's
// log after 10 unless -v).
func (f *resyncFigures) log(b *testing.B) {
	var sb strings.Builder
	row := func(name, proxy, dovecot string) {
		sb.WriteString(strings.TrimRight(fmt.Sprintf("%-48s  %-32s  %s", name, proxy, dovecot), " ") + "\n")
	}
	cost := func(ran bool, c resyncCost) string {
		if !ran {
			return "-"
		}
		return fmt.Sprintf("%d B in %.1f ms", c.bytes, ms(c.time))
	}
	dcHead := "Dovecot direct (Full)"
	if !f.dovecotRan {
		dcHead += ": " + f.dovecotSkipped
	}
	row(fmt.Sprintf("%d msgs, %d changed + %d expunged since m", f.messages, benchFlagChanges, benchExpunges), "proxy (memupstream)", dcHead)
	row("ENABLE QRESYNC + SELECT (QRESYNC (uv m))", cost(f.proxyRan, f.qresync),
		cost(f.dovecotRan, f.dcQResync)+fmt.Sprintf(" (first: %.1f ms)", ms(f.dcQResyncFirst.time)))
	row("UID FETCH 1:* (FLAGS) (CHANGEDSINCE m VANISHED)", cost(f.proxyRan, f.changedSince), cost(f.dovecotRan, f.dcChangedSince))
	row("full resync: SELECT + UID FETCH 1:* (FLAGS)", cost(f.proxyRan, f.full), cost(f.dovecotRan, f.dcFull))
	row("  the same on memupstream directly", cost(f.proxyRan, f.upstreamFull), "")
	row("plain SELECT (on memupstream directly)", fmt.Sprintf("%.1f ms (%.1f ms)", ms(f.plainSelect.time), ms(f.upstreamSelect.time)), "")
	dcFirst := "-"
	if f.dovecotRan {
		dcFirst = fmt.Sprintf("%.0f ms indexing (maildir written in %.0f ms)", ms(f.dcIndex), ms(f.dcWrite))
	}
	row("first SELECT of the mailbox", fmt.Sprintf("%.0f ms (memupstream fill %.0f ms)", ms(f.firstSelect), ms(f.fill)), dcFirst)
	per := func(n int64) float64 { return float64(n) / float64(f.stateMessages) }
	row("state on disk per message (bbolt)", fmt.Sprintf("%.1f B used, file %.1f B, allocated %.1f B (%d messages)", per(f.stateBytes), per(f.stateFile), per(f.stateAlloc), f.stateMessages), "")
	row("restart: SELECT (load + reconcile); QRESYNC", fmt.Sprintf("%.0f ms (bbolt Load %.0f ms); %s", ms(f.restartSelect), ms(f.boltLoad), cost(true, f.qresyncAfterRestart)), "")
	b.Log(strings.TrimRight(sb.String(), "\n"))
}

// benchClient is a line client that counts the bytes it reads.
type benchClient struct {
	tb  testing.TB
	nc  net.Conn
	r   *bufio.Reader
	seq int
}

func benchDial(tb testing.TB, addr string) *benchClient {
	tb.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	c := &benchClient{tb: tb, nc: nc, r: bufio.NewReaderSize(nc, 64<<10)}
	nc.SetReadDeadline(time.Now().Add(time.Minute))
	if g, err := c.r.ReadString('\n'); err != nil || !strings.HasPrefix(g, "* OK") {
		tb.Fatalf("greeting %q: %v", g, err)
	}
	return c
}

func (c *benchClient) login()                   { c.login2(propUser, propPass) }
func (c *benchClient) login2(user, pass string) { c.do("LOGIN "+user+" "+pass, false) }

func (c *benchClient) close() {
	c.do("LOGOUT", false)
	c.nc.Close()
}

// do sends a command and reads its responses up to the tagged one, which
// must be OK (BYE is accepted for LOGOUT). It returns the lines (when
// keep), the bytes read and the time taken.
func (c *benchClient) do(cmd string, keep bool) (lines []string, n int64, d time.Duration) {
	c.tb.Helper()
	c.seq++
	tag := fmt.Sprintf("b%d", c.seq)
	c.nc.SetDeadline(time.Now().Add(5 * time.Minute))
	start := time.Now()
	if _, err := c.nc.Write([]byte(tag + " " + cmd + "\r\n")); err != nil {
		c.tb.Fatalf("%s: %v", cmd, err)
	}
	for {
		l, err := c.r.ReadString('\n')
		n += int64(len(l))
		if err != nil {
			c.tb.Fatalf("%s: %v after %d bytes", cmd, err, n)
		}
		l = strings.TrimRight(l, "\r\n")
		if strings.HasSuffix(l, "}") {
			c.tb.Fatalf("%s: unexpected literal in %q", cmd, l)
		}
		if rest, ok := strings.CutPrefix(l, tag+" "); ok {
			d = time.Since(start)
			if !strings.HasPrefix(rest, "OK") {
				c.tb.Fatalf("%s: %s", cmd, l)
			}
			if keep {
				lines = append(lines, l)
			}
			return lines, n, d
		}
		if keep {
			lines = append(lines, l)
		}
	}
}

// doCount is do for a command answered with many FETCH responses: it
// counts them instead of keeping them and checks there are want.
func (c *benchClient) doCount(cmd string, want int) (int, int64, time.Duration) {
	c.tb.Helper()
	c.seq++
	tag := fmt.Sprintf("b%d", c.seq)
	c.nc.SetDeadline(time.Now().Add(5 * time.Minute))
	start := time.Now()
	if _, err := c.nc.Write([]byte(tag + " " + cmd + "\r\n")); err != nil {
		c.tb.Fatalf("%s: %v", cmd, err)
	}
	var n int64
	fetches := 0
	for {
		l, err := c.r.ReadSlice('\n')
		n += int64(len(l))
		if err != nil {
			c.tb.Fatalf("%s: %v after %d bytes", cmd, err, n)
		}
		if strings.HasPrefix(string(l), tag+" ") {
			d := time.Since(start)
			if !strings.HasPrefix(string(l), tag+" OK") {
				c.tb.Fatalf("%s: %s", cmd, l)
			}
			if fetches != want {
				c.tb.Fatalf("%s: %d FETCH responses, want %d", cmd, fetches, want)
			}
			return fetches, n, d
		}
		if strings.Contains(string(l), " FETCH (") {
			fetches++
		}
	}
}
