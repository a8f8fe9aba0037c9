// Command lemonproxy is an IMAP proxy that gives mobile clients a modern
// protocol (IDLE, CONDSTORE/QRESYNC, NOTIFY, COMPRESS) in front of any IMAP
// server.
//
// Usage:
//
//	lemonproxy serve -listen 127.0.0.1:1143 -upstream imap.example.com:993 -upstream-security tls
//	lemonproxy demo
//	lemonproxy cluster status -cluster-db postgres://db.example.com/lemonproxy
//	lemonproxy push list -data /var/lib/lemonproxy
//	lemonproxy conformance -target imap.example.com:993 -tls -user U -pass P
//	lemonproxy version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/cluster"
	"github.com/lemonproxy/lemonproxy/cluster/link"
	"github.com/lemonproxy/lemonproxy/conformance"
	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/notify"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/uidplus"
	"github.com/lemonproxy/lemonproxy/internal/config"
	"github.com/lemonproxy/lemonproxy/internal/listen"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/load"
	"github.com/lemonproxy/lemonproxy/metrics"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/statestore"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `lemonproxy: an IMAP proxy for mobile mail.

Commands:
  serve    run the proxy in front of an upstream IMAP server
  demo     run the proxy in front of a built-in demo server
  cluster  status and drain of a cluster's nodes (cluster mode)
  push     list the devices registered for push
  conformance
           test an IMAP server (or lemonproxy) RFC section by RFC section
  load     generate load (idle, push, resync, fetch, mixed) and measure
  version  print the version

Run "lemonproxy COMMAND -h" for a command's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr, false)
	case "demo":
		return serve(args[1:], stdout, stderr, true)
	case "cluster":
		return clusterCmd(args[1:], stdout, stderr)
	case "push":
		return pushCmd(args[1:], stdout, stderr)
	case "conformance":
		return conformance.Main(args[1:], stdout, stderr)
	case "load":
		return load.Main(args[1:], stdout, stderr)
	case "version":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "lemonproxy version: unexpected argument %q\n", args[1])
			return 2
		}
		bi, ok := debug.ReadBuildInfo()
		fmt.Fprintln(stdout, versionLine(bi, ok))
		return 0
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "lemonproxy: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// versionLine is what "lemonproxy version" prints: the version, and the
// commit the binary was built from as the go command recorded it (go build
// in a Git checkout; not go run, nor a build with -buildvcs=false), with
// "+modified" when the work tree had uncommitted changes.
func versionLine(bi *debug.BuildInfo, ok bool) string {
	var rev, when string
	modified := false
	if ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if rev == "" {
		return "lemonproxy " + proxy.Version + " (commit unknown: built without VCS information)"
	}
	if modified {
		rev += "+modified"
	}
	if when != "" {
		return fmt.Sprintf("lemonproxy %s commit %s (%s)", proxy.Version, rev, when)
	}
	return fmt.Sprintf("lemonproxy %s commit %s", proxy.Version, rev)
}

// withMetrics hooks the event-fed metrics into the configuration and the
// extensions, and returns how to register the rest once the server exists.
func withMetrics(m *metrics.Metrics, cfg *proxy.Config) func(*proxy.Server, func() metrics.ClusterStats) {
	cfg.PushLatency = m.ObservePush
	src := metrics.Sources{}
	for _, e := range cfg.Extensions {
		switch e := e.(type) {
		case *condstore.Extension:
			e.OnResync = m.ObserveResync
		case *compress.Extension:
			src.Compress = func() (int64, int64, int64, int64, int64) {
				st := e.Stats()
				return st.PlainIn, st.CompressedIn, st.PlainOut, st.CompressedOut, st.Active
			}
			src.CompressorsInUse = func() int64 { return e.Stats().Compressors }
		case *notify.Extension:
			src.AccountWatchers = e.Accounts().Watchers
		case *push.Extension:
			e.OnDelivered = m.ObservePushDelivery
			src.Push = func() metrics.PushStats {
				st := e.Stats()
				return metrics.PushStats{Registrations: st.Registrations, LiveAccounts: st.LiveAccounts, PolledAccounts: st.PolledAccounts,
					ParkedAccounts: st.ParkedAccounts, Pending: st.Pending, Sent: st.Sent, Failed: st.Failed, Retried: st.Retried,
					GivenUp: st.GivenUp, Gone: st.Gone}
			}
		case *uidplus.Extension:
			src.Synthesized = func() map[string]uint64 {
				st := e.Stats()
				return map[string]uint64{"appenduid": st.AppendUIDs, "appenduid_omitted": st.AppendOmitted,
					"copyuid": st.CopyUIDs, "copyuid_omitted": st.CopyOmitted, "move": st.Moves, "move_incomplete": st.MovesIncomplete}
			}
		}
	}
	return func(srv *proxy.Server, cluster func() metrics.ClusterStats) {
		src.Server = srv
		src.Cluster = cluster
		m.Register(src)
	}
}

func serve(args []string, stdout, stderr io.Writer, demo bool) int {
	name := "serve"
	if demo {
		name = "demo"
	}
	fs := flag.NewFlagSet("lemonproxy "+name, flag.ContinueOnError)
	// The flag package would print a bad flag's error and then every
	// flag; the error is printed once below, the flags only for -h.
	fs.SetOutput(io.Discard)
	settings, err := config.Parse(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "Usage:\n  %s [flags]\n\nFlags:\n", fs.Name())
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return 0
	}
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q (every setting is a flag)", fs.Arg(0))
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\nRun '%s -h' for the flags.\n", fs.Name(), err, fs.Name())
		return 2
	}
	level, err := settings.Level()
	if err != nil {
		fmt.Fprintln(stderr, "lemonproxy:", err)
		return 2
	}
	// A LevelVar, so that a reload can change the level.
	logLevel := new(slog.LevelVar)
	logLevel.Set(level)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))

	builtin := demo && settings.Upstream == ""
	if builtin {
		up, err := startDemoUpstream()
		if err != nil {
			log.Error("starting the demo upstream", "err", err)
			return 1
		}
		defer up.Close()
		settings.Upstream = up.Addr
		settings.UpstreamSecurity = "none"
	}

	var certs *config.CertReloader
	if settings.TLSCert != "" || settings.TLSKey != "" {
		if certs, err = config.NewCertReloader(settings.TLSCert, settings.TLSKey); err != nil {
			log.Error("TLS certificate", "err", err)
			return 1
		}
	} else if settings.ListenTLS != "" {
		log.Error("-listen-tls needs -tls-cert and -tls-key")
		return 2
	}
	cfg, err := settings.ProxyConfig(certs, log)
	if err != nil {
		log.Error("configuration", "err", err)
		return 2
	}
	for _, w := range settings.Warnings() {
		log.Warn(w)
	}
	go probeUpstream(cfg.Upstream, log)
	cfg.Extensions, err = extensions(settings, log)
	if err != nil {
		log.Error("configuration", "err", err)
		return 2
	}
	var met *metrics.Metrics
	var registerMetrics func(*proxy.Server, func() metrics.ClusterStats)
	if settings.Metrics != "" {
		met = metrics.New()
		registerMetrics = withMetrics(met, &cfg)
	}
	var cl *clusterNode
	if settings.ClusterDB != "" {
		// Cluster mode: the state lives in PostgreSQL, shared by the
		// nodes; -data is not used.
		if cl, err = openCluster(settings, met, log); err != nil {
			log.Error("cluster", "err", err)
			return 1
		}
		cfg.Hub.Store = cl.store
		cfg.AccountData = cl.data
		cfg.Router = cl.node
	} else {
		if err := os.MkdirAll(settings.Data, 0o700); err != nil {
			log.Error("data directory", "err", err)
			return 1
		}
		store, err := statestore.OpenBoltLog(settings.Data, log)
		if err != nil {
			log.Error("sync state store", "err", err)
			return 1
		}
		defer store.Close()
		cfg.Hub.Store = store
		// The accounts' own records, in a file of their own: state.db
		// is a cache that may be thrown away, this is user data.
		data, err := accountdata.OpenBolt(settings.Data, log)
		if err != nil {
			log.Error("account data store", "err", err)
			return 1
		}
		defer data.Close()
		cfg.AccountData = data
	}
	srv, err := proxy.NewServer(cfg)
	if err != nil {
		log.Error("starting", "err", err)
		if cl != nil {
			cl.node.Abandon()
		}
		return 1
	}
	if cl != nil {
		cl.start(srv, log)
	}
	if met != nil {
		var clusterStats func() metrics.ClusterStats
		if cl != nil {
			clusterStats = cl.metricsSource()
		}
		registerMetrics(srv, clusterStats)
		ln, err := net.Listen("tcp", settings.Metrics)
		if err != nil {
			log.Error("metrics listen", "addr", settings.Metrics, "err", err)
			return 1
		}
		mctx, stopMetrics := context.WithCancel(context.Background())
		defer stopMetrics()
		go met.Serve(mctx, ln, log)
	}

	// Handle signals before announcing the listeners: a SIGHUP or SIGTERM
	// sent as soon as the address is known must not kill the process with
	// the default action.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)

	var listeners []struct {
		ln  net.Listener
		tls bool
	}
	balancers, err := listen.ParsePrefixes(settings.ProxyProtocol)
	if err != nil {
		log.Error("proxy-protocol", "err", err)
		return 2
	}
	listenOn := func(addr string, isTLS bool) bool {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Error("listen", "addr", addr, "err", err)
			return false
		}
		if len(balancers) > 0 {
			ln = listen.ProxyProtocol(ln, balancers)
		}
		listeners = append(listeners, struct {
			ln  net.Listener
			tls bool
		}{ln, isTLS})
		log.Info("listening", "addr", ln.Addr().String(), "tls", isTLS, "upstream", settings.Upstream)
		return true
	}
	if settings.Listen != "" && !listenOn(settings.Listen, false) {
		return 1
	}
	if settings.ListenTLS != "" && !listenOn(settings.ListenTLS, true) {
		return 1
	}
	if len(listeners) == 0 {
		log.Error("no listener: set -listen or -listen-tls")
		return 2
	}
	if demo && builtin {
		fmt.Fprintf(stdout, "lemonproxy demo: proxy on %s in front of a built-in server on %s.\n", listeners[0].ln.Addr(), settings.Upstream)
		fmt.Fprintf(stdout, "Log in as %q with password %q, for example:\n", demoUser, demoPass)
		fmt.Fprintf(stdout, "  python3 -c 'import imaplib; c=imaplib.IMAP4(\"127.0.0.1\", %d); c.login(\"%s\",\"%s\"); print(c.select(\"INBOX\")); print(c.fetch(\"1:*\", \"(FLAGS BODY[HEADER.FIELDS (SUBJECT)])\"))'\n",
			listeners[0].ln.Addr().(*net.TCPAddr).Port, demoUser, demoPass)
		fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
	} else if demo {
		// -upstream given: no built-in server, no demo account.
		fmt.Fprintf(stdout, "lemonproxy demo: proxy on %s in front of %s (from -upstream; no built-in server).\n", listeners[0].ln.Addr(), settings.Upstream)
		fmt.Fprintln(stdout, "Log in with an account of that server. Press Ctrl-C to stop.")
	}

	var wg sync.WaitGroup
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l.ln, l.tls); err != nil {
				log.Error("serve", "err", err)
			}
		}()
	}

	if met != nil {
		met.SetReady(true)
	}
	rl := &reloader{name: fs.Name(), args: args, demo: demo, settings: settings, level: logLevel, certs: certs, srv: srv, log: log}
	for s := range sig {
		if s == syscall.SIGHUP {
			rl.reload()
			continue
		}
		log.Info("shutting down", "signal", s.String())
		break
	}
	if met != nil {
		met.SetReady(false)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if cl != nil {
		cl.stop(ctx, log)
	}
	err = srv.Shutdown(ctx)
	wg.Wait()
	if err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// reloader re-reads the configuration on SIGHUP and applies what can change
// while the proxy runs (see config.Reload and proxy.Server.Reload).
type reloader struct {
	name     string   // of the flag set
	args     []string // the command line, re-parsed on each reload
	demo     bool
	settings config.Settings // in force
	level    *slog.LevelVar
	certs    *config.CertReloader // nil without a certificate
	srv      *proxy.Server
	log      *slog.Logger
}

// reload reads the configuration file and the command line again, exactly
// as at start, and checks the result as start would. If it is invalid, it
// logs an error and changes nothing. Otherwise it applies the settings that
// can change at run time (the log level at once; limits and timeouts to
// new sessions; the certificate, re-read even if its files are the same, to
// new connections) and warns about each changed setting that needs a
// restart, which stays as it was.
func (r *reloader) reload() {
	next, err := r.read()
	if err != nil {
		r.log.Error("SIGHUP: invalid configuration; keeping the old one", "err", err)
		return
	}
	merged, applied, restart := config.Reload(r.settings, next)
	level, _ := merged.Level() // checked by read
	cfg, err := merged.ReloadedConfig(r.certs, r.log)
	if err != nil { // the upstream CA file of the running proxy is gone, say
		r.log.Error("SIGHUP: invalid configuration; keeping the old one", "err", err)
		return
	}
	if r.certs != nil {
		// The last check, and the first change: Load keeps the old
		// certificate if the new one does not load.
		if err := r.certs.Load(merged.TLSCert, merged.TLSKey); err != nil {
			r.log.Error("SIGHUP: invalid configuration; keeping the old one", "err", err)
			return
		}
		r.log.Info("SIGHUP: certificate reloaded")
	}
	r.level.Set(level)
	r.srv.Reload(cfg)
	r.settings = merged
	for _, key := range restart {
		r.log.Warn("SIGHUP: setting changed; needs a restart", "setting", key)
	}
	r.log.Info("SIGHUP: configuration reloaded", "changed", list(applied), "needs-restart", list(restart))
}

// read parses the command line (and so the -config file) again and checks
// the result as serve does at start.
func (r *reloader) read() (config.Settings, error) {
	fs := flag.NewFlagSet(r.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	next, err := config.Parse(fs, r.args)
	if err != nil {
		return next, err
	}
	if r.demo && next.Upstream == "" {
		next.Upstream, next.UpstreamSecurity = r.settings.Upstream, r.settings.UpstreamSecurity
	}
	if _, err := next.Level(); err != nil {
		return next, err
	}
	if next.TLSCert == "" && next.TLSKey == "" && next.ListenTLS != "" {
		return next, errors.New("-listen-tls needs -tls-cert and -tls-key")
	}
	if r.certs == nil && (next.TLSCert != "" || next.TLSKey != "") {
		// Not applied (see config.Reload), but it must load at restart.
		if _, err := config.NewCertReloader(next.TLSCert, next.TLSKey); err != nil {
			return next, err
		}
	}
	if next.Listen == "" && next.ListenTLS == "" {
		return next, errors.New("no listener: set -listen or -listen-tls")
	}
	if _, err := next.ProxyConfig(nil, r.log); err != nil {
		return next, err
	}
	if _, err := listen.ParsePrefixes(next.ProxyProtocol); err != nil {
		return next, fmt.Errorf("proxy-protocol: %w", err)
	}
	// What start checks only where it builds push and joins the
	// cluster (pushSetup, openCluster), which a reload does not do: a
	// file gone or invalid must be found now, not at the next restart.
	if err := checkPush(next); err != nil {
		return next, err
	}
	if next.ClusterDB != "" {
		if _, err := link.LoadSecret(next.ClusterSecret); err != nil {
			return next, fmt.Errorf("cluster-secret: %w", err)
		}
		if err := cluster.CheckConfig(cluster.Config{Node: next.Node, DB: next.ClusterDB}); err != nil {
			return next, err
		}
	}
	return next, nil
}

// list formats setting names for the log.
func list(keys []string) string {
	if len(keys) == 0 {
		return "none"
	}
	return strings.Join(keys, ",")
}

const (
	demoUser = "demo"
	demoPass = "demo"
)

// probeUpstream connects to the upstream once at start and logs a WARN if
// it does not answer, rather than let the first login find out.
func probeUpstream(cfg upstream.Config, log *slog.Logger) {
	c, err := upstream.Dial(context.Background(), &cfg) // bounded by upstream-timeout
	if err != nil {
		log.Warn("upstream does not answer; logins get NO [UNAVAILABLE] until it does", "upstream", cfg.Addr, "err", err)
		return
	}
	c.Logout()
	c.Close()
	log.Info("upstream answers", "upstream", cfg.Addr)
}

// startDemoUpstream starts an in-memory IMAP server holding the demo user
// and a few messages.
func startDemoUpstream() (*memupstream.Server, error) {
	up, err := memupstream.Start(memupstream.Options{})
	if err != nil {
		return nil, err
	}
	if err := up.AddUser(demoUser, demoPass); err != nil {
		up.Close()
		return nil, err
	}
	msgs := []struct {
		subject, body string
		flags         []imap.Flag
	}{
		{"Welcome to lemonproxy", "This message reached you through lemonproxy.", []imap.Flag{imap.FlagSeen}},
		{"Lunch?", "Are you free at noon?", nil},
		{"Your invoice", "Please find your invoice attached (not really).", []imap.Flag{imap.FlagFlagged}},
	}
	for i, m := range msgs {
		msg := fmt.Sprintf("From: Demo Sender <sender@example.org>\r\nTo: demo@example.org\r\nSubject: %s\r\nDate: Mon, 2 Nov 2026 10:%02d:00 +0000\r\nMessage-ID: <demo-%d@example.org>\r\n\r\n%s\r\n", m.subject, i, i, m.body)
		if err := up.Append(demoUser, "INBOX", m.flags, []byte(msg)); err != nil {
			up.Close()
			return nil, err
		}
	}
	return up, nil
}
