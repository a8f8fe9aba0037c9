package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestMbsyncUploadAppendUID: mbsync uploads new local messages through the
// proxy in front of Dovecot's Plain profile, which advertises no UIDPLUS.
// Without APPENDUID mbsync would tag each upload with an X-TUID header and
// then look for it (UID FETCH of the new range's X-TUID headers); with the
// APPENDUID codes the proxy synthesizes (uidplus) it learns each new UID from
// the APPEND's OK and never searches. The test reads mbsync's protocol
// trace (-Dn) to prove it, checks that every message arrived exactly once,
// and that a second sync changes nothing.
func TestMbsyncUploadAppendUID(t *testing.T) {
	mbsync := requireTool(t, "mbsync")
	const n = 5
	upload := func(t *testing.T, control bool, exts ...proxy.Extension) (trace string, dc *dovecottest.Server, sync *mbsyncRun) {
		dc = dovecottest.Start(t, dovecottest.Plain)
		for i := 1; i <= 3; i++ {
			dc.Append(t, "alice", "alicepass", "INBOX", nil, sampleMessage(i, "already on the server"))
		}
		addr, _ := startProxy(t, dc.Addr, func(c *proxy.Config) {
			c.Extensions = append([]proxy.Extension{idle.New()}, exts...)
		})
		sync = newMbsync(t, mbsync, addr, mbsyncOpts{})
		sync.run() // first sync: the three messages come down
		for i := 0; i < n; i++ {
			m := sampleMessage(300+i, fmt.Sprintf("written offline, number %d", i))
			name := fmt.Sprintf("%d.%d.lemon:2,S", time.Now().Unix(), i)
			if err := os.WriteFile(filepath.Join(sync.local, "INBOX", "cur", name), m, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		trace, err := sync.try()
		if err != nil && !control {
			t.Fatalf("mbsync: %v\n%s", err, trace)
		}
		if got := len(mbsyncAppend.FindAllString(trace, -1)); got != n {
			t.Fatalf("mbsync sent %d APPENDs, want %d:\n%s", got, n, trace)
		}
		return trace, dc, sync
	}

	// The control: where the APPEND's OK has no APPENDUID (the upstream's
	// own is removed here), mbsync looks for its X-TUID headers, and
	// mbsyncTUIDSearch sees it do so. (mbsync 1.4.4 then stops with
	// "received extraneous data in FETCH response" on the header FETCH's
	// answer, although it is byte for byte what Dovecot sends directly:
	// its own bug, one more reason for the APPENDUID; so the control
	// tolerates the failure.)
	t.Run("without APPENDUID", func(t *testing.T) {
		trace, _, _ := upload(t, true, stripAppendUID{})
		if mbsyncAppendUID.MatchString(trace) {
			t.Fatalf("APPENDUID not stripped:\n%s", trace)
		}
		if !mbsyncTUIDSearch.MatchString(trace) {
			t.Fatalf("mbsync did not search for X-TUID without APPENDUID; the check below proves nothing:\n%s", trace)
		}
	})

	t.Run("uidplus", func(t *testing.T) {
		ext := uidplus.New()
		trace, dc, sync := upload(t, false, ext)
		codes := mbsyncAppendUID.FindAllStringSubmatch(trace, -1)
		if len(codes) != n {
			t.Fatalf("%d APPENDs answered with APPENDUID, want %d:\n%s", len(codes), n, trace)
		}
		if mbsyncTUIDSearch.MatchString(trace) {
			t.Fatalf("mbsync searched for its X-TUID headers despite APPENDUID:\n%s", trace)
		}
		// The codes are the proxy's (Dovecot's own, sent unadvertised,
		// are stripped by uidplus).
		if got := ext.Stats().AppendUIDs; got != n {
			t.Errorf("uidplus found %d APPENDUIDs, want %d", got, n)
		}

		// Exactly once on the server, at the UIDs the proxy announced.
		c := dialRaw(t, dc.Addr)
		mustOK(t, c.Cmd("LOGIN alice alicepass"))
		mustOK(t, c.Cmd("EXAMINE INBOX"))
		for i, code := range codes {
			lines := mustOK(t, c.Cmd(fmt.Sprintf(`UID SEARCH HEADER Message-ID "<m%d@example.org>"`, 300+i)))
			if lines[0] != "* SEARCH "+code[1] {
				t.Errorf("message %d: server has %q, APPENDUID said %s", 300+i, lines[0], code[1])
			}
		}
		wantStatus := fmt.Sprintf("* STATUS INBOX (MESSAGES %d)", 3+n)
		if lines := mustOK(t, c.Cmd("STATUS INBOX (MESSAGES)")); lines[0] != wantStatus {
			t.Errorf("server: %q, want %q", lines[0], wantStatus)
		}
		before := sync.files()

		// A second sync has nothing to do: no upload, no download, no
		// flag change, and the maildir is as it was.
		trace = sync.run()
		if m := mbsyncWrites.FindString(trace); m != "" {
			t.Errorf("second sync did %q:\n%s", m, trace)
		}
		if after := sync.files(); after != before {
			t.Errorf("second sync changed the maildir:\n%s\nwas\n%s", after, before)
		}
		if lines := mustOK(t, c.Cmd("STATUS INBOX (MESSAGES)")); lines[0] != wantStatus {
			t.Errorf("after the second sync: %q, want %q", lines[0], wantStatus)
		}
	})
}

// Patterns over mbsync's -Dn trace: commands it sent appear after ">>> "
// (preceded by "(N in progress) " when pipelined), the server's lines as
// they came.
var (
	mbsyncAppend     = regexp.MustCompile(`(?m)>>> \d+ APPEND `)
	mbsyncAppendUID  = regexp.MustCompile(`(?m)^\d+ OK \[APPENDUID \d+ (\d+)\]`)
	mbsyncTUIDSearch = regexp.MustCompile(`(?m)>>> \d+ UID (FETCH|SEARCH) [^\n]*X-TUID`)
	mbsyncWrites     = regexp.MustCompile(`(?m)>>> \d+ (APPEND|UID STORE|EXPUNGE|UID EXPUNGE|UID FETCH [^\n]*BODY)[^\n]*`)
)

// stripAppendUID removes APPENDUID from APPEND's tagged answer: for the
// control, an upstream that gives none.
type stripAppendUID struct{}

func (stripAppendUID) Name() string       { return "strip-appenduid" }
func (stripAppendUID) Commands() []string { return []string{"APPEND"} }
func (stripAppendUID) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		if strings.EqualFold(h.Code, "APPENDUID") {
			h.Code, h.CodeArg = "", ""
		}
	})
	return next(ctx, x)
}

// mbsyncRun is an mbsync set up to sync the proxy's folders, as alice, to
// a maildir of its own.
type mbsyncRun struct {
	t       testing.TB
	bin, rc string
	home    string
	local   string // the maildir's root, with a trailing slash
}

// mbsyncOpts says what an mbsyncRun syncs, and how.
type mbsyncOpts struct {
	// folder is the one folder synced; "" is INBOX, "*" every folder.
	folder string
	// pull only downloads (Sync Pull, Create Near) instead of syncing
	// both ways.
	pull bool
	// noFSync turns mbsync's fsync after every message off, so that the
	// network path and not the disk sets the time of a bulk download.
	noFSync bool
}

// newMbsync sets up mbsync against addr.
func newMbsync(t testing.TB, bin, addr string, o mbsyncOpts) *mbsyncRun {
	host, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	local := filepath.Join(dir, "mail") + "/"
	var cfg strings.Builder
	if o.noFSync {
		cfg.WriteString("FSync no\n\n")
	}
	fmt.Fprintf(&cfg, `IMAPAccount proxy
Host %s
Port %s
User alice
Pass alicepass
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account proxy

MaildirStore local
Path %s
Inbox %sINBOX
SubFolders Verbatim

`, host, port, local, local)
	switch o.folder {
	case "*":
		cfg.WriteString("Channel all\nFar :remote:\nNear :local:\nPatterns *\n")
	case "":
		cfg.WriteString("Channel inbox\nFar :remote:INBOX\nNear :local:INBOX\n")
	default:
		fmt.Fprintf(&cfg, "Channel one\nFar :remote:%s\nNear :local:%s\n", o.folder, o.folder)
	}
	if o.pull {
		cfg.WriteString("Create Near\nSyncState *\nSync Pull\n")
	} else {
		cfg.WriteString("Create Both\nSyncState *\nSync All\n")
	}
	if err := os.MkdirAll(local, 0o700); err != nil {
		t.Fatal(err)
	}
	rc := filepath.Join(dir, "mbsyncrc")
	if err := os.WriteFile(rc, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return &mbsyncRun{t: t, bin: bin, rc: rc, home: dir, local: local}
}

// run syncs once and returns mbsync's network trace (-Dn): lines
// ">>> " for what it sent (after a "(N in progress) " when pipelined),
// the server's lines as they came.
func (m *mbsyncRun) run() string {
	m.t.Helper()
	out, err := m.try()
	if err != nil {
		m.t.Fatalf("mbsync: %v\n%s", err, out)
	}
	return out
}

// try is run that leaves a failure to the caller.
func (m *mbsyncRun) try() (string, error) {
	out, err := m.command(nil, true).CombinedOutput()
	return string(out), err
}

// command is the command that syncs once, run under the command line
// prefix (taskset, say), with the network trace (-Dn) or quiet (-q).
func (m *mbsyncRun) command(prefix []string, trace bool) *exec.Cmd {
	flag := "-q"
	if trace {
		flag = "-Dn"
	}
	args := append(append([]string(nil), prefix...), m.bin, flag, "-c", m.rc, "-a")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "HOME="+m.home)
	cmd.Dir = m.home
	return cmd
}

// messageFiles calls fn with the path of every message file of the
// maildir below folder ("" for all).
func (m *mbsyncRun) messageFiles(folder string, fn func(path string)) {
	filepath.Walk(filepath.Join(m.local, folder), func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && (strings.Contains(path, "/cur/") || strings.Contains(path, "/new/")) {
			fn(path)
		}
		return nil
	})
}

// files lists INBOX's message files, for comparing two states.
func (m *mbsyncRun) files() string {
	var b strings.Builder
	m.messageFiles("INBOX", func(path string) {
		data, _ := os.ReadFile(path)
		fmt.Fprintf(&b, "%s %d\n", strings.TrimPrefix(path, m.local), len(data))
	})
	return b.String()
}

// mbsyncTUID is the header mbsync adds to a message while uploading it.
var mbsyncTUID = regexp.MustCompile(`(?m)^X-TUID: .*\n`)

// checkSynced asserts that every message of want (by Message-ID) is in
// the maildir byte for byte, but for the LF line ends mbsync stores and
// its own X-TUID header.
func (m *mbsyncRun) checkSynced(want map[string][]byte) {
	m.t.Helper()
	got := map[string][]byte{}
	m.messageFiles("", func(path string) {
		b, _ := os.ReadFile(path)
		for id := range want {
			if bytes.Contains(b, []byte("Message-ID: "+id)) {
				got[id] = b
			}
		}
	})
	for id, msg := range want {
		g := mbsyncTUID.ReplaceAll(got[id], nil)
		lf := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
		if !bytes.Equal(g, lf) {
			i := 0
			for i < min(len(g), len(lf)) && g[i] == lf[i] {
				i++
			}
			m.t.Errorf("message %s: synced copy differs from byte %d (%d bytes, want %d): %q, want %q", id, i, len(g), len(lf), g[i:min(i+40, len(g))], lf[i:min(i+40, len(lf))])
		}
	}
}

// upload writes msg into the maildir's INBOX as a message made on the
// phone, for the next sync to upload.
func (m *mbsyncRun) upload(msg []byte) {
	m.t.Helper()
	name := fmt.Sprintf("%d.local.lemon:2,S", time.Now().Unix())
	if err := os.WriteFile(filepath.Join(m.local, "INBOX", "cur", name), msg, 0o600); err != nil {
		m.t.Fatal(err)
	}
}

// TestImapFlowMove: ImapFlow's messageMove through the proxy. Over
// Dovecot's legacy profile (UIDPLUS, no MOVE) the proxy advertises MOVE
// and does it as UID COPY, STORE \Deleted and UID EXPUNGE of exactly the
// moved UIDs; over the full profile it relays Dovecot's MOVE; over Plain
// (no UIDPLUS) it offers no MOVE and ImapFlow falls back to COPY and
// delete, with the COPYUID the proxy finds. In each case ImapFlow gets
// the uidMap from COPYUID, hears the three expunges (highest first, as Dovecot sends them), and the messages are
// in Archive and no longer in INBOX, as when ImapFlow talks to Dovecot's
// full profile directly.
func TestImapFlowMove(t *testing.T) {
	node := requireImapFlow(t)
	for _, tc := range []struct {
		profile dovecottest.Profile
		direct  bool
		move    bool // MOVE advertised to ImapFlow
		moves   uint64
	}{
		{profile: dovecottest.Full, direct: true, move: true},
		{profile: dovecottest.Full, move: true},
		{profile: dovecottest.Legacy, move: true, moves: 1},
		{profile: dovecottest.Plain},
	} {
		name := tc.profile.String()
		if tc.direct {
			name += "/direct"
		}
		t.Run(name, func(t *testing.T) {
			dc := dovecottest.Start(t, tc.profile)
			for i := 1; i <= 5; i++ {
				dc.Append(t, "alice", "alicepass", "INBOX", nil, sampleMessage(i, "to be moved or not"))
			}
			dc.Append(t, "alice", "alicepass", "Archive", nil, sampleMessage(100, "already archived"))
			addr := dc.Addr
			ext := uidplus.New()
			if !tc.direct {
				addr, _ = startProxy(t, dc.Addr, func(c *proxy.Config) {
					c.Extensions = []proxy.Extension{idle.New(), ext}
				})
			}
			got := imapflowMove(t, node, addr)

			c := dialRaw(t, dc.Addr)
			mustOK(t, c.Cmd("LOGIN alice alicepass"))
			status := mustOK(t, c.Cmd("STATUS Archive (UIDVALIDITY)"))[0]
			uidValidity := strings.TrimSuffix(strings.TrimPrefix(status, "* STATUS Archive (UIDVALIDITY "), ")")
			want := map[string]any{
				"move":    tc.move,
				"uidplus": tc.profile != dovecottest.Plain,
				"result": map[string]any{
					"path": "INBOX", "destination": "Archive", "uidValidity": uidValidity,
					"uidMap": []any{[]any{2.0, 2.0}, []any{3.0, 3.0}, []any{4.0, 4.0}},
				},
				"expunged":    []any{4.0, 3.0, 2.0}, // as Dovecot sends them
				"existsAfter": 2.0,
				"inbox":       []any{[]any{1.0, "<m1@example.org>"}, []any{5.0, "<m5@example.org>"}},
				"archive": []any{[]any{1.0, "<m100@example.org>"}, []any{2.0, "<m2@example.org>"},
					[]any{3.0, "<m3@example.org>"}, []any{4.0, "<m4@example.org>"}},
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ImapFlow saw\n%v\nwant\n%v", got, want)
			}
			if s := ext.Stats(); s.Moves != tc.moves || s.MovesIncomplete != 0 {
				t.Errorf("uidplus stats %+v: want %d synthesized MOVEs", s, tc.moves)
			}
			if tc.profile == dovecottest.Plain && ext.Stats().CopyUIDs != 1 {
				t.Errorf("uidplus stats %+v: want the COPY's COPYUID found by the proxy", ext.Stats())
			}
		})
	}
}

func imapflowMove(t *testing.T, node, addr string) map[string]any {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(node, "imapflow_move.mjs", host, port, "alice", "alicepass")
	cmd.Dir = "testdata/node"
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("imapflow: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("imapflow output: %v: %.300s", err, out)
	}
	return res
}

// TestImaplibUIDPlus: Python's imaplib reads APPENDUID and COPYUID, and
// does UID MOVE, through the proxy in front of each Dovecot profile: Full
// (relayed), Legacy (UIDPLUS relayed, MOVE synthesized) and Plain
// (APPENDUID and COPYUID synthesized; neither UIDPLUS nor MOVE offered,
// so UID MOVE is refused).
func TestImaplibUIDPlus(t *testing.T) {
	py := requireTool(t, "python3")
	moved := []string{
		"uid move OK v 3 4 expunged 3",
		"inbox 1 2",
		"archive 1 2 3 4",
	}
	for _, tc := range []struct {
		profile dovecottest.Profile
		want    []string
		stats   uidplus.Stats // what the proxy synthesized
	}{
		{dovecottest.Full, append([]string{"caps UIDPLUS=True MOVE=True"}, moved...), uidplus.Stats{}},
		{dovecottest.Legacy, append([]string{"caps UIDPLUS=True MOVE=True"}, moved...), uidplus.Stats{Moves: 1}},
		{dovecottest.Plain, []string{"caps UIDPLUS=False MOVE=False", "uid move refused", "inbox 1 2 3", "archive 1 2 3"},
			uidplus.Stats{AppendUIDs: 3, CopyUIDs: 1}},
	} {
		t.Run(tc.profile.String(), func(t *testing.T) {
			dc := dovecottest.Start(t, tc.profile)
			dc.Append(t, "alice", "alicepass", "Archive", nil, sampleMessage(1, "x"))
			ext := uidplus.New()
			addr, _ := startProxy(t, dc.Addr, func(c *proxy.Config) {
				c.Extensions = []proxy.Extension{idle.New(), ext}
			})
			host, port, _ := net.SplitHostPort(addr)
			out, err := exec.Command(py, "testdata/imaplib_uidplus.py", host, port, "alice", "alicepass").CombinedOutput()
			if err != nil {
				t.Fatalf("imaplib_uidplus.py: %v\n%s", err, out)
			}
			want := append([]string{tc.want[0],
				"append OK v 1", "append OK v 2", "append OK v 3",
				"uid copy OK v 1:2 2:3"}, tc.want[1:]...)
			if got := strings.Split(strings.TrimSpace(string(out)), "\n"); !reflect.DeepEqual(got, want) {
				t.Errorf("imaplib printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if got := ext.Stats(); got != tc.stats {
				t.Errorf("uidplus stats %+v, want %+v", got, tc.stats)
			}
		})
	}
}
