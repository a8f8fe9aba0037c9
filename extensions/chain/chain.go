// Package chain is the one list of the protocol extensions lemonproxy's
// sessions get, in their order, with the reason for each place: what
// plugin.cfg is to CoreDNS. The command (cmd/lemonproxy) serves it, and
// the conformance suite and integration tests run it, so that what is
// tested is what is deployed.
package chain

import (
	"net/netip"
	"time"

	binaryext "github.com/lemonproxy/lemonproxy/extensions/binary"
	"github.com/lemonproxy/lemonproxy/extensions/casesearch"
	"github.com/lemonproxy/lemonproxy/extensions/catenate"
	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/convert"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/extensions/filters"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/extensions/internal/urlfetch"
	"github.com/lemonproxy/lemonproxy/extensions/language"
	"github.com/lemonproxy/lemonproxy/extensions/listext"
	"github.com/lemonproxy/lemonproxy/extensions/metadata"
	"github.com/lemonproxy/lemonproxy/extensions/namespace"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/extensions/notify/accountwatch"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
	"github.com/lemonproxy/lemonproxy/extensions/push/webpush"
	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
	"github.com/lemonproxy/lemonproxy/extensions/thread"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/extensions/urlauth"
	"github.com/lemonproxy/lemonproxy/extensions/within"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// Config holds the settings of the extensions in the chain; the zero value
// selects each extension's defaults.
type Config struct {
	// IdleKeepAlive is the interval of "* OK Still here" to idling
	// clients; 0 sends none.
	IdleKeepAlive time.Duration
	// NotifyPollInterval and WatchGrace tune NOTIFY's account watchers
	// (how often they poll where the upstream has no NOTIFY; how long one
	// outlives the account's last session).
	NotifyPollInterval, WatchGrace time.Duration
	// NotifyMaxQueued is how many NOTIFY events may wait for one session
	// before it is told of an overflow; 0: notify's default.
	NotifyMaxQueued int
	// URLHosts are the names clients reach the proxy under, which absolute
	// IMAP URLs (CATENATE, URLAUTH) must name; empty: the machine's host
	// name and the loopback names.
	URLHosts []string
	// UpstreamSearchCasemap states that the upstream's SEARCH compares
	// with i;unicode-casemap (Dovecot's does): searches are relayed
	// rather than evaluated by the proxy for I18NLEVEL=1
	// (casesearch.Config.UpstreamCasemap).
	UpstreamSearchCasemap bool
	// CompressLevel and CompressMaxCompressors are COMPRESS's Level and
	// MaxCompressors (extensions/compress): 0 selects its defaults.
	CompressLevel, CompressMaxCompressors int
	// SearchMaxBytes bounds what the proxy reads from the upstream to
	// evaluate one command's substring search keys
	// (casesearch.Config.MaxBytes); 0: casesearch's default.
	SearchMaxBytes int64
	// ContextMaxBytes is the budget of all sessions' updating contexts
	// (contextsearch.Config.MaxBytes); 0: contextsearch's default.
	ContextMaxBytes int64
	// SpoolMaxBytes bounds the disk all spools of the process hold at once
	// (messages put together for CATENATE, MULTIAPPEND and BINARY's
	// APPEND: urlfetch.SetSpoolDiskTotal, process-wide); 0: its default.
	SpoolMaxBytes int64
	// SpoolMaxBytesPerUser bounds one account's share of it
	// (urlfetch.SetSpoolDiskPerOwner); 0: its default.
	SpoolMaxBytesPerUser int64
	// SubmitFrom are the addresses of the submission servers allowed to
	// URLFETCH submit+USER URLs (BURL).
	SubmitFrom []netip.Prefix
	// Push, when set, wakes registered devices (docs/push.md); its
	// channels' IMAP faces come with it: DeviceToken owns METADATA's
	// /private/devicetoken entry, WebPush the IMAP WEBPUSH commands. Each
	// may be nil (push not configured; a channel not offered).
	Push        *push.Extension
	DeviceToken *devicetoken.Channel
	WebPush     *webpush.Extension
}

// Extensions returns the chain of protocol extensions every session gets,
// in the order the core calls them (see proxy.Extension): this list is to
// lemonproxy what plugin.cfg is to CoreDNS. The order is part of the
// design; change it only with a reason here.
//
//  1. idle owns IDLE, compress owns COMPRESS, namespace owns NAMESPACE,
//     language LANGUAGE and metadata GETMETADATA/SETMETADATA (where the
//     upstream lacks them):
//     commands no other extension sees, so their place does not matter;
//     first, so that the commands a session waits in are found at once.
//     listext owns LIST (extended LIST answered from plain LIST and LSUB
//     where the upstream lacks LIST-EXTENDED): no other extension sees
//     LIST, so its place does not matter either.
//     metadata also reads the outcome of DELETE and RENAME to drop or move
//     a mailbox's entries it keeps.
//  2. notify sees every command that changes mailboxes go by and reads its
//     outcome (x.Status) to announce the change to the account's other
//     sessions. It comes before condstore, which answers some of those
//     commands itself (a conditional STORE that stores nothing): notify
//     sees their outcome too.
//  3. catenate turns an APPEND with CATENATE (where the upstream lacks it,
//     or where the proxy does URLAUTH, which the upstream could not check)
//     into one plain APPEND: before uidplus, which then adds APPENDUID to
//     it as to any other; after notify, which reads APPEND's outcome.
//     It also owns MULTIAPPEND (RFC 3502, whose grammar CATENATE extends)
//     over an upstream with UIDPLUS but without MULTIAPPEND: a command of
//     several messages it appends one by one with its own connection and
//     answers itself, APPENDUID composed from the upstream's, so uidplus
//     (which would only see one message) never sees it; a single message
//     goes on to uidplus as before.
//     urlauth answers GENURLAUTH, RESETKEY and URLFETCH and reads DELETE
//     and RENAME outcomes: commands of its own, so its place does not
//     matter; it follows uidplus.
//  4. uidplus answers MOVE (and, where the upstream lacks UIDPLUS, adds
//     APPENDUID and COPYUID) with its own upstream commands: after
//     notify, which must see a MOVE's outcome to announce it; before
//     condstore, which stays last.
//  5. filters replaces FILTER name (RFC 5466) by the stored search
//     program, read through metadata: before within and esearch, since the
//     program may hold OLDER/YOUNGER, MODSEQ or $ that they then see as if
//     the client had sent them. Its substitution is a CommandRewriter, so
//     sequence numbers inside a filter mean what they mean in the command.
//  6. within replaces OLDER and YOUNGER (where the upstream lacks WITHIN)
//     by the UID sets they match, computed with its own searches: before
//     every other search rewriter, which then see a search they fully
//     understand.
//     casesearch (I18NLEVEL=1, where the upstream's SEARCH is not
//     i;unicode-casemap) replaces the substring keys of SEARCH, SORT and
//     THREAD by the UID sets they match, with its own searches and
//     fetches: after filters and within, whose keys it then sees as
//     plain UID sets (and inside FILTER's stored programs); before
//     contextsearch, esearch, sort and thread, which then see only keys
//     the upstream evaluates exactly, and whose updating contexts it
//     hands a matcher of the original keys (contextsearch.SetMatcher).
//  7. contextsearch keeps RFC 5267's updating searches alive (it needs
//     esearch, which parses RETURN and hands it UPDATE results). Its
//     expunge reports (REMOVEFROM, which must come before the EXPUNGE)
//     run before condstore's: the first ChangeReporter that reports
//     expunges stops the others, and contextsearch adds its lines and
//     passes on.
//  8. esearch turns an extended SEARCH (RETURN, SAVE) into the plain UID
//     SEARCH condstore handles, and writes the ESEARCH answer, MODSEQ
//     included, itself: before condstore. Searches the hub's state
//     decides (flags, UIDs, numbers, MODSEQ: extensions/internal/
//     statesearch) it answers itself and passes no further, so condstore
//     never sees them; it then writes their MODSEQ part too (only once
//     CONDSTORE is enabled; otherwise condstore enables it on the
//     upstream way). Its $ substitution is a CommandRewriter, before the
//     whole chain, so its place does not matter for that.
//  9. sort answers SORT (where the upstream lacks it) by sending its
//     search part down the chain as a plain UID SEARCH and sorting the
//     result on cached keys; ESORT's RETURN it writes with esearch's
//     writer: after within, which has already rewritten OLDER/YOUNGER
//     inside SORT, and before condstore, which then sees the plain UID
//     SEARCH with its MODSEQ key. Its SORT RETURN (UPDATE) contexts
//     (CONTEXT=SORT, Config.Contexts) are kept by contextsearch, which
//     is in this chain.
//     thread answers THREAD (where the upstream lacks the algorithm)
//     as sort answers SORT, with its search part sent down as a plain
//     UID SEARCH and the threads built on sort's cached keys (it is
//     given the sort extension): after within, before condstore, for
//     the same reasons as sort.
//  10. condstore rewrites FETCH, STORE, SEARCH, SORT, THREAD, STATUS and
//     EXPUNGE and answers the RFC 7162 parts from the proxy's state; late,
//     so the command it passes on goes (nearly) straight to the relay.
//  11. binary answers the BINARY items of a FETCH (where the upstream lacks
//     BINARY) and passes the rest on: after condstore, which has already
//     turned CHANGEDSINCE into the changed UIDs and taken MODSEQ out of
//     the items, so binary answers exactly the messages asked for and
//     MODSEQ still reaches the client through the core's reporting. A
//     FETCH without BINARY items costs it one substring check.
//  12. convert owns CONVERSIONS and CONVERT (RFC 5259), commands no other
//     extension sees; next to binary, which advertises the BINARY that
//     RFC 5259 requires with CONVERT.
//  13. webpush owns GETVAPID, WEBPUSH and ACKWEBPUSH, and push has no
//     command at all (it provisions, refreshes sealed credentials at
//     login, and stops its watchers at Close): their places do not
//     matter; last, where they cost the other commands nothing. The
//     device-token channel is METADATA's owner of /private/devicetoken,
//     so it reaches sessions through metadata (1.), not by a place here.
func Extensions(cfg Config) []proxy.Extension {
	urlfetch.SetSpoolDiskTotal(cfg.SpoolMaxBytes)
	urlfetch.SetSpoolDiskPerOwner(cfg.SpoolMaxBytesPerUser)
	owned := map[string]metadata.EntryOwner{}
	if cfg.DeviceToken != nil {
		owned[devicetoken.Entry] = cfg.DeviceToken
	}
	meta := metadata.New(metadata.Config{Owned: owned})
	ua := urlauth.New(urlauth.Config{Hosts: cfg.URLHosts, SubmitFrom: cfg.SubmitFrom})
	sorter := sortext.New(sortext.Config{Contexts: true})
	exts := []proxy.Extension{
		&idle.Extension{KeepAlive: cfg.IdleKeepAlive},
		&compress.Extension{Level: cfg.CompressLevel, MaxCompressors: cfg.CompressMaxCompressors},
		namespace.New(),
		language.New(),
		listext.New(),
		meta,
		notify.New(notify.Config{Accounts: accountwatch.Config{PollInterval: cfg.NotifyPollInterval, Grace: cfg.WatchGrace}, MaxQueued: cfg.NotifyMaxQueued}),
		catenate.New(catenate.Config{Hosts: cfg.URLHosts, Auth: ua}),
		uidplus.New(),
		ua,
		filters.New(meta),
		within.New(),
		casesearch.New(casesearch.Config{UpstreamCasemap: cfg.UpstreamSearchCasemap, MaxBytes: cfg.SearchMaxBytes}),
		contextsearch.New(contextsearch.Config{MaxBytes: cfg.ContextMaxBytes}),
		esearch.New(),
		sorter,
		thread.New(sorter),
		condstore.New(),
		binaryext.New(),
		convert.New(),
	}
	if cfg.WebPush != nil {
		exts = append(exts, cfg.WebPush)
	}
	if cfg.Push != nil {
		exts = append(exts, cfg.Push)
	}
	return exts
}
