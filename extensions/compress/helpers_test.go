package compress_test

import (
	"crypto/tls"
	"testing"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/idle"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// TestMain fails the package if a test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is an in-memory upstream with user alice and a proxy in front of it
// with the COMPRESS and IDLE extensions.
type env struct {
	up   *memupstream.Server
	ext  *compress.Extension
	srv  *proxy.Server
	addr string
}

type envOpts struct {
	tls *tls.Config // serve implicit TLS with this configuration
	// maxCompressors is the extension's MaxCompressors.
	maxCompressors int
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{Caps: append([]imap.Cap{imap.CapIdle}, memupstream.DefaultCaps...)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	ext := compress.New()
	ext.MaxCompressors = o.maxCompressors
	var opts []imaptest.Option
	if o.tls != nil {
		opts = append(opts, imaptest.ImplicitTLS())
	}
	p := imaptest.StartProxy(t, up.Addr, proxy.Config{
		Upstream:   imaptest.DefaultUpstream(),
		TLS:        o.tls,
		Extensions: []proxy.Extension{ext, idle.New()},
		// BenchmarkIdleSessionHeap logs in as alice 10,000 times.
		Abuse: proxy.AbuseLimits{SessionsPerUser: -1},
	}, opts...)
	return &env{up: up, ext: ext, srv: p.Srv, addr: p.Addr}
}

// client is the harness's scripted client, under the name the tests use.
type client = imaptest.Client

// dial connects and checks for an OK greeting.
func dial(t testing.TB, addr string) *client {
	t.Helper()
	c := imaptest.Dial(t, addr)
	c.MustGreetOK()
	return c
}
