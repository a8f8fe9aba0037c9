package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/lemonproxy/lemonproxy/cluster"
	"github.com/lemonproxy/lemonproxy/cluster/link"
	"github.com/lemonproxy/lemonproxy/cluster/pgdata"
	"github.com/lemonproxy/lemonproxy/cluster/pgstate"
	"github.com/lemonproxy/lemonproxy/internal/config"
	"github.com/lemonproxy/lemonproxy/metrics"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// clusterNode is serve's part of cluster mode: the node, its internal
// link listener and the shared state store.
type clusterNode struct {
	node  *cluster.Node
	ln    net.Listener
	store *pgstate.Store
	// data holds the accounts' own records (METADATA entries, filters),
	// shared by the nodes and fenced as the state is.
	data *pgdata.Store

	// pool-idle-total is the cluster's: each node keeps its share, the
	// total divided by the live nodes (otherwise three nodes would keep
	// three times the idle upstream connections of one).
	idleTotal int
	pool      atomic.Pointer[upstream.Pool]
	live      atomic.Int64
}

// liveNodes is the node's OnLiveNodes: it shares the pool bound out anew.
func (c *clusterNode) liveNodes(n int) {
	c.live.Store(int64(n))
	c.shareOut()
}

// shareOut sets the pool's bound to this node's share of pool-idle-total.
func (c *clusterNode) shareOut() {
	p, n := c.pool.Load(), int(c.live.Load())
	if p == nil || n < 1 || c.idleTotal <= 0 {
		return
	}
	p.SetMaxIdle((c.idleTotal + n - 1) / n)
}

// openCluster joins the cluster that settings name: it listens on the
// internal link first (so that the address other nodes dial is known even
// for port 0), registers the node and opens the shared state store.
func openCluster(settings config.Settings, met *metrics.Metrics, log *slog.Logger) (*clusterNode, error) {
	secret, err := link.LoadSecret(settings.ClusterSecret)
	if err != nil {
		return nil, fmt.Errorf("cluster-secret: %w", err)
	}
	ln, err := net.Listen("tcp", settings.ClusterListen)
	if err != nil {
		return nil, fmt.Errorf("cluster-listen: %w", err)
	}
	advertise := settings.ClusterAdvertise
	if advertise == "" {
		advertise = ln.Addr().String()
	}
	c := &clusterNode{ln: ln, idleTotal: settings.PoolIdleTotal}
	cfg := cluster.Config{
		OnLiveNodes:  c.liveNodes,
		DB:           settings.ClusterDB,
		Node:         settings.Node,
		Listen:       ln.Addr().String(),
		Advertise:    advertise,
		Secret:       secret,
		LeaseTTL:     settings.ClusterLeaseTTL.Duration,
		ReleaseAfter: settings.ClusterRelease.Duration,
		Logger:       log.With("node", settings.Node),
	}
	if met != nil {
		cfg.ObserveDB = met.ObserveDB
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, err := cluster.Open(ctx, cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	store, err := pgstate.Open(ctx, node.Pool(), node)
	if err != nil {
		node.Abandon()
		ln.Close()
		return nil, err
	}
	data, err := pgdata.Open(ctx, node.Pool(), node)
	if err != nil {
		node.Abandon()
		ln.Close()
		return nil, err
	}
	log.Info("cluster node registered", "node", settings.Node, "cluster-listen", ln.Addr().String(), "advertise", advertise)
	c.node, c.store, c.data = node, store, data
	return c, nil
}

// start attaches the proxy server and serves the internal link.
func (c *clusterNode) start(srv *proxy.Server, log *slog.Logger) {
	c.pool.Store(srv.Pool())
	c.shareOut()
	c.node.Attach(srv)
	go func() {
		if err := c.node.Serve(c.ln); err != nil && !errors.Is(err, cluster.ErrClosed) {
			log.Error("cluster link", "err", err)
		}
	}()
}

// stop hands the node's accounts back (their sessions get BYE and
// reconnect to other nodes) and drops its lease, so that the others need
// not wait out the TTL.
func (c *clusterNode) stop(ctx context.Context, log *slog.Logger) {
	if err := c.node.Close(ctx); err != nil {
		log.Warn("leaving the cluster", "err", err)
	}
	c.store.Close()
	c.data.Close()
}

// metricsSource is the node's figures for the metrics.
func (c *clusterNode) metricsSource() func() metrics.ClusterStats {
	return func() metrics.ClusterStats {
		st := c.node.Stats()
		return metrics.ClusterStats{Owned: st.Owned, Held: st.Held, Takeovers: st.Takeovers, FencedWrites: st.FencedWrites,
			HandoffsIn: st.HandoffsIn, RenewFailures: st.RenewFailures}
	}
}

const clusterUsage = `Usage:
  lemonproxy cluster status -cluster-db URL
  lemonproxy cluster drain -cluster-db URL -node NAME [-timeout 5m]

status lists the nodes: lease, accounts owned, sessions, forwarded sessions.
drain hands a node's accounts to the others (its sessions get BYE and
reconnect elsewhere) and waits until it owns none, before maintenance.
`

// clusterCmd runs "lemonproxy cluster ...".
func clusterCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, clusterUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("lemonproxy cluster "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	db := fs.String("cluster-db", "", "PostgreSQL URL of the cluster's database")
	node := fs.String("node", "", "the node to drain")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long drain waits for the node to hand everything over")
	switch sub {
	case "status", "drain":
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, clusterUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "lemonproxy cluster: unknown command %q\n\n%s", sub, clusterUsage)
		return 2
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, clusterUsage)
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\n\n%s", fs.Name(), err, clusterUsage)
		return 2
	}
	if *db == "" || sub == "drain" && *node == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: missing or extra arguments\n\n%s", fs.Name(), clusterUsage)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if sub == "drain" {
		start := time.Now()
		if err := cluster.Drain(ctx, *db, *node); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
			return 1
		}
		fmt.Fprintf(stdout, "node %s drained in %v: it owns no account\n", *node, time.Since(start).Round(time.Millisecond))
		return 0
	}
	nodes, err := cluster.Status(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDR\tSTATE\tLEASE AGE\tLEASE LEFT\tACCOUNTS\tSESSIONS\tFORWARDED")
	for _, n := range nodes {
		state := "live"
		switch {
		case !n.Live:
			state = "dead"
		case n.Draining:
			state = "draining"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%d\t%d\t%d\n", n.Name, n.Addr, state,
			n.LeaseAge.Round(time.Millisecond), n.LeaseRemaining.Round(time.Millisecond), n.Owned, n.Sessions, n.Forwarded)
	}
	tw.Flush()
	return 0
}
