package webpush

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/webpush/webpushtest"
)

func newSender(t *testing.T, svc *webpushtest.Service, edit func(*SenderConfig)) *Sender {
	t.Helper()
	cfg := SenderConfig{KeyFile: filepath.Join(t.TempDir(), KeyFileName), HTTPClient: svc.Client(), Subject: "mailto:ops@example.org"}
	if edit != nil {
		edit(&cfg)
	}
	s, err := NewSender(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// registration is what ACKWEBPUSH registers for sub.
func registration(t *testing.T, s *Sender, id string, sub *webpushtest.Subscription) push.Registration {
	t.Helper()
	ps, err := parseSubscription(id, sub.Endpoint, sub.P256dh, sub.Auth, true)
	if err != nil {
		t.Fatal(err)
	}
	return push.Registration{Channel: ChannelName, ID: regID(id), Data: newRecord(ps, s.PublicKey()).encode()}
}

func TestDeliver(t *testing.T) {
	svc := webpushtest.New(t, true)
	s := newSender(t, svc, nil)
	sub := svc.Subscribe(t, s.PublicKey())
	reg := registration(t, s, "phone 1", sub)
	ev := push.Event{Mailbox: "INBOX", Messages: 12, New: 2, UIDNext: 40, At: time.Now()}
	if err := s.Deliver(context.Background(), "alice", reg, ev); err != nil {
		t.Fatal(err)
	}
	m := svc.Wait(t, 1, time.Second)
	if string(m.Plaintext) != `{"id":"phone 1","mailbox":"INBOX","messages":12,"new":2,"uidnext":40}` {
		t.Fatalf("plaintext %s", m.Plaintext)
	}
	// Padded to 128 bytes: 86 of header, 128 of plaintext and padding,
	// the delimiter and the tag.
	if m.BodyLen != 86+128+1+16 {
		t.Errorf("body of %d bytes", m.BodyLen)
	}
	if m.TTL != "86400" || m.Urgency != "normal" || m.Topic != topic("INBOX") || len(m.Topic) != 32 {
		t.Errorf("TTL %q, Urgency %q, Topic %q", m.TTL, m.Urgency, m.Topic)
	}
	if m.VAPIDKey != s.PublicKey() || m.Claims.Aud != svc.Origin() || m.Claims.Sub != "mailto:ops@example.org" {
		t.Errorf("VAPID %s %+v", m.VAPIDKey, m.Claims)
	}
	// Another mailbox, another topic: the service keeps one of each.
	ev.Mailbox = "Lists/go-nuts"
	if err := s.Deliver(context.Background(), "alice", reg, ev); err != nil {
		t.Fatal(err)
	}
	if m := svc.Wait(t, 2, time.Second); m.Topic == topic("INBOX") || !strings.Contains(string(m.Plaintext), `"mailbox":"Lists/go-nuts"`) {
		t.Errorf("second push: %q %s", m.Topic, m.Plaintext)
	}
	if r := svc.Rejected(); len(r) != 0 {
		t.Fatal(r)
	}
}

func TestDeliverSettings(t *testing.T) {
	svc := webpushtest.New(t, false)
	s := newSender(t, svc, func(c *SenderConfig) {
		c.Payload, c.TTL, c.Urgency, c.Subject = PayloadNone, time.Hour, "low", ""
	})
	if !strings.HasPrefix(s.subject, "mailto:postmaster@") {
		t.Errorf("default subject %q", s.subject)
	}
	sub := svc.Subscribe(t, "")
	if err := s.Deliver(context.Background(), "alice", registration(t, s, "x", sub), push.Event{Mailbox: "INBOX"}); err != nil {
		t.Fatal(err)
	}
	m := svc.Wait(t, 1, time.Second)
	if m.Plaintext != nil || m.BodyLen != 0 || m.TTL != "3600" || m.Urgency != "low" {
		t.Fatalf("%+v", m)
	}
	if _, err := NewSender(SenderConfig{KeyFile: filepath.Join(t.TempDir(), "k"), HTTPClient: svc.Client(), Urgency: "urgent"}); err == nil {
		t.Error("unknown urgency accepted")
	}
	if _, err := NewSender(SenderConfig{KeyFile: filepath.Join(t.TempDir(), "k")}); err == nil {
		t.Error("no HTTP client accepted")
	}
}

// TestDeliverLongMailbox: a name too long to fit in one push is left out;
// the push still goes.
func TestDeliverLongMailbox(t *testing.T) {
	svc := webpushtest.New(t, true)
	s := newSender(t, svc, nil)
	sub := svc.Subscribe(t, "")
	if err := s.Deliver(context.Background(), "alice", registration(t, s, "x", sub), push.Event{Mailbox: strings.Repeat("m", 5000), Messages: 1}); err != nil {
		t.Fatal(err)
	}
	if m := svc.Wait(t, 1, time.Second); string(m.Plaintext) != `{"id":"x","messages":1,"new":0,"uidnext":0}` {
		t.Fatalf("%s", m.Plaintext)
	}
}

func TestDeliverFailures(t *testing.T) {
	svc := webpushtest.New(t, true)
	s := newSender(t, svc, nil)
	sub := svc.Subscribe(t, "")
	reg := registration(t, s, "x", sub)
	ctx := context.Background()
	for _, code := range []int{http.StatusNotFound, http.StatusGone} {
		svc.SetStatus(sub, code)
		err := s.Deliver(ctx, "alice", reg, push.Event{Mailbox: "INBOX"})
		var se *StatusError
		if !errors.Is(err, push.ErrGone) || !errors.As(err, &se) || se.Status != code {
			t.Errorf("%d: %v", code, err)
		}
	}
	svc.SetStatus(sub, http.StatusTooManyRequests)
	err := s.Deliver(ctx, "alice", reg, push.Event{Mailbox: "INBOX"})
	var se *StatusError
	if errors.Is(err, push.ErrGone) || !errors.As(err, &se) || se.Status != 429 || se.Origin != svc.Origin() {
		t.Errorf("429: %v", err)
	}
	// An unknown subscription at the service: 404, gone.
	gone := registration(t, s, "y", &webpushtest.Subscription{Endpoint: svc.Origin() + "/push/nosuch", P256dh: sub.P256dh, Auth: sub.Auth})
	if err := s.Deliver(ctx, "alice", gone, push.Event{}); !errors.Is(err, push.ErrGone) {
		t.Errorf("unknown endpoint: %v", err)
	}
	// A registration that cannot be read never will be: gone.
	if err := s.Deliver(ctx, "alice", push.Registration{Channel: ChannelName, ID: "z", Data: []byte("{")}, push.Event{}); !errors.Is(err, push.ErrGone) {
		t.Errorf("bad data: %v", err)
	}
	// Transport failures are retried, and their errors name the origin,
	// never the endpoint's secret path.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	down := registration(t, s, "d", &webpushtest.Subscription{Endpoint: "https://" + addr + "/push/secret-token", P256dh: sub.P256dh, Auth: sub.Auth})
	err = s.Deliver(ctx, "alice", down, push.Event{})
	if err == nil || errors.Is(err, push.ErrGone) || strings.Contains(err.Error(), "secret-token") || !strings.Contains(err.Error(), addr) {
		t.Errorf("unreachable service: %v", err)
	}
}

// TestNoRedirect: a push is POSTed to the endpoint only; a redirect is a
// failure (retried), not followed.
func TestNoRedirect(t *testing.T) {
	svc := webpushtest.New(t, false)
	sub := svc.Subscribe(t, "")
	redir := httptest.NewServer(http.RedirectHandler(sub.Endpoint, http.StatusTemporaryRedirect))
	t.Cleanup(redir.Close)
	s := newSender(t, svc, nil)
	moved := *sub
	moved.Endpoint = redir.URL + "/push/x"
	err := s.Deliver(context.Background(), "alice", registration(t, s, "r", &moved), push.Event{Mailbox: "INBOX"})
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusTemporaryRedirect || errors.Is(err, push.ErrGone) {
		t.Fatalf("redirect: %v", err)
	}
	if n := len(svc.Messages()); n != 0 {
		t.Fatalf("the redirect was followed: %d pushes", n)
	}
}
