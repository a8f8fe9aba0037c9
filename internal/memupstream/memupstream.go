// Package memupstream runs go-imap's in-memory IMAP server (imapmemserver) as
// an upstream for lemonproxy: the demo's built-in server, and a second kind of
// upstream in tests, one that truly lacks CONDSTORE, QRESYNC, NOTIFY and
// COMPRESS.
package memupstream

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// Server is a running in-memory IMAP server.
type Server struct {
	Addr  string
	mem   *imapmemserver.Server
	srv   *imapserver.Server
	ln    net.Listener
	users map[string]*imapmemserver.User
	done  chan struct{}
}

// Options configures Start.
type Options struct {
	// Addr to listen on; default "127.0.0.1:0".
	Addr string
	// Caps beyond IMAP4rev1 to advertise (e.g. imap.CapLiteralPlus).
	Caps []imap.Cap
	// Logger for the server's errors; default discards them.
	Logger *log.Logger
	// TLS, if set, makes the server offer STARTTLS with this configuration,
	// or, with ImplicitTLS, serve TLS from the first byte (port 993 style).
	// Default: plain TCP without STARTTLS.
	TLS *tls.Config
	// ImplicitTLS serves TLS from the first byte; it needs TLS.
	ImplicitTLS bool
	// AfterCreate, if set, is called after the server carried out a
	// CREATE; an error it returns is the answer instead of OK (an
	// *imap.Error for NO [code] text). It lets a test play a server that
	// creates the mailbox and still answers NO: Dovecot 2.3 answers NO
	// [ALREADYEXISTS] for a mailbox it did create when another session
	// lists the mailboxes at that moment (docs/conformance.md).
	AfterCreate func(mailbox string) error
}

// DefaultCaps are the capabilities Start advertises when Options.Caps is nil.
var DefaultCaps = []imap.Cap{imap.CapNamespace, imap.CapUIDPlus, imap.CapMove, imap.CapLiteralPlus}

// Start starts a server; add users with AddUser.
func Start(opt Options) (*Server, error) {
	if opt.Addr == "" {
		opt.Addr = "127.0.0.1:0"
	}
	caps := imap.CapSet{imap.CapIMAP4rev1: {}}
	capList := opt.Caps
	if capList == nil {
		capList = DefaultCaps
	}
	for _, c := range capList {
		caps[c] = struct{}{}
	}
	logger := opt.Logger
	if logger == nil {
		logger = log.New(discard{}, "", 0)
	}
	if opt.ImplicitTLS && opt.TLS == nil {
		return nil, errors.New("memupstream: ImplicitTLS needs TLS")
	}
	var startTLS *tls.Config
	if !opt.ImplicitTLS {
		startTLS = opt.TLS
	}
	mem := imapmemserver.New()
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			sess := mem.NewSession()
			if opt.AfterCreate == nil {
				return sess, nil, nil
			}
			// imapmemserver's session has NAMESPACE and MOVE, which the
			// wrapper must keep (go-imap's server looks them up by type).
			full, ok := sess.(imapserver.SessionIMAP4rev2)
			if !ok {
				return nil, nil, errors.New("memupstream: AfterCreate needs an IMAP4rev2 session")
			}
			return &afterCreate{SessionIMAP4rev2: full, after: opt.AfterCreate}, nil, nil
		},
		Caps:         caps,
		InsecureAuth: true,
		Logger:       logger,
		TLSConfig:    startTLS,
	})
	ln, err := net.Listen("tcp", opt.Addr)
	if err != nil {
		return nil, fmt.Errorf("memupstream: %w", err)
	}
	if opt.ImplicitTLS {
		ln = tls.NewListener(ln, opt.TLS)
	}
	s := &Server{Addr: ln.Addr().String(), mem: mem, srv: srv, ln: ln, users: map[string]*imapmemserver.User{}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		srv.Serve(ln)
	}()
	return s, nil
}

// afterCreate is a session whose CREATE answers what Options.AfterCreate
// says once the mailbox is created.
type afterCreate struct {
	imapserver.SessionIMAP4rev2
	after func(mailbox string) error
}

func (s *afterCreate) Create(mailbox string, options *imap.CreateOptions) error {
	if err := s.SessionIMAP4rev2.Create(mailbox, options); err != nil {
		return err
	}
	return s.after(mailbox)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// AddUser adds a user with an empty INBOX.
func (s *Server) AddUser(name, pass string) error {
	u := imapmemserver.NewUser(name, pass)
	if err := u.Create("INBOX", nil); err != nil {
		return fmt.Errorf("memupstream: create INBOX: %w", err)
	}
	s.mem.AddUser(u)
	s.users[name] = u
	return nil
}

// Append stores a message for user in mailbox, creating the mailbox if it
// does not exist.
func (s *Server) Append(user, mailbox string, flags []imap.Flag, msg []byte) error {
	u, ok := s.users[user]
	if !ok {
		return fmt.Errorf("memupstream: no user %q", user)
	}
	u.Create(mailbox, nil) // exists already: fine
	_, err := u.Append(mailbox, literal{bytes.NewReader(msg)}, &imap.AppendOptions{Flags: flags, Time: time.Now()})
	if err != nil {
		return fmt.Errorf("memupstream: append: %w", err)
	}
	return nil
}

type literal struct{ *bytes.Reader }

func (l literal) Size() int64 { return l.Reader.Size() }

// Close stops the server and closes its connections.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
