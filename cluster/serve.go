package cluster

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// handshakeTimeout bounds a link's authentication and request: a peer
// that connects and says nothing must not hold a slot.
const handshakeTimeout = 10 * time.Second

// Serve accepts internal links on ln until Close or Abandon (then it
// returns ErrClosed) or until ln fails. Each link carries one session
// handed over by another node: it is accepted when this node owns the
// account or acquires it now (not while fenced or draining), and then
// served by the Host until the session ends. A hand-off is never forwarded
// again, so a disagreement between nodes costs a retry, never a loop.
func (n *Node) Serve(ln net.Listener) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	n.listeners[ln] = struct{}{}
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.listeners, ln)
		n.mu.Unlock()
	}()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			n.mu.Lock()
			closed := n.closed
			n.mu.Unlock()
			if closed {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: back off and keep
			// going, as the client listener does. Returning would leave a
			// live node that owns accounts no other node can reach.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			n.log.Error("cluster: accepting an internal link failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		select {
		case n.linkSlots <- struct{}{}:
		default:
			n.log.Warn("cluster: too many internal links; refusing one", "max", n.cfg.MaxLinks, "from", conn.RemoteAddr())
			conn.Close()
			continue
		}
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			conn.Close()
			<-n.linkSlots
			return ErrClosed
		}
		n.linkConns[conn] = struct{}{}
		n.goLocked(func() {
			defer func() {
				conn.Close()
				n.mu.Lock()
				delete(n.linkConns, conn)
				n.mu.Unlock()
				<-n.linkSlots
			}()
			n.serveLink(conn)
		})
		n.mu.Unlock()
	}
}

// serveLink answers one hand-off and serves its session.
func (n *Node) serveLink(conn net.Conn) {
	ctx, cancel := context.WithTimeout(n.ctx, handshakeTimeout)
	req, err := n.links.accept(ctx, conn)
	cancel()
	if err != nil {
		n.log.Warn("cluster: internal link refused", "from", conn.RemoteAddr(), "err", err)
		return
	}
	h := req.handoff()
	host := n.hostOf()
	if host == nil {
		req.reply(replyUnavailable)
		return
	}
	ctx, cancel = context.WithTimeout(n.ctx, handshakeTimeout)
	a, err := n.acquire(ctx, h.Account, nil)
	cancel()
	switch {
	case errors.Is(err, errNotAcquired):
		req.reply(replyNotOwner)
		return
	case err != nil:
		n.mu.Lock()
		draining := n.draining
		n.mu.Unlock()
		if draining {
			// The forwarding node re-resolves: the account is free or
			// soon will be.
			req.reply(replyNotOwner)
		} else {
			req.reply(replyUnavailable)
		}
		return
	}
	release := n.releaser(a)
	defer release()
	n.handoffsIn.Add(1)
	stream, err := req.reply(replyOK)
	if err != nil {
		n.log.Warn("cluster: internal link lost before the session", "from", req.from(), "err", err)
		return
	}
	host.ServeHandoff(stream, h)
}

// transport is the internal link protocol (package cluster/link), behind
// an interface so that the routing is testable on its own.
type transport interface {
	dial(ctx context.Context, addr, from string, h proxy.Handoff) (net.Conn, replyKind, error)
	accept(ctx context.Context, conn net.Conn) (linkRequest, error)
}

type linkRequest interface {
	from() string
	handoff() proxy.Handoff
	reply(replyKind) (net.Conn, error)
}

type replyKind int

const (
	replyOK replyKind = iota
	replyNotOwner
	replyUnavailable
)
