package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/internal/recovery"
)

// Cluster mode, the core's side (see Router). A login on a node that does
// not serve the account is handed to the node that does, over an internal
// link; from the owner's tagged OK on, this node only copies bytes between
// the client and the link (TLS stays here, everything else runs at the
// owner). A login the owner refuses leaves the client here, not logged
// in, as after any failed login.

// errForwardEnded ends a session whose bytes were copied to another node:
// the client or the owner closed, and there is nothing left to say (a BYE
// from here could land in the middle of the owner's response).
var errForwardEnded = errors.New("forwarded session ended")

// Limits of the forwarding node's part.
const (
	// handoffAnswerTimeout bounds the wait for the owner's answer to the
	// login: the upstream's login plus the failed-login delay.
	handoffAnswerTimeout = 90 * time.Second
	// maxHandoffAnswer bounds the owner's answer line (a tagged OK with
	// its CAPABILITY list is a few hundred bytes).
	maxHandoffAnswer = 16 << 10
	// forwardBufSize is the copy buffer, taken from a pool only while
	// bytes flow (see pipe).
	forwardBufSize = 32 << 10
	// forwardDrain is how long the owner may still send once the client
	// stopped sending.
	forwardDrain = 5 * time.Second
)

// route asks the Router where account is served. It answers the login
// itself when the account is served elsewhere (handing the session over)
// or nowhere now, and then tells turn the outcome; local reports that
// this node serves it, and release is to be called when the session ends
// (or its login fails here).
func (s *Session) route(ctx context.Context, tag, user, pass, account string, turn *loginTurn) (local bool, release func(), err error) {
	h := Handoff{Account: account, Tag: tag, User: user, Pass: pass, Addr: s.addr, TLS: s.isTLS}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, release, err := s.srv.cfg.Router.Route(rctx, h)
	cancel()
	if err != nil {
		turn.finish(loginError, 0)
		s.srv.countError(ErrClusterUnavailable)
		s.log.Warn("no node can serve the account now", "user", user, "err", err)
		return false, nil, s.WriteStatus(tag, "NO", "UNAVAILABLE", "This account cannot be served right now; try again shortly.")
	}
	if conn == nil {
		if release == nil {
			release = func() {}
		}
		return true, release, nil
	}
	return false, nil, s.forward(ctx, conn, tag, turn)
}

// forward relays the owner's answer to the login handed over on conn and,
// if it is OK, copies bytes between the client and conn until either
// ends (then errForwardEnded ends the session). Any other answer is
// passed on and the session stays here, not logged in. The answer's
// outcome is told to turn: the owner's AUTHENTICATIONFAILED counts as a
// failure of the client's address here (the owner has delayed it by its
// own count already; this node's may hold it a little longer), so that
// the next login from the address waits before it is routed.
func (s *Session) forward(ctx context.Context, conn net.Conn, tag string, turn *loginTurn) error {
	conn.SetReadDeadline(time.Now().Add(handoffAnswerTimeout))
	br := bufio.NewReaderSize(conn, 4096)
	var ok bool
	for range 32 { // untagged lines before the answer are passed on
		line, err := readBoundedLine(br, maxHandoffAnswer)
		if err != nil {
			conn.Close()
			s.srv.countError(ErrClusterUnavailable)
			s.log.Warn("the owning node did not answer the login", "err", err)
			return s.WriteStatus(tag, "NO", "UNAVAILABLE", "This account cannot be served right now; try again shortly.")
		}
		rest, tagged := bytes.CutPrefix(line, []byte(tag+" "))
		if tagged {
			ok = bytes.HasPrefix(bytes.ToUpper(rest), []byte("OK"))
			if err := s.tellForwarded(ctx, turn, ok, rest); err != nil {
				conn.Close()
				return err
			}
		}
		if ok {
			// The session is forwarded before the client can hear it is
			// logged in, as a local login's state changes before its OK
			// is written: once the client holds the OK, Stats counts the
			// session as forwarded (not as one not logged in), and
			// Shutdown closes it without a BYE of this node's, as any
			// forwarded session.
			s.forwarded.Store(true)
		}
		if err := s.Write(line); err != nil {
			conn.Close()
			return err
		}
		if tagged {
			break
		}
	}
	if !ok {
		conn.Close()
		return nil
	}
	conn.SetReadDeadline(time.Time{})
	if err := s.Flush(); err != nil {
		conn.Close()
		return err
	}
	s.log.Info("logged in; session forwarded to the owning node")
	// What the client pipelined behind its login, and what the owner sent
	// behind its answer, go first.
	if pending := s.r.TakeBuffered(); len(pending) > 0 {
		if _, err := conn.Write(pending); err != nil {
			conn.Close()
			return errForwardEnded
		}
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		s.nc.SetWriteDeadline(time.Time{})
		if _, err := s.nc.Write(b); err != nil {
			conn.Close()
			return errForwardEnded
		}
	}
	s.nc.SetDeadline(time.Time{})
	var wg sync.WaitGroup
	wg.Go(func() {
		pipe(conn, s.nc)
		// The client is done sending: the owner reads the end of its
		// stream, and has a little while to get its last responses out
		// (a LOGOUT's BYE and OK) before the link is cut, so that an owner
		// that does not answer cannot hold this session up.
		closeWrite(conn)
		conn.SetReadDeadline(time.Now().Add(forwardDrain))
	})
	pipe(s.nc, conn)
	s.nc.Close() // the owner ended: so does the client's connection
	conn.Close()
	wg.Wait()
	return errForwardEnded
}

// tellForwarded tells turn the outcome of a handed-over login from the
// owner's tagged answer (rest: after the tag) and, for a failure, waits
// until this node's failed-login delay allows the answer.
func (s *Session) tellForwarded(ctx context.Context, turn *loginTurn, ok bool, rest []byte) error {
	switch {
	case ok:
		turn.finish(loginOK, 0)
	case bytes.HasPrefix(bytes.ToUpper(rest), []byte("NO [AUTHENTICATIONFAILED]")):
		at := turn.finish(loginFailed, s.cfg.AuthFailureDelay)
		if d := time.Until(at); d > 0 {
			s.Flush()
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	default:
		turn.finish(loginError, 0)
	}
	return nil
}

// readBoundedLine reads one CRLF-terminated line of at most max bytes.
func readBoundedLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > max {
			return nil, fmt.Errorf("answer longer than %d bytes", max)
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

var forwardBufs = sync.Pool{New: func() any { b := make([]byte, forwardBufSize); return &b }}

// pipe copies src to dst until either fails. A forwarded session is idle
// most of its life, so pipe waits for each burst with a one-byte read and
// holds a copy buffer only while bytes flow: an idle forwarded session
// costs two goroutines and no buffer.
func pipe(dst, src net.Conn) {
	var probe [1]byte
	for {
		n, err := src.Read(probe[:])
		if n == 0 {
			if err != nil {
				return
			}
			continue
		}
		bp := forwardBufs.Get().(*[]byte)
		buf := *bp
		buf[0] = probe[0]
		m := 1
		if err == nil {
			// The rest of the burst is usually there already (one TCP
			// segment, one TLS record).
			var k int
			k, err = src.Read(buf[1:])
			m += k
		}
		_, werr := dst.Write(buf[:m])
		forwardBufs.Put(bp)
		if werr != nil || err != nil {
			return
		}
	}
}

// closeWrite half-closes conn where it can, so the peer reads EOF while
// its own bytes still come back.
func closeWrite(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	conn.Close()
}

// serveHandoff registers and runs, in the caller's goroutine, a session
// handed over by another node.
func (s *Server) serveHandoff(conn net.Conn, h Handoff) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		conn.Close()
		return
	}
	sess := newSession(s, conn, h.TLS)
	sess.addr = h.Addr
	sess.handedOff = true
	sess.log = s.log.With("session", sess.id, "remote", h.Addr.String(), "via", h.Via)
	s.sessions[sess] = struct{}{}
	s.counters.opened.Add(1)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
	}()
	defer recovery.Recover(recovery.Session, sess.log, func(error) { sess.hangUp() })
	sess.serveHandedOff(s.ctx, h)
}

// serveHandedOff runs the login of h and, if it succeeds, the session as
// any other. A failed login's answer went to the forwarding node, which
// keeps the client: the link then ends.
func (s *Session) serveHandedOff(ctx context.Context, h Handoff) {
	defer s.cleanup()
	s.preAuthEnd = time.Now().Add(s.cfg.PreAuthTimeout)
	err := s.authenticate(ctx, h.Tag, h.User, h.Pass)
	if err == nil {
		err = s.Flush()
	}
	if err != nil || s.state == StateNotAuthenticated {
		return
	}
	s.loop(ctx)
}

// evict ends the sessions of account ("" for all that logged in) and
// forgets what the account left in memory.
func (s *Server) evict(ctx context.Context, account, text string) error {
	s.mu.Lock()
	var doomed []*Session
	for sess := range s.sessions {
		if sess.forwarded.Load() {
			continue // served by another node
		}
		a := sess.acct.Load()
		if a == nil || account != "" && *a != account {
			continue
		}
		doomed = append(doomed, sess)
	}
	s.mu.Unlock()
	var byes sync.WaitGroup
	for _, sess := range doomed {
		byes.Go(func() {
			if !sess.handedOff || !sess.hangUpUnanswered() {
				sess.byeCode("UNAVAILABLE", text)
			}
			if cancel := sess.loginCancel.Load(); cancel != nil {
				(*cancel)() // a login in progress
			}
		})
	}
	byes.Wait()
	var err error
	for _, sess := range doomed {
		select {
		case <-sess.closed:
			continue
		case <-ctx.Done():
			err = fmt.Errorf("proxy: evicting %d sessions: %w", len(doomed), ctx.Err())
		}
		break
	}
	// What the account left in memory goes even if a session is slow to
	// end: kept, it would be taken up again, stale, if the account came
	// back to this node.
	if ferr := s.hub.ForgetAccount(ctx, account); err == nil {
		err = ferr
	}
	s.pool.CloseAccount(account)
	s.logins.forget(account)
	return err
}
