package proxy_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/internal/faultnet"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
)

// STOREs sent upstream ahead of their turn (ahead.go; issue 20: imaptest's
// stress pipelines FETCH, STORE and STORE \Deleted, and Dovecot serves
// such a batch with one sync).

// TestStoreAhead: STOREs by sequence numbers behind a FETCH go upstream
// while the FETCH's answer is held; each is answered in its turn, the
// silent one with nothing but its OK, and the client is not told of its
// own changes again afterwards. The hub's watcher has seen both changes
// before the FETCH's answer comes (another session is told of them): they
// are not told at the FETCH's turn as someone else's (deliver holds them
// back, selectedMailbox.owed; it told "* 3 FETCH (FLAGS (\Seen))" of the
// silent STORE). A FETCH of a message a STORE in flight names keeps its
// turn.
func TestStoreAhead(t *testing.T) {
	e := startAheadEnv(t)
	other := e.otherSession(t)
	hold := e.holdAnswer("UID FETCH 1 (FLAGS)")
	silent := e.noteSent(`UID STORE 3 +FLAGS (\Seen)`)
	fetch3 := e.noteSent("UID FETCH 3 (FLAGS)")
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (FLAGS)\r\n" +
		"b STORE 2 +FLAGS (\\Flagged)\r\n" +
		"c STORE 3 +FLAGS.SILENT (\\Seen)\r\n" +
		"d FETCH 3 (FLAGS)\r\n"))
	waitFired(t, hold)
	waitFired(t, silent) // sent while the answer to the first is held
	notFired(t, fetch3, 100*time.Millisecond, "a FETCH of a message a STORE in flight names went upstream ahead of its turn")
	waitToldOf(t, other, `* 2 FETCH (FLAGS (\Flagged))`, `* 3 FETCH (FLAGS (\Seen))`)
	hold.Release()
	e.c.Expect("* 1 FETCH (FLAGS ())", longTag+" OK *")
	e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`, "b OK *")
	e.c.Expect("c OK *")
	e.c.Expect(`* 3 FETCH (FLAGS (\Seen))`, "d OK *")
	e.c.ExpectDo("n", "NOOP", "n OK *")
	if n := e.p.Srv.Stats().CommandsAhead; n != 2 {
		t.Errorf("Stats().CommandsAhead = %d, want 2 (b and c)", n)
	}
}

// otherSession is another session of the same user with INBOX selected.
func (e *aheadEnv) otherSession(t *testing.T) *client {
	t.Helper()
	other := imaptest.Dial(t, e.p.Addr)
	other.LoginTagged("alice", "secret")
	other.Do("s", "SELECT INBOX")
	return other
}

// waitToldOf sends NOOPs on c (each waits for the hub's watcher) until it
// has been told every one of want.
func waitToldOf(t *testing.T, c *client, want ...string) {
	t.Helper()
	left := map[string]bool{}
	for _, w := range want {
		left[w] = true
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(left) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the other session was not told of %v", slices.Collect(maps.Keys(left)))
		}
		for _, l := range c.Do("n", "NOOP") {
			delete(left, l)
		}
	}
}

// storeAnswersEarly holds the upstream's answer to the FETCH whose upstream
// form contains match, and writes before it the answers (early) of STOREs
// sent ahead behind it, as Dovecot does: it runs a batch's UID commands
// at once, and a STORE's FETCH responses may come before the tagged
// response of the FETCH before it.
func (e *aheadEnv) storeAnswersEarly(match, early string) *faultnet.Handle {
	return e.fn.Add(faultnet.Fault{Match: []byte(match), MatchDir: faultnet.ToServer, Dir: faultnet.ToClient,
		Action: faultnet.Hold, Data: []byte(early)})
}

// storesAnsweredEarly sends "FETCH 1 (FLAGS)" (longTag), "b STORE 2 +FLAGS
// (\Flagged)" and "c STORE 3 +FLAGS.SILENT (\Seen)" in one batch, and has
// the two STOREs' answers come before the FETCH's (storeAnswersEarly).
func (e *aheadEnv) storesAnsweredEarly(t *testing.T) {
	t.Helper()
	hold := e.storeAnswersEarly("UID FETCH 1 (FLAGS)",
		"* 3 FETCH (UID 3 FLAGS (\\Seen))\r\n* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n")
	third := e.noteSent(`UID STORE 3 +FLAGS (\Seen)`)
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (FLAGS)\r\n" +
		"b STORE 2 +FLAGS (\\Flagged)\r\n" +
		"c STORE 3 +FLAGS.SILENT (\\Seen)\r\n"))
	waitFired(t, third)
	waitFired(t, hold)
	hold.Release()
}

// TestStoreAheadAnswerInEarlierTurn: the answers of STOREs sent ahead come
// before the tagged response of the FETCH before them. Each is the STORE's
// (whoseAnswer): the silent STORE's is not shown, the other's shows the
// flags it set; read as the FETCH's, the silent one's went to the client
// and the other's was taken for an answer made before a change the client
// had been told of, and showed the message's old flags (toldOverAhead).
// Both are the session's own changes: nothing is told again after.
func TestStoreAheadAnswerInEarlierTurn(t *testing.T) {
	e := startAheadEnv(t)
	e.storesAnsweredEarly(t)
	e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`, "* 1 FETCH (FLAGS ())", longTag+" OK *")
	e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`, "b OK *") // the upstream's own answer, in its turn
	e.c.Expect("c OK *")
	e.c.ExpectDo("n", "NOOP", "n OK *")
	e.c.ExpectDo("f", "FETCH 1:3 (FLAGS)", "* 1 FETCH (FLAGS ())", `* 2 FETCH (FLAGS (\Flagged))`, `* 3 FETCH (FLAGS (\Seen))`, "f OK *")
}

// TestStoreAheadCondstore: with CONDSTORE, a STORE's answers read in an
// earlier command's turn carry its MODSEQ, the silent one's nothing else
// (RFC 7162 3.2); a STORE with UNCHANGEDSINCE keeps its turn (condstore
// waits for the watcher first and may answer it itself).
func TestStoreAheadCondstore(t *testing.T) {
	t.Run("answers", func(t *testing.T) {
		t.Parallel()
		e := startAheadEnv(t, condstore.New())
		e.c.Do("en", "FETCH 1 (MODSEQ)")
		e.storesAnsweredEarly(t)
		got := e.c.ReadUntilTagged(longTag)
		if len(got) != 4 || !strings.HasPrefix(got[0], "* 3 FETCH (UID 3 MODSEQ (") || strings.Contains(got[0], "FLAGS") ||
			!strings.HasPrefix(got[1], "* 2 FETCH (UID 2 MODSEQ (") || !strings.HasSuffix(got[1], `FLAGS (\Flagged))`) ||
			!strings.HasPrefix(got[2], "* 1 FETCH (UID 1 MODSEQ (") {
			t.Fatalf("answers in the FETCH's turn: %q, want the silent STORE's MODSEQ alone, the other's MODSEQ and flags, then the FETCH's", got)
		}
		e.c.ReadUntilTagged("b")
		if got := e.c.ReadUntilTagged("c"); len(got) != 2 || strings.Contains(got[0], "FLAGS") {
			t.Fatalf("answer to the silent STORE in its turn: %q, want its MODSEQ alone", got)
		}
		e.c.ExpectDo("n", "NOOP", "n OK *")
	})
	t.Run("UNCHANGEDSINCE", func(t *testing.T) {
		t.Parallel()
		e := startAheadEnv(t, condstore.New())
		hold := e.holdAnswer("UID FETCH 1 (FLAGS)")
		store := e.noteSent("UID STORE 2 ")
		e.c.WriteBytes([]byte(longTag + " FETCH 1 (FLAGS)\r\nb STORE 2 (UNCHANGEDSINCE 100) +FLAGS (\\Flagged)\r\n"))
		waitFired(t, hold)
		notFired(t, store, 100*time.Millisecond, "a STORE with UNCHANGEDSINCE went upstream ahead of its turn")
		hold.Release()
		e.c.ReadUntilTagged(longTag)
		if got := e.c.ReadUntilTagged("b"); !strings.HasPrefix(got[len(got)-1], "b OK") {
			t.Fatalf("answer to STORE UNCHANGEDSINCE: %q", got)
		}
	})
}

// TestStoreNotAhead: STOREs that keep their turn behind a FETCH whose
// answer is held. A set with "*" names the client's last message as the
// STORE arrives (bindStar), which the changes told before its turn may
// move; a STORE of a message a command in flight names would have answers
// that could be either's; a STORE by sequence numbers behind a UID FETCH,
// whose answer may renumber the client's messages (an EXPUNGE), is
// translated in its turn.
func TestStoreNotAhead(t *testing.T) {
	for _, tt := range []struct{ first, store, upstream string }{
		{"FETCH 1 (FLAGS)", `STORE 2:* +FLAGS (\Flagged)`, "UID STORE 2"},
		{"FETCH 1 (FLAGS)", `UID STORE 2:* +FLAGS (\Flagged)`, "UID STORE 2"},
		{"FETCH 1:2 (FLAGS)", `STORE 2 +FLAGS (\Flagged)`, "UID STORE 2"},
		{"FETCH 1:2 (UID FLAGS MODSEQ)", `STORE 2 +FLAGS (\Flagged)`, "UID STORE 2"},
		{`STORE 2 +FLAGS (\Flagged)`, "FETCH 1:2 (FLAGS)", "UID FETCH 1:2"},
		{"FETCH 1 (FLAGS)", `STORE 3,1 +FLAGS (\Flagged)`, "UID STORE "},
		{"UID FETCH 1 (FLAGS)", `STORE 2 +FLAGS (\Flagged)`, "UID STORE 2"},
		{"STORE 1 +FLAGS (\\Seen)", `STORE 1 -FLAGS (\Seen)`, "UID STORE 1 -FLAGS"},
	} {
		t.Run(tt.first+" "+tt.store, func(t *testing.T) {
			t.Parallel()
			e := startAheadEnv(t)
			upFirst := "UID " + strings.TrimPrefix(tt.first, "UID ")
			hold := e.holdAnswer(upFirst)
			store := e.noteSent(tt.upstream)
			e.c.WriteBytes([]byte(longTag + " " + tt.first + "\r\nb " + tt.store + "\r\n"))
			waitFired(t, hold)
			notFired(t, store, 100*time.Millisecond, "the STORE went upstream ahead of its turn")
			hold.Release()
			e.c.ReadUntilTagged(longTag)
			if got := e.c.ReadUntilTagged("b"); !strings.HasPrefix(got[len(got)-1], "b OK") {
				t.Fatalf("answer to %s: %q", tt.store, got)
			}
		})
	}
}

// TestUIDStoreAhead: a UID STORE behind a UID FETCH goes ahead (neither
// depends on the client's numbering).
func TestUIDStoreAhead(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.holdAnswer("UID FETCH 1 (FLAGS)")
	store := e.noteSent(`UID STORE 2 +FLAGS (\Flagged)`)
	e.c.WriteBytes([]byte(longTag + " UID FETCH 1 (FLAGS)\r\nb UID STORE 2 +FLAGS (\\Flagged)\r\n"))
	waitFired(t, hold)
	waitFired(t, store)
	hold.Release()
	e.c.Expect("* 1 FETCH (UID 1 FLAGS ())", longTag+" OK *")
	e.c.Expect(`* 2 FETCH (UID 2 FLAGS (\Flagged))`, "b OK *")
	e.c.ExpectDo("n", "NOOP", "n OK *")
}

// TestAheadReportNotRelayed: a FETCH response about a message no command
// in flight names, read while a FETCH and a STORE sent ahead share the
// connection, is the upstream's report of someone else's change (the
// leased connection's sync), and is not relayed: the client hears of
// changes from the hub, once (reportsOnly). It was relayed whenever
// commands were ahead, since their answers may come in any turn.
func TestAheadReportNotRelayed(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.storeAnswersEarly("UID FETCH 1 (FLAGS)", "* 3 FETCH (UID 3 FLAGS (\\Deleted))\r\n")
	store := e.noteSent(`UID STORE 2 +FLAGS (\Flagged)`)
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (FLAGS)\r\nb STORE 2 +FLAGS.SILENT (\\Flagged)\r\n"))
	waitFired(t, store)
	waitFired(t, hold)
	hold.Release()
	e.c.Expect("* 1 FETCH (FLAGS ())", longTag+" OK *")
	e.c.Expect("b OK *")
	e.c.ExpectDo("f", "FETCH 3 (FLAGS)", "* 3 FETCH (FLAGS ())", "f OK *")
}

// TestStoreAheadOfFetchShowingUID: a STORE by sequence numbers goes ahead
// behind a FETCH that asked for the UID item, though their answers show
// it differently: each answer is shown as its own command's, here the
// STORE's, read in the FETCH's turn, without the UID it did not ask for.
func TestStoreAheadOfFetchShowingUID(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.storeAnswersEarly("UID FETCH 1 (UID FLAGS)", "* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n")
	store := e.noteSent(`UID STORE 2 +FLAGS (\Flagged)`)
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (UID FLAGS)\r\nb STORE 2 +FLAGS (\\Flagged)\r\n"))
	waitFired(t, store)
	waitFired(t, hold)
	hold.Release()
	e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`, "* 1 FETCH (UID 1 FLAGS ())", longTag+" OK *")
	e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`, "b OK *")
	e.c.ExpectDo("n", "NOOP", "n OK *")
}

// TestStoreAheadBesideFetch: a STORE and a FETCH that name the same
// message go upstream together when the FETCH asks for more than flags
// (the STORE's answers are those with nothing but flags). The STORE's
// answer comes first, in the FETCH's turn; the FETCH's answer about the
// message, made by the upstream before the STORE ran, comes after it
// and shows the flags the STORE set (it showed none, and the client kept
// them). The other way round, a FETCH behind a STORE of its message is
// answered with the STORE's flags.
func TestStoreAheadBesideFetch(t *testing.T) {
	t.Run("STORE behind FETCH", func(t *testing.T) {
		t.Parallel()
		e := startAheadEnv(t)
		hold := e.storeAnswersEarly("UID FETCH 1:3 (FLAGS RFC822.SIZE)", "* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n")
		store := e.noteSent(`UID STORE 2 +FLAGS (\Flagged)`)
		e.c.WriteBytes([]byte(longTag + " FETCH 1:3 (FLAGS RFC822.SIZE)\r\nb STORE 2 +FLAGS (\\Flagged)\r\n"))
		waitFired(t, store)
		waitFired(t, hold)
		hold.Release()
		got := e.c.ReadUntilTagged(longTag)
		if len(got) != 5 || got[0] != `* 2 FETCH (FLAGS (\Flagged))` || !strings.HasPrefix(got[2], `* 2 FETCH (FLAGS (\Flagged) RFC822.SIZE `) {
			t.Fatalf("answers in the FETCH's turn: %q, want the STORE's, then message 2 with the flags it set", got)
		}
		e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`, "b OK *")
		e.c.ExpectDo("n", "NOOP", "n OK *")
	})
	t.Run("FETCH behind STORE", func(t *testing.T) {
		t.Parallel()
		e := startAheadEnv(t)
		hold := e.holdAnswer(`UID STORE 2 +FLAGS (\Flagged)`)
		fetch := e.noteSent("UID FETCH 1:3 (FLAGS RFC822.SIZE)")
		e.c.WriteBytes([]byte(longTag + " STORE 2 +FLAGS (\\Flagged)\r\nb FETCH 1:3 (FLAGS RFC822.SIZE)\r\n"))
		waitFired(t, hold)
		waitFired(t, fetch)
		hold.Release()
		e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`, longTag+" OK *")
		got := e.c.ReadUntilTagged("b")
		if len(got) != 4 || !strings.HasPrefix(got[1], `* 2 FETCH (FLAGS (\Flagged) RFC822.SIZE `) {
			t.Fatalf("answer to the FETCH: %q, want message 2 with the STORE's flags", got)
		}
	})
}

// TestStoreAheadAnswerOlderThanState: another session changes a message
// after the upstream ran a STORE sent ahead of its turn and before that
// STORE's answer is read (it waits behind the answer to the FETCH before
// it). The answer is then older than the hub's state: claimed
// (Subscription.Own), it took the other session's \Answered back out of
// the state, every session was told so, and nothing told them otherwise
// (the watcher had reported the message already and reports nothing more
// of it). The answer is shown, but the hub is asked instead (a round trip
// of its watcher), and the client hears of the other session's change
// after it, as of any change the STORE's turn held back.
func TestStoreAheadAnswerOlderThanState(t *testing.T) {
	for _, silent := range []bool{false, true} {
		t.Run(fmt.Sprint("silent=", silent), func(t *testing.T) {
			t.Parallel()
			e := startAheadEnv(t)
			other := e.otherSession(t)
			hold := e.holdAnswer("UID FETCH 1 (FLAGS)")
			store := e.noteSent(`UID STORE 2 +FLAGS (\Flagged)`)
			item := "+FLAGS"
			if silent {
				item = "+FLAGS.SILENT"
			}
			e.c.WriteBytes([]byte(longTag + " FETCH 1 (FLAGS)\r\nb STORE 2 " + item + " (\\Flagged)\r\n"))
			waitFired(t, hold)
			waitFired(t, store)
			waitToldOf(t, other, `* 2 FETCH (FLAGS (\Flagged))`) // the upstream ran it
			other.Do("o", `STORE 2 +FLAGS (\Answered)`)
			hold.Release()
			e.c.Expect("* 1 FETCH (FLAGS ())", longTag+" OK *")
			if !silent {
				e.c.Expect(`* 2 FETCH (FLAGS (\Flagged))`) // the answer, shown
			}
			e.c.Expect(`* 2 FETCH (FLAGS (\Answered \Flagged))`, "b OK *")
			e.c.ExpectDo("n", "NOOP", "n OK *")
			other.ExpectDo("n", "NOOP", "n OK *")
			// The upstream's own answer, its flags in no fixed order.
			if got := e.c.Do("f", "FETCH 2 (FLAGS)"); len(got) != 2 || !strings.Contains(got[0], `\Answered`) || !strings.Contains(got[0], `\Flagged`) {
				t.Fatalf("FETCH 2 (FLAGS): %q, want \\Answered and \\Flagged", got)
			}
		})
	}
}

// TestFetchNotAheadOfSilentStore: a FETCH that asks for more than flags
// keeps its turn behind a STORE .SILENT in flight that names one of its
// messages, the STORE in its turn or sent ahead itself (aheadOK):
// sent ahead, its answer may come before the STORE's (Dovecot), and the
// client was shown the message's flags as before its own STORE and told
// nothing after. In its turn it shows the flags the STORE set, and
// nothing is told after.
func TestFetchNotAheadOfSilentStore(t *testing.T) {
	for _, tt := range []struct{ first, held string }{
		{"", `UID STORE 2 +FLAGS (\Flagged)`},
		{"FETCH 1 (FLAGS)\r\nb ", "UID FETCH 1 (FLAGS)"},
	} {
		t.Run(tt.held, func(t *testing.T) {
			t.Parallel()
			e := startAheadEnv(t)
			hold := e.holdAnswer(tt.held)
			fetch := e.noteSent("UID FETCH 1:3 (FLAGS RFC822.SIZE)")
			e.c.WriteBytes([]byte(longTag + " " + tt.first + "STORE 2 +FLAGS.SILENT (\\Flagged)\r\nc FETCH 1:3 (FLAGS RFC822.SIZE)\r\n"))
			waitFired(t, hold)
			notFired(t, fetch, 100*time.Millisecond, "a FETCH went upstream ahead of its turn behind a STORE .SILENT of one of its messages")
			hold.Release()
			if tt.first != "" {
				e.c.Expect("* 1 FETCH (FLAGS ())", longTag+" OK *")
				e.c.Expect("b OK *")
			} else {
				e.c.Expect(longTag + " OK *")
			}
			got := e.c.ReadUntilTagged("c")
			if len(got) != 4 || !strings.HasPrefix(got[1], `* 2 FETCH (FLAGS (\Flagged) RFC822.SIZE `) {
				t.Fatalf("answer to the FETCH: %q, want message 2 with the flags the STORE set", got)
			}
			e.c.ExpectDo("n", "NOOP", "n OK *")
		})
	}
}

// TestExpungeAhead: an EXPUNGE goes upstream behind the STORE \Deleted
// before it (imaptest's stress sends the two back to back; Dovecot syncs
// once for both), and nothing goes ahead behind it: the commands after an
// EXPUNGE mean the client's numbers after its expunges. Its expunges are
// told before its OK, as in its turn.
func TestExpungeAhead(t *testing.T) {
	e := startAheadEnv(t)
	hold := e.holdAnswer(`UID STORE 2 +FLAGS (\Deleted)`)
	expunge := e.noteSent(" EXPUNGE")
	fetch := e.noteSent("UID FETCH ")
	e.c.WriteBytes([]byte(longTag + " STORE 2 +FLAGS.SILENT (\\Deleted)\r\nb EXPUNGE\r\nc FETCH 2 (FLAGS)\r\n"))
	waitFired(t, hold)
	waitFired(t, expunge)
	notFired(t, fetch, 100*time.Millisecond, "a FETCH went upstream behind an EXPUNGE ahead of its turn")
	hold.Release()
	e.c.Expect(longTag + " OK *")
	e.c.Expect("* 2 EXPUNGE", "b OK *")
	e.c.Expect("* 2 FETCH (FLAGS ())", "c OK *") // message 3, now 2
	e.c.ExpectDo("n", "NOOP", "n OK *")
	e.c.ExpectDo("u", "FETCH 1:* (UID)", "* 1 FETCH (UID 1)", "* 2 FETCH (UID 3)", "u OK *")
	if n := e.p.Srv.Stats().CommandsAhead; n != 1 {
		t.Errorf("Stats().CommandsAhead = %d, want 1 (the EXPUNGE)", n)
	}
}

// flagOutside brings the session's pooled connection up to date
// (catchup.go), then flags message 3 directly on the upstream, outside
// the proxy, and waits until the client has been told: the connection is
// behind the state for message 3's flags, and only for them.
func (e *aheadEnv) flagOutside(t *testing.T) {
	t.Helper()
	e.c.Do("f0", "FETCH 1:3 (FLAGS)")
	direct := imaptest.Dial(t, e.fn.Addr())
	direct.Do("l", "LOGIN alice secret")
	direct.Do("s", "SELECT INBOX")
	direct.Do("f", `STORE 3 +FLAGS.SILENT (\Flagged)`)
	waitToldOf(t, e.c, `* 3 FETCH (FLAGS (\Flagged))`)
}

// TestAheadOnPartialLease: the connection leased for the first command of
// a batch was caught up only with what that command needs (catchup.go: a
// message's flags changed outside the proxy since it last synced, and the
// command shows none). A FETCH behind it that needs no more goes ahead on
// it (no command went ahead on such a connection before); one that shows
// the changed message's flags keeps its turn, and is answered after a full
// catch-up.
func TestAheadOnPartialLease(t *testing.T) {
	e := startAheadEnv(t)
	e.flagOutside(t)

	hold := e.holdAnswer("UID FETCH 1 (UID RFC822.SIZE)")
	second := e.noteSent("UID FETCH 2 (UID RFC822.SIZE)")
	third := e.noteSent("UID FETCH 3 (UID FLAGS)")
	skipped := e.p.Srv.Stats().CatchUpsSkipped
	e.c.WriteBytes([]byte(longTag + " FETCH 1 (UID RFC822.SIZE)\r\nb FETCH 2 (UID RFC822.SIZE)\r\nc FETCH 3 (UID FLAGS)\r\n"))
	waitFired(t, hold)
	if n := e.p.Srv.Stats().CatchUpsSkipped - skipped; n != 1 {
		t.Fatalf("%d catch-ups skipped for the first FETCH, want 1 (the test needs a partial lease)", n)
	}
	waitFired(t, second)
	notFired(t, third, 100*time.Millisecond, "a FETCH of flags changed since the connection synced went ahead on a partial lease")
	hold.Release()
	e.c.Expect("* 1 FETCH (UID 1 RFC822.SIZE *", longTag+" OK *")
	e.c.Expect("* 2 FETCH (UID 2 RFC822.SIZE *", "b OK *")
	e.c.Expect(`* 3 FETCH (UID 3 FLAGS (\Flagged))`, "c OK *")
}

// TestPartialLeaseKeptBesideAhead: an extension's own command run while
// commands are ahead on a connection caught up only partly (an updating
// search's refresh after a tagged answer) goes to another connection
// (besideAhead); the session's connection is still partial when it comes
// back. A FETCH of flags changed since it synced keeps its turn after
// that as before: it went ahead on the stale connection when besideAhead
// forgot that the connection was partial.
func TestPartialLeaseKeptBesideAhead(t *testing.T) {
	ext := &execOnTagged{}
	e := startAheadEnv(t, ext)
	e.flagOutside(t)

	hold := e.holdAnswer("UID FETCH 1 (RFC822.SIZE)")
	second := e.noteSent("UID FETCH 2 (RFC822.SIZE)")
	skipped := e.p.Srv.Stats().CatchUpsSkipped
	ahead := e.p.Srv.Stats().CommandsAhead
	e.c.WriteBytes([]byte(longTag + " UID FETCH 1 (RFC822.SIZE)\r\nb UID FETCH 2 (RFC822.SIZE)\r\nc UID FETCH 3 (FLAGS)\r\n"))
	waitFired(t, hold)
	if n := e.p.Srv.Stats().CatchUpsSkipped - skipped; n != 1 {
		t.Fatalf("%d catch-ups skipped for the first FETCH, want 1 (the test needs a partial lease)", n)
	}
	waitFired(t, second)
	hold.Release()
	e.c.Expect("* 1 FETCH (UID 1 RFC822.SIZE *", longTag+" OK *")
	e.c.Expect("* 2 FETCH (UID 2 RFC822.SIZE *", "b OK *")
	e.c.Expect(`* 3 FETCH (UID 3 FLAGS (\Flagged))`, "c OK *")
	if n := e.p.Srv.Stats().CommandsAhead - ahead; n != 1 {
		t.Errorf("%d commands went ahead, want 1 (b): c shows flags changed since the partial connection synced", n)
	}
	ext.mu.Lock()
	defer ext.mu.Unlock()
	if ext.runs != 3 || len(ext.errs) > 0 {
		t.Fatalf("the extension's commands: %d run, errors %v; want 3 without error", ext.runs, ext.errs)
	}
}
