package proxy

import (
	"context"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy/upstream"
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
