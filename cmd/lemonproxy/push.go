package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/cluster/pgdata"
	"github.com/lemonproxy/lemonproxy/extensions/push"
	"github.com/lemonproxy/lemonproxy/extensions/push/devicetoken"
	"github.com/lemonproxy/lemonproxy/extensions/push/webpush"
	"github.com/lemonproxy/lemonproxy/internal/config"
	"github.com/lemonproxy/lemonproxy/internal/secretfile"
)

// pushParts are push's extension and its device-token channel, built from
// the settings (docs/push.md).
type pushParts struct {
	ext         *push.Extension
	deviceToken *devicetoken.Channel // nil without a gateway
	webPush     *webpush.Extension   // nil without push-webpush
}

// pushSecrets are the contents of push's secret files.
type pushSecrets struct {
	masterPassword, credentialsKey, gatewaySecret []byte
}

// readPushSecrets reads and checks push's secret files, at start and at a
// reload (which builds nothing: a file gone or too short must be found
// then, not at the next restart).
func readPushSecrets(s config.Settings) (pushSecrets, error) {
	var sec pushSecrets
	var err error
	if s.UpstreamMasterUser != "" {
		if sec.masterPassword, err = secretfile.Read(s.UpstreamMasterPasswordFile, "upstream-master-password-file"); err != nil {
			return sec, err
		}
	} else if sec.credentialsKey, err = push.LoadKey(s.PushCredentialsKey); err != nil {
		return sec, fmt.Errorf("push-credentials-key: %w", err)
	}
	if s.PushGatewaySecret != "" {
		if sec.gatewaySecret, err = secretfile.Read(s.PushGatewaySecret, "push-gateway-secret"); err != nil {
			return sec, err
		}
		if len(sec.gatewaySecret) < 16 {
			return sec, fmt.Errorf("push-gateway-secret %s: at least 16 bytes", s.PushGatewaySecret)
		}
	}
	return sec, nil
}

// pushConfig is push's configuration from the settings, its secret files
// read and checked (readPushSecrets, push.CheckConfig): what start builds
// push from, and what a reload checks.
func pushConfig(s config.Settings, log *slog.Logger) (push.Config, pushSecrets, error) {
	cfg := push.Config{
		MaxRegistrations: s.PushMaxRegistrations,
		LiveWatchers:     s.PushLiveWatchers,
		PollConns:        s.PushPollConns,
		PollInterval:     s.PushPollInterval.Duration,
		GiveUp:           s.PushGiveUp.Duration,
		Endpoints:        push.EndpointPolicy{AllowPrivate: s.PushAllowPrivateEndpoints},
		Logger:           log,
	}
	for _, m := range strings.Split(s.PushMailboxes, ",") {
		if m = strings.TrimSpace(m); m != "" {
			cfg.Mailboxes = append(cfg.Mailboxes, m)
		}
	}
	sec, err := readPushSecrets(s)
	if err != nil {
		return cfg, sec, err
	}
	if s.UpstreamMasterUser != "" {
		cfg.MasterUser, cfg.MasterPassword = s.UpstreamMasterUser, string(sec.masterPassword)
	} else {
		cfg.CredentialsKey = sec.credentialsKey
	}
	return cfg, sec, push.CheckConfig(cfg)
}

// vapidKeyFile is the path of push-webpush's VAPID key. In cluster mode
// the file must exist: a node does not make it.
func vapidKeyFile(s config.Settings) (string, error) {
	keyFile := filepath.Join(s.Data, webpush.KeyFileName)
	if s.ClusterDB != "" {
		// Subscriptions made through one node must take pushes
		// signed by any other: one key for the cluster, never one
		// made here.
		if _, err := os.Stat(keyFile); err != nil {
			return "", fmt.Errorf("push-webpush in cluster mode: the VAPID key %s must be the same file on every node, and is not made by a node: make it once (openssl ecparam -name prime256v1 -genkey -noout -out %s; chmod 600), and copy it into each node's data directory: %w", keyFile, webpush.KeyFileName, err)
		}
	}
	return keyFile, nil
}

// checkPush checks push's settings and files as pushSetup would take them,
// building nothing (a reload: a file gone, unreadable or invalid must be
// found then, not at the next restart). A missing VAPID key is no error on
// a single node: start makes it.
func checkPush(s config.Settings) error {
	if !s.PushEnabled() {
		return nil
	}
	if _, _, err := pushConfig(s, nil); err != nil {
		return err
	}
	if s.PushGateway != "" {
		if err := devicetoken.CheckGateway(s.PushGateway); err != nil {
			return err
		}
	}
	if s.PushWebPush {
		keyFile, err := vapidKeyFile(s)
		if err != nil {
			return err
		}
		if err := webpush.CheckKeyFile(keyFile); err != nil {
			return fmt.Errorf("push-webpush: %w", err)
		}
	}
	return nil
}

// pushSetup builds push from the settings, reading its secret files; nil
// when no push channel is configured.
func pushSetup(s config.Settings, log *slog.Logger) (*pushParts, error) {
	if !s.PushEnabled() {
		return nil, nil
	}
	cfg, sec, err := pushConfig(s, log)
	if err != nil {
		return nil, err
	}
	ext, err := push.New(cfg)
	if err != nil {
		return nil, err
	}
	pp := &pushParts{ext: ext}
	if s.PushGateway != "" {
		dt, err := devicetoken.New(ext, devicetoken.Config{Gateway: s.PushGateway, Secret: sec.gatewaySecret})
		if err != nil {
			return nil, err
		}
		ext.AddChannel(dt)
		pp.deviceToken = dt
	}
	if s.PushWebPush {
		keyFile, err := vapidKeyFile(s)
		if err != nil {
			return nil, err
		}
		// The key is made before the stores open the data directory.
		if err := os.MkdirAll(s.Data, 0o700); err != nil {
			return nil, fmt.Errorf("push-webpush: %w", err)
		}
		sender, err := webpush.NewSender(webpush.SenderConfig{
			KeyFile:    keyFile,
			HTTPClient: ext.EndpointClient().HTTPClient(),
			Subject:    s.PushVAPIDSubject,
			Logger:     log,
		})
		if err != nil {
			return nil, fmt.Errorf("push-webpush: %w", err)
		}
		ext.AddChannel(sender)
		wp, err := webpush.New(webpush.Config{Sender: sender, Registrar: ext, AllowHTTP: s.PushAllowPrivateEndpoints})
		if err != nil {
			return nil, fmt.Errorf("push-webpush: %w", err)
		}
		pp.webPush = wp
	}
	return pp, nil
}

const pushUsage = `Usage:
  lemonproxy push list [-data DIR | -cluster-db URL] [-show-data]

Lists the devices registered for push (docs/push.md): user, upstream,
channel, registration ID, when it was made, the mailboxes it pushes, the
pushes waiting for delivery, and whether credentials are kept for the
account. It reads accountdata.db in the data directory: stop the proxy
first (it holds the file locked while it runs). In cluster mode it reads
the cluster's database instead, while the nodes run.

Flags:
  -data DIR    the proxy's data directory (default ./lemonproxy-data)
  -cluster-db URL
               the cluster's PostgreSQL URL (cluster mode)
  -show-data   show each device's token or endpoint (a capability to wake
               the device: keep the output private)
`

// pushCmd is "lemonproxy push".
func pushCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, pushUsage)
		return 2
	}
	switch args[0] {
	case "list":
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, pushUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "lemonproxy push: unknown command %q\n\n%s", args[0], pushUsage)
		return 2
	}
	fs := flag.NewFlagSet("lemonproxy push list", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("data", config.Defaults().Data, "the proxy's data directory")
	show := fs.Bool("show-data", false, "show each device's token or endpoint")
	db := fs.String("cluster-db", "", "the cluster's PostgreSQL URL")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, pushUsage)
			return 0
		}
		fmt.Fprintf(stderr, "%s: bad arguments (%v)\n\n%s", fs.Name(), err, pushUsage)
		return 2
	}
	if *db != "" {
		if err := pushListCluster(stdout, *db, *show); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
			return 1
		}
		return 0
	}
	data, err := accountdata.OpenBoltReadOnly(*dir, 2*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return 1
	}
	defer data.Close()
	if err := push.WriteList(stdout, data, *show); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return 1
	}
	return 0
}

// pushListCluster lists the registrations kept in a cluster's database
// (reads only: the nodes may run).
func pushListCluster(w io.Writer, dbURL string, show bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return fmt.Errorf("cluster-db: %w", err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("cluster-db: %w", err)
	}
	defer pool.Close()
	data, err := pgdata.Open(ctx, pool, nil)
	if err != nil {
		return err
	}
	defer data.Close()
	return push.WriteList(w, data, show)
}
