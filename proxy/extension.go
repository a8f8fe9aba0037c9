package proxy

import (
	"context"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// An Extension adds protocol behaviour to every session. The session core
// knows no extension by name: it asks each registered extension, in order,
// for its capability words, its commands, the ENABLE names it accepts and
// what it wants to do with relayed responses, through the optional
// interfaces below. An extension implements only those it needs.
//
// The model is a CoreDNS plugin or a Caddy module: everything about NOTIFY,
// say, lives in one package under extensions/ and is wired in by adding it to
// Config.Extensions.
type Extension interface {
	// Name identifies the extension in logs and metrics.
	Name() string
}

// CapabilityProvider adds capability words to CAPABILITY responses. up holds
// the upstream's capabilities (nil before authentication), so an extension can
// advertise only what works end to end.
type CapabilityProvider interface {
	Capabilities(state State, up upstream.Caps) []string
}

// CommandHandler implements client commands. Commands returns the upper-cased
// names it handles ("IDLE", "UID FETCH"); the first extension to claim a name
// wins. Handle is called with the whole command read (literals included, up to
// the inline literal limit); it must write the tagged response itself.
//
// A returned error ends the session (after a BYE if the client is still
// there); protocol-level failures are answered with NO or BAD instead.
type CommandHandler interface {
	Commands() []string
	Handle(ctx context.Context, s *Session, cmd *imapcodec.Command) error
}

// Enabler accepts names of the ENABLE command (RFC 5161). Enable is called for
// each name the client asks for; it returns true if the name is now enabled,
// and then the session lists it in its untagged ENABLED response.
type Enabler interface {
	Enable(s *Session, name string) bool
}

// ResponseFilter sees every untagged response relayed from the upstream
// before the client does. It may return resp unchanged, a replacement, or nil
// to drop it. When resp.Streamed is true the response carries a literal too
// large to hold in memory; only its first segment is present and the filter
// must return it unchanged or nil.
type ResponseFilter interface {
	FilterResponse(s *Session, resp *Response) *Response
}

// SessionHook is told when sessions change state, so an extension can set up
// and release per-session resources.
type SessionHook interface {
	// StateChanged is called after the session entered state.
	StateChanged(s *Session, state State)
	// SessionClosed is called once, when the session ends.
	SessionClosed(s *Session)
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

// SelectParamHandler implements parameters of SELECT and EXAMINE (RFC 4466
// 2.4), such as CONDSTORE and QRESYNC. The core parses the parameter list;
// each parameter is an atom, optionally followed by a parenthesised value
// (arg is nil when there is none). SelectParam is called before the
// upstream sees the command and returns what SelectHook.SelectOpened will
// get for the parameter; an error is answered with BAD and the selected
// mailbox stays as it was. Parameters are never relayed: the upstream gets
// a plain SELECT.
type SelectParamHandler interface {
	SelectParams() []string
	SelectParam(s *Session, name string, arg imapcodec.List) (any, error)
}

// SelectHook is told around SELECT and EXAMINE. SelectClosing is called when
// the command closes a mailbox the client had selected (before any of the
// new mailbox's responses); SelectOpened after the new mailbox's untagged
// responses were written and before the tagged OK, so it may add responses
// of its own (RFC 7162's HIGHESTMODSEQ, VANISHED (EARLIER), FETCH). params
// holds what SelectParam returned, by parameter name.
type SelectHook interface {
	SelectClosing(s *Session)
	SelectOpened(s *Session, params map[string]any) error
}

// CommandRewriter changes client commands before they are relayed. It sees
// the commands named by RewriteCommands (the client's names, "FETCH",
// "UID FETCH", "STATUS"...) in the authenticated and selected states, read
// whole, and in the selected state already translated into their UID form.
// It may change c.Segments, answer the command itself (c.Answer), set the
// code of the tagged OK (c.OKCode) and keep per-command data in c.Data for
// its ResponseFilter (see Session.Relayed). An error is answered with BAD
// and the command is not relayed.
type CommandRewriter interface {
	RewriteCommands() []string
	RewriteCommand(s *Session, c *Relayed) error
}

// ChangeReporter shapes what a session reports about its selected mailbox:
// every FETCH response the session sends (relayed answers and unsolicited
// flag changes) and expunges.
type ChangeReporter interface {
	// FetchItems returns data items to add after the UID item of a FETCH
	// response about uid (for example "MODSEQ (12)"), or nil. When it
	// returns items the UID item is kept even if the client did not ask
	// for it, and the answers to STORE .SILENT are reported with UID and
	// these items alone.
	FetchItems(s *Session, uid uint32) []byte
	// ReportExpunged appends its own report of expunged messages (UIDs
	// and the client's sequence numbers, in descending sequence order) to
	// b and returns true, or returns false to let the core send EXPUNGE.
	ReportExpunged(s *Session, b []byte, uids, seqs []uint32) ([]byte, bool)
	// ExpungesHeld is called when expunges must wait (during FETCH, STORE
	// and SEARCH); it returns a response to send now, or nil.
	ExpungesHeld(s *Session) []byte
}

// Relayed is a client command on its way upstream, for CommandRewriter.
type Relayed struct {
	Tag  string
	Name string // the client's command name, upper case
	// Segments is what will be sent upstream, the tag included.
	Segments []imapcodec.Segment
	// Answer, when set by a rewriter, is the tagged response: the command
	// is not relayed, and the core reports mailbox changes before it as
	// after any command.
	Answer *imapcodec.ResponseHead
	// OKCode replaces the response code of the tagged OK (for example
	// "MODIFIED 7,9").
	OKCode string
	// OKCodeFunc, if set and OKCode is not, gives the code of the tagged
	// OK, computed after the command's own changes were reported to the
	// client (QRESYNC's HIGHESTMODSEQ after EXPUNGE); "" keeps the
	// upstream's.
	OKCodeFunc func() string
	// Data is the rewriter's own, for its response filter.
	Data any
}

// Pusher sends what an extension has queued for a session (NOTIFY's
// events) whenever the session may send unsolicited responses: between
// commands and during IDLE. The extension calls Session.Wake when it has
// something; Push runs on the session's goroutine.
type Pusher interface {
	Push(s *Session) error
}

// CommandObserver is told of every relayed command once it has been
// answered: its name, the text of its first line (the tag included), and
// the status of the tagged response ("OK", "NO", "BAD", or "" if the
// command failed without one). NOTIFY uses it to learn of changes a session
// made itself.
type CommandObserver interface {
	CommandDone(s *Session, name string, line []byte, status string)
}
