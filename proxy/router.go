package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// A Router places each account's sessions on the one node that serves the
// account, when several proxy nodes share a user base (cluster mode,
// package cluster). The core knows no more of clusters than this: at login
// it asks the Router where the account is served, and either serves the
// session itself or hands it over and copies bytes.
type Router interface {
	// Route is called when a client logs in (LOGIN or AUTHENTICATE), before
	// any upstream is asked, once the login's turn behind the failed-login
	// delays of its address and account has come (routing may write to the
	// cluster's database: it must not go at the rate a client tries
	// names). It returns:
	//   - a nil conn and a release function: this node serves the account
	//     now (it owned it or has just taken it over); release is called
	//     once, when the session ends;
	//   - a conn: the owner accepted the hand-off h over the internal link
	//     conn and will answer the login itself: its first line on conn is
	//     the tagged answer to h.Tag. Afterwards conn carries the session's
	//     IMAP stream both ways;
	//   - an error: the account cannot be served now (no owner reachable,
	//     the database unreachable, this node fenced); the client gets
	//     NO [UNAVAILABLE].
	Route(ctx context.Context, h Handoff) (conn net.Conn, release func(), err error)
}

// An Owner is a Router that can tell whether this node still serves an
// account and is not giving it up (cluster.Node.Owns). A login checks it
// once the session counts as the account's at this node (visible to
// Server.evict): an eviction that began before that point, and so did not
// see the session, shows here instead.
type Owner interface {
	Owns(account string) bool
}

// A LoginReporter is a Router that is told of each login that succeeded
// on this node (cluster.Node: the row of an account seen for the first
// time stays only if someone logged in as it; a client trying made-up
// names must not grow the shared database for good).
type LoginReporter interface {
	LoginSucceeded(account string)
}

// Handoff is what a node tells the owner of an account about a session it
// hands over: the login to run and the session's pre-login facts.
type Handoff struct {
	// Account is the account key (Config.UsernameFormat applied).
	Account string
	// Tag, User and Pass are the login command's; the owner answers with
	// Tag.
	Tag, User, Pass string
	// Addr is the client's address, TLS whether its connection is under TLS
	// (at the forwarding node, which keeps the TLS session).
	Addr netip.Addr
	TLS  bool
	// Via names the node that forwards, for logs.
	Via string
}

// ErrUnavailable is returned by a Router when the account cannot be served
// now.
var ErrUnavailable = errors.New("proxy: account unavailable in the cluster now")

// ServeHandoff serves a session that another node handed over on conn
// (cluster mode): it runs h's login with the facts of h as if the client
// had sent it here, and answers it on conn with h.Tag. On success the
// session goes on over conn like any other; otherwise conn is closed after
// the answer (the forwarding node keeps the client). It returns when the
// session ends.
func (s *Server) ServeHandoff(conn net.Conn, h Handoff) {
	s.serveHandoff(conn, h)
}

// Evict ends every session of account ("" for every session that logged
// in) with "* BYE [UNAVAILABLE] text", and then stops the account's
// mailbox watchers and forgets its in-memory mailbox states and pooled
// upstream connections, so that a later owner of the account starts from
// the shared store. It returns when all that is done or ctx ends. Cluster
// mode calls it when the account moves to another node or this node
// fences itself.
func (s *Server) Evict(ctx context.Context, account, text string) error {
	return s.evict(ctx, account, text)
}

// Placement is what a Router may offer extensions that keep accounts
// busy without a session (push watches registered accounts while nobody
// is logged in). A Router that implements it is handed to every
// Provisioner in Services.Placement; with no Router (one node) that field
// is nil and every account is served here.
//
// In a cluster an account is served by one node at a time, and a node
// keeps an account only while it has sessions of it. A holder that is
// not a session asks to keep an account on this node with HoldAccount: it
// is then counted like a session (the account is not released while it is
// held), and sessions of the account that log in at other nodes are
// handed to this one. Which accounts a node should hold is the holder's
// choice: PreferredHere tells the node the cluster would give a free
// account to, so that each node holds its share, and PlacementChanged
// tells when to look again (a node died, joined or began draining, or this
// node may serve again after it fenced itself).
type Placement interface {
	// HoldAccount keeps account on this node, taking it if it is free,
	// already this node's, or its owner's lease has expired. It fails
	// (wrapping ErrHeldElsewhere) while another live node owns the
	// account, and with ErrUnavailable while this node takes no accounts
	// (fenced, draining, closing). On success release ends the hold
	// (idempotent), and lost is called once, holding no lock of the
	// Router, if the account leaves this node first (drain, fencing, takeover,
	// shutdown): before its sessions are evicted and its watchers
	// stopped, so that the holder stops using the account before the
	// core forgets it. After lost the holder must not use the account
	// until it holds it again; calling release then is harmless.
	HoldAccount(ctx context.Context, account string, lost func()) (release func(), err error)
	// PreferredHere reports whether this node is the one a free account
	// goes to among the live nodes it knows of.
	PreferredHere(account string) bool
	// PlacementChanged returns a channel that is closed at the next
	// change of the live nodes (one died, joined, began or ended
	// draining) or when this node serves again after fencing itself.
	PlacementChanged() <-chan struct{}
}

// ErrHeldElsewhere is returned by Placement.HoldAccount when another live
// node owns the account.
var ErrHeldElsewhere = errors.New("proxy: account owned by another live node")
