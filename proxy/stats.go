package proxy

import "sync/atomic"

// ErrorKind classifies what went wrong, for the operator's metrics.
type ErrorKind int

const (
	ErrAuthFailed          ErrorKind = iota // a login the upstream refused
	ErrUpstreamUnavailable                  // no upstream connection could be had
	ErrClientTimeout                        // a client silent past its timeout
	ErrLineTooLong                          // a client line over the limit
	ErrLiteralTooLarge                      // a client literal or command over a limit: NO [TOOBIG], or BYE past MaxLiteral
	ErrSessionFailed                        // a session ended by another error (upstream loss, corrupt input...)
	ErrTooManyConns                         // a connection over the per-address limit
	ErrTooManySessions                      // a login over the per-account limit
	ErrPreAuthCommands                      // a client over the command limit before login
	ErrClusterUnavailable                   // a login no node of the cluster could serve now
	numErrorKinds
)

var errorKindNames = [numErrorKinds]string{"auth_failed", "upstream_unavailable", "client_timeout", "line_too_long", "literal_too_large", "session_failed",
	"too_many_connections", "too_many_sessions", "preauth_commands", "cluster_unavailable"}

func (k ErrorKind) String() string { return errorKindNames[k] }

// Stats is a snapshot of the server for metrics.
type Stats struct {
	// SessionsByState counts open sessions per State, but for those
	// forwarded to another node (cluster mode), which count there.
	SessionsByState [StateLogout + 1]int
	// Forwarded counts sessions whose client logged in here and which
	// another node serves (cluster mode): this node copies their bytes.
	Forwarded int
	// UpstreamLeased counts sessions holding an upstream connection now.
	UpstreamLeased int
	// UpstreamIdle counts pooled idle upstream connections.
	UpstreamIdle int
	// Watchers counts the hub's mailbox watchers (one upstream connection
	// each).
	Watchers int
	// SessionsOpened counts sessions since start.
	SessionsOpened int64
	// Errors counts errors since start, by ErrorKind.
	Errors [numErrorKinds]int64
	// LiteralBytesSpliced counts the bytes of large literals in responses
	// (streamed, see ResponseFilter) that moved from the upstream's socket
	// to the client's by splice(2), without passing through the proxy;
	// LiteralBytesCopied those copied through it (TLS or COMPRESS on a
	// side, or another platform). Literals the proxy holds whole in
	// memory count in neither.
	LiteralBytesSpliced, LiteralBytesCopied int64
	// CommandsAhead counts client commands sent upstream before the
	// answers to the command before them were relayed (pipelined FETCHes,
	// ahead.go).
	CommandsAhead int64
	// CatchUps counts the NOOPs leased connections ran to catch up with
	// the selected mailbox before a command; CatchUpsSkipped the commands
	// that went without one although the mailbox had changed, because
	// they relied on nothing that changed (catchup.go).
	CatchUps, CatchUpsSkipped int64
}

// ErrorKinds lists every ErrorKind, for exporting Stats.Errors.
func ErrorKinds() []ErrorKind {
	out := make([]ErrorKind, numErrorKinds)
	for i := range out {
		out[i] = ErrorKind(i)
	}
	return out
}

// serverCounters are the Server's counters.
type serverCounters struct {
	opened                        atomic.Int64
	errs                          [numErrorKinds]atomic.Int64
	literalSpliced, literalCopied atomic.Int64
	ahead                         atomic.Int64
	catchUps, catchUpsSkipped     atomic.Int64
}

func (s *Server) countError(k ErrorKind) { s.counters.errs[k].Add(1) }

// Stats returns a snapshot of the server's sessions, upstream connections
// and counters. It walks the sessions: cheap at a scrape every few
// seconds, not meant for a hot path.
func (s *Server) Stats() Stats {
	var st Stats
	s.mu.Lock()
	for sess := range s.sessions {
		if sess.forwarded.Load() {
			st.Forwarded++
			continue
		}
		st.SessionsByState[sess.stateMirror.Load()]++
		if sess.leased.Load() {
			st.UpstreamLeased++
		}
	}
	s.mu.Unlock()
	st.UpstreamIdle = s.pool.Idle()
	st.Watchers = s.hub.Watchers()
	st.SessionsOpened = s.counters.opened.Load()
	st.LiteralBytesSpliced = s.counters.literalSpliced.Load()
	st.LiteralBytesCopied = s.counters.literalCopied.Load()
	st.CommandsAhead = s.counters.ahead.Load()
	st.CatchUps = s.counters.catchUps.Load()
	st.CatchUpsSkipped = s.counters.catchUpsSkipped.Load()
	for i := range st.Errors {
		st.Errors[i] = s.counters.errs[i].Load()
	}
	return st
}
