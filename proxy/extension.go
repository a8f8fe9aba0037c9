package proxy

import (
	"context"
	"errors"
	"github.com/lemonproxy/lemonproxy/accountdata"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// An Extension adds protocol behaviour to every session. The session core
// knows no extension by name: it finds out what an extension does from the
// optional interfaces below, each one stage of a session's life with one
// contract, and calls every extension that implements it.
//
// Order. Config.Extensions is the chain, outermost first, as CoreDNS's
// plugin.cfg: where several extensions implement the same interface they
// are called in that order (a command passes through the CommandHandlers
// in it, each ResponseFilter sees what the one before it returned, the
// FETCH items of ChangeReporters appear in it). The order is one list,
// written down once (package extensions/chain), never the accident of registration.
//
// A CommandHandler may also implement PipelineSafe (ahead.go): the
// commands it says it only restates and passes on may go upstream before
// the previous command's answers are relayed.
//
// The model is CoreDNS's plugins for the chain and Caddy's modules for the
// lifecycle: everything about NOTIFY, say, lives in one package under
// extensions/ and is wired in by its place in the chain.
type Extension interface {
	// Name identifies the extension in logs, metrics and errors.
	Name() string
}

// Provisioner is given, once, when the server is built, the services the
// core offers extensions beyond the session they are called for: the
// mailbox service (state, watchers and refreshes of any mailbox of an
// account). An error stops NewServer.
type Provisioner interface {
	Provision(svc Services) error
}

// Services are what Provisioner receives.
type Services struct {
	Mailboxes *MailboxService
	// Data keeps records per account (Config.AccountData); each extension
	// uses a key prefix of its own, named in its package documentation.
	Data accountdata.Store
	// Upstream opens connections for the extension's own logins, without
	// a session of the account (push's watchers of registered accounts).
	Upstream *UpstreamService
	// Placement lets an extension keep accounts on this node without a
	// session, in a cluster (Config.Router implements it); nil on a
	// single node, where every account is this node's.
	Placement Placement
}

// CapabilityProvider adds capability words to CAPABILITY responses. up holds
// the upstream's capabilities (nil before authentication), so an extension can
// advertise only what works end to end.
type CapabilityProvider interface {
	Capabilities(state State, up upstream.Caps) []string
}

// CommandHandler is a link of the command chain. Commands names the
// commands it sees (upper case; "UID FETCH" is its own name). For each
// such command the core makes an Exchange and passes it down the chain:
// each handler may
//   - answer the command itself (x.Reply, and any untagged responses
//     before it) and return without calling next;
//   - change the command on its way upstream (x.Segments), filter the
//     untagged answers (x.Filter) or the tagged one (x.OnTagged), then call
//     next;
//   - look at the outcome after next returned (x.Status);
//   - wait for the client's next line without holding the session's
//     goroutine (IDLE's DONE): return Session.AwaitLine's result and
//     answer from its continuation. Handlers before it then see the
//     command return still unanswered.
//
// The end of the chain is the core: its own commands (SELECT, NOOP...) or
// the relay to the upstream. In the selected state commands with sequence
// numbers reach the chain already in their UID form (x.Segments), with
// x.Name still what the client sent.
//
// APPEND is streamed from client to upstream (x.Streamed): its segments
// hold only the first line and must not be changed. Every other command is
// read whole first, up to the inline literal limit.
//
// A returned error ends the session (after a BYE if the client is still
// there); protocol-level failures are answered with NO or BAD instead.
type CommandHandler interface {
	Commands() []string
	ServeCommand(ctx context.Context, x *Exchange, next Next) error
}

// CommandRewriter restates a command of the selected state in the client's
// own terms before the core translates its sequence numbers into UIDs: the
// one stage where a client's message set can still be something only an
// extension understands. SEARCHRES's "$" (RFC 5182) is such a set: it names
// the messages of a search the extension saved, and must become numbers
// before the core's translation reads them, for every command that takes a
// set (FETCH, STORE, COPY, MOVE, UID EXPUNGE, search keys).
//
// RewriteCommand is called, in chain order, for every command of the
// selected state the core translates (not the core's own commands such as
// SELECT, nor an extension's own such as IDLE). It returns the command's
// new segments, tag included, or nil to leave it as it is; they replace
// what the client sent for everything after (x.Command, the translation,
// the CommandHandlers). A returned ErrNoMessages says the command names no
// message at all: the core answers it with OK without running it, as RFC
// 5182 2.1 wants of "FETCH $" after a search that found nothing. Any other
// error is answered with BAD.
type CommandRewriter interface {
	RewriteCommand(s *Session, cmd *imapcodec.Command) ([]imapcodec.Segment, error)
}

// ErrNoMessages is what a CommandRewriter returns for a command whose
// message set is empty (see CommandRewriter). IMAP's grammar has no empty
// set, so the core could not send such a command anywhere.
var ErrNoMessages = errors.New("proxy: the command names no message")

// SequenceCommander names an extension's commands that, as FETCH does,
// take a message sequence set as their first argument and have a UID form
// ("UID name"): CONVERT (RFC 5259). The core treats them as it treats
// FETCH in the selected state: the client's sequence numbers are
// translated into UIDs before any change is reported to the client, the
// command reaches the chain as "UID name uids ..." (x.Segments, x.Name
// still the client's), and no EXPUNGE is sent while the sequence-number
// form runs (RFC 3501 7.4.1). Without this the core would report pending
// expunges first and then read the client's numbers against the changed
// view. The names are those of the sequence-number form, without "UID ".
type SequenceCommander interface {
	SequenceCommands() []string
}

// Next passes an exchange on down the command chain.
type Next func(ctx context.Context, x *Exchange) error

// Enabler accepts names of the ENABLE command (RFC 5161). Enable is called for
// each name the client asks for, in chain order until one accepts it; it
// returns true if the name is now enabled, and then the session lists it in
// its untagged ENABLED response.
type Enabler interface {
	Enable(s *Session, name string) bool
}

// ResponseFilter sees every untagged response relayed from the upstream
// before the client does, after the core's own rewriting and the current
// exchange's filters. It may return resp unchanged, a replacement, or nil
// to drop it. When resp.Streamed is true the response carries a literal too
// large to hold in memory; only its first segment is present and the filter
// must return it or nil, changing at most that segment's Text (the line up
// to the literal, which the core writes before streaming the literal: a
// CONVERTED response's message number and TAG, say), never its Literal.
//
// The Data of a response's segments (the literals the core holds in
// memory) is valid only until the filter returns: the core reuses those
// buffers once the response is written. A filter that keeps bytes of a
// literal copies them.
type ResponseFilter interface {
	FilterResponse(s *Session, resp *Response) *Response
}

// SessionHook follows a session's life, so an extension can set up and
// release per-session resources and push what it has queued.
type SessionHook interface {
	// StateChanged is called after the session entered state.
	StateChanged(s *Session, state State)
	// SessionClosed is called once, when the session ends.
	SessionClosed(s *Session)
	// Push writes what the extension has queued for the session (NOTIFY's
	// events). The core calls it, on the session's goroutine, whenever the
	// session may send unsolicited responses after the extension called
	// Session.Wake: between commands and during IDLE.
	Push(s *Session) error
}

// SelectHook implements SELECT and EXAMINE parameters (RFC 4466 2.4, such
// as CONDSTORE and QRESYNC) and is told around the mailbox switch.
//
// SelectParam is called for each parameter named by SelectParams, before
// the upstream sees the command (which never gets the parameters: it gets a
// plain SELECT); arg is nil when the parameter has no value. Its result is
// what SelectOpened gets under the parameter's name; an error is answered
// with BAD and the selected mailbox stays as it was. SelectClosing is called
// when the command closes a mailbox the client had selected, before any of
// the new mailbox's responses; SelectOpened after the new mailbox's untagged
// responses and before the tagged OK, so it may add responses of its own.
type SelectHook interface {
	SelectParams() []string
	SelectParam(s *Session, name string, arg imapcodec.List) (any, error)
	SelectClosing(s *Session)
	SelectOpened(s *Session, params map[string]any) error
}

// ChangeReporter shapes what a session reports about its selected mailbox:
// every FETCH response the session sends (relayed answers and unsolicited
// flag changes) and expunges. Several compose: items are joined in chain
// order, the first reporter to report expunges reports them, and every
// reporter's held-expunge response and batch end is sent, in chain order.
type ChangeReporter interface {
	// FetchItems returns data items to add after the UID item of a FETCH
	// response about uid (for example "MODSEQ (12)"), or nil; unsolicited
	// is true for the core's own reports of flag changes. A non-nil
	// result, even empty, keeps the UID item even if the client did not
	// ask for it. The answers to STORE .SILENT are reported with UID and
	// these items when there are any.
	FetchItems(s *Session, uid uint32, unsolicited bool) []byte
	// ReportExpunged appends its own report of expunged messages (UIDs
	// and the client's sequence numbers, in descending sequence order) to
	// b and returns true, or returns false to let the next reporter or
	// the core (EXPUNGE) report them.
	ReportExpunged(s *Session, b []byte, uids, seqs []uint32) ([]byte, bool)
	// ExpungesHeld is called when expunges must wait (during FETCH, STORE
	// and SEARCH); it returns a response to send now, or nil.
	ExpungesHeld(s *Session) []byte
	// BatchDone appends what follows a batch of changes the core has
	// just reported (b holds the batch; the client's view and mod-sequence
	// are already those after it); x is the command the batch answers,
	// nil for a push between commands. uncovered tells whether the batch
	// reported expunges with a mod-sequence above every flag change it
	// reported: no MODSEQ the client was told covers them, and QRESYNC
	// closes such a batch with the mailbox's HIGHESTMODSEQ.
	BatchDone(s *Session, x *Exchange, b []byte, uncovered bool) []byte
}

// Response is an untagged response on its way from the upstream to a client.
type Response struct {
	Head     imapcodec.ResponseHead
	Segments []imapcodec.Segment
	// Streamed is set when the response has a literal too large to be held
	// in memory, see ResponseFilter.
	Streamed bool
}

// State is the RFC 3501 connection state of a session.
type State int

const (
	StateNotAuthenticated State = iota
	StateAuthenticated
	StateSelected
	StateLogout
)

func (s State) String() string {
	switch s {
	case StateNotAuthenticated:
		return "not-authenticated"
	case StateAuthenticated:
		return "authenticated"
	case StateSelected:
		return "selected"
	case StateLogout:
		return "logout"
	}
	return "unknown"
}
