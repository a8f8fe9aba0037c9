package push

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// Config configures the extension. Zero values select the defaults.
type Config struct {
	// Mailboxes are the mailboxes that push for registrations that name
	// none. Default: INBOX.
	Mailboxes []string
	// MaxRegistrations bounds each account's registrations, all channels
	// together; one more is refused with ErrTooMany. Default 20.
	MaxRegistrations int

	// How the proxy logs in for a registered account while no session of
	// it is connected: as MasterUser with MasterPassword (SASL PLAIN with
	// the user as authorization identity), or, where no master user is
	// set, with the user's own credentials sealed with CredentialsKey (32
	// bytes; see seal.go). One of the two is required.
	MasterUser, MasterPassword string
	CredentialsKey             []byte

	// LiveWatchers caps the accounts watched live: one upstream
	// connection each, IDLE on their first mailbox (the hub's watcher,
	// shared with the account's sessions). Accounts beyond it, and the
	// other mailboxes of live accounts, are polled with STATUS in
	// rotation over at most PollConns connections, each account at most
	// every PollInterval. Defaults: 10,000 (negative: none live), 4, 60 s.
	LiveWatchers int
	PollConns    int
	PollInterval time.Duration

	// Delivery: Senders pushes at once, each attempt bounded by
	// DeliverTimeout; a failed one is retried after MinBackoff, doubling
	// up to MaxBackoff (with jitter), and given up (counted and logged)
	// once it has waited GiveUp. Defaults: 32, 30 s, 1 s, 5 min, 6 h.
	Senders                int
	DeliverTimeout         time.Duration
	MinBackoff, MaxBackoff time.Duration
	GiveUp                 time.Duration

	// StartConcurrency bounds the live watchers starting at once (at
	// start-up every registered account's). Default 16.
	StartConcurrency int

	// ClaimInterval is how often, in a cluster, a node looks for
	// registered accounts it should hold beside the placement changes it
	// is told of (cluster.go). Default 1 min.
	ClaimInterval time.Duration

	// Endpoints is the policy for push endpoints that clients name (Web
	// Push subscriptions): channels take it from Extension.Endpoints, so
	// that one operator setting (-push-allow-private-endpoints) covers
	// them all. The zero value is the production policy.
	Endpoints EndpointPolicy

	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if len(c.Mailboxes) == 0 {
		c.Mailboxes = []string{"INBOX"}
	}
	c.Mailboxes = canonicalBoxes(c.Mailboxes)
	if c.MaxRegistrations <= 0 {
		c.MaxRegistrations = 20
	}
	if c.LiveWatchers == 0 {
		c.LiveWatchers = 10000
	}
	if c.LiveWatchers < 0 {
		c.LiveWatchers = 0
	}
	if c.PollConns <= 0 {
		c.PollConns = 4
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 60 * time.Second
	}
	if c.Senders <= 0 {
		c.Senders = 32
	}
	if c.DeliverTimeout <= 0 {
		c.DeliverTimeout = 30 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Minute
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	if c.GiveUp <= 0 {
		c.GiveUp = 6 * time.Hour
	}
	if c.StartConcurrency <= 0 {
		c.StartConcurrency = 16
	}
	if c.ClaimInterval <= 0 {
		c.ClaimInterval = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// canonicalBoxes spells INBOX in upper case (it is case-insensitive) and
// drops repeats, keeping the order.
func canonicalBoxes(boxes []string) []string {
	out := make([]string, 0, len(boxes))
	for _, b := range boxes {
		if strings.EqualFold(b, "INBOX") {
			b = "INBOX"
		}
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}

// Extension is the channel-neutral part of push: the registry of
// registrations (the Registrar channels use), the watchers of registered
// accounts, and the durable delivery of Events to the Channels. It is a
// proxy.Extension with no command of its own: a Provisioner (the account
// data store, the mailbox service, the upstream service), a SessionHook
// (a login refreshes the account's sealed credentials) and an io.Closer.
type Extension struct {
	// OnDelivered, if set before the server starts, is told of every
	// delivered push: its channel and the time from the hub's reading of
	// the change (Event.At) to the push service's acceptance (metrics'
	// push delivery histogram).
	OnDelivered func(channel string, latency time.Duration)

	cfg      Config
	log      *slog.Logger
	channels map[string]Channel
	client   *Client // for Config.Endpoints
	seal     *sealer // nil with a master user

	data  accountdata.Store
	mbox  *proxy.MailboxService
	up    *proxy.UpstreamService
	place proxy.Placement // nil on a single node

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// locks serialise the store writes of one account (by a hash of its
	// name; a fixed array, so nothing grows per account).
	seed  maphash.Seed
	locks [64]sync.Mutex

	w     watchers
	q     queue
	stats stats
}

var (
	_ proxy.Provisioner = (*Extension)(nil)
	_ proxy.SessionHook = (*Extension)(nil)
	_ AccountRegistrar  = (*Extension)(nil)
)

// New returns the extension. Channels are added with AddChannel before
// the server starts.
func New(cfg Config) (*Extension, error) {
	if err := CheckConfig(cfg); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	e := &Extension{cfg: cfg, log: cfg.Logger.With("ext", "push"), channels: map[string]Channel{}, seed: maphash.MakeSeed()}
	if cfg.MasterUser == "" {
		s, err := newSealer(cfg.CredentialsKey)
		if err != nil {
			return nil, err
		}
		e.seal = s
	}
	e.client = cfg.Endpoints.NewClient()
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.w.init(e)
	e.q.init(e)
	e.stats.init()
	return e, nil
}

// CheckConfig returns the error New would return for cfg, building
// nothing: a reload (SIGHUP) checks push's settings with it, so that it
// refuses a file the next start would refuse.
func CheckConfig(cfg Config) error {
	cfg = cfg.withDefaults()
	switch {
	case cfg.MasterUser != "":
		if cfg.MasterPassword == "" {
			return errors.New("push: a master user without a password")
		}
	case cfg.CredentialsKey != nil:
		if _, err := newSealer(cfg.CredentialsKey); err != nil {
			return err
		}
	default:
		return errors.New("push: no way to log in without a session: set a master user (-upstream-master-user) or a credentials key (-push-credentials-key)")
	}
	for _, m := range cfg.Mailboxes {
		if err := checkRegistration(Registration{Channel: "x", ID: "x", Mailboxes: []string{m}}); err != nil {
			return err
		}
	}
	return nil
}

// AddChannel makes ch deliver the registrations of its name. Call it
// before the server starts (before Provision).
func (e *Extension) AddChannel(ch Channel) {
	e.channels[ch.Name()] = ch
	e.stats.addChannel(ch.Name())
}

// Name identifies the extension.
func (*Extension) Name() string { return "push" }

// Endpoints returns the policy for push endpoints that clients name
// (Config.Endpoints): channels check such an endpoint with its CheckURL
// when a registration names it.
func (e *Extension) Endpoints() EndpointPolicy { return e.cfg.Endpoints }

// EndpointClient returns the client, shared by the channels, that POSTs to
// endpoints clients name under Config.Endpoints (its HTTPClient for a
// channel that builds requests itself: webpush.SenderConfig.HTTPClient).
func (e *Extension) EndpointClient() *Client { return e.client }

// Provision takes the services and resumes the registered accounts'
// watchers and the pending pushes saved before the last stop, in the
// background.
func (e *Extension) Provision(svc proxy.Services) error {
	if svc.Data == nil || svc.Mailboxes == nil || svc.Upstream == nil {
		return errors.New("push: the account data store, the mailbox service and the upstream service are required")
	}
	e.data, e.mbox, e.up, e.place = svc.Data, svc.Mailboxes, svc.Upstream, svc.Placement
	e.q.start()
	e.w.start()
	if e.place != nil {
		// A cluster: each node watches the registered accounts it holds
		// (cluster.go).
		e.wg.Go(e.claimLoop)
		return nil
	}
	e.wg.Go(e.resume)
	return nil
}

// Close stops the watchers and the deliveries in flight (pushes not yet
// delivered stay in the store for the next start) and waits for them.
func (e *Extension) Close() error {
	e.cancel()
	e.w.stopAll()
	e.wg.Wait()
	e.client.CloseIdle()
	return nil
}

// lock serialises the store changes of one account.
func (e *Extension) lock(account string) func() {
	m := &e.locks[maphash.String(e.seed, account)%uint64(len(e.locks))]
	m.Lock()
	return m.Unlock
}

// Register implements Registrar.
func (e *Extension) Register(ctx context.Context, s *proxy.Session, reg Registration) error {
	return e.RegisterAccount(ctx, s.UpstreamAccount(), reg)
}

// ErrNoChannel refuses a registration for a channel that is not
// configured.
var ErrNoChannel = errors.New("push: no such channel")

// RegisterAccount implements AccountRegistrar: it stores reg for a's account
// (replacing one with the same channel and ID), with a's credentials
// sealed where the operator chose sealed credentials, and starts watching
// the account if it was not watched. The registration, the credentials
// and the limit's check are one step: a refused registration stores
// nothing.
func (e *Extension) RegisterAccount(ctx context.Context, a proxy.Account, reg Registration) error {
	if a.Name == "" {
		return errors.New("push: not logged in")
	}
	if e.data == nil {
		return errors.New("push: not provisioned")
	}
	if err := checkRegistration(reg); err != nil {
		return err
	}
	if _, ok := e.channels[reg.Channel]; !ok {
		return fmt.Errorf("%w: %q", ErrNoChannel, reg.Channel)
	}
	if reg.Mailboxes != nil {
		reg.Mailboxes = canonicalBoxes(reg.Mailboxes)
	}
	if reg.Created.IsZero() {
		reg.Created = time.Now().UTC()
	}
	puts := []accountdata.Record{{Key: regKey(reg.Channel, reg.ID), Value: encodeReg(reg)}}
	if e.seal != nil {
		user, pass, ok := a.Credentials()
		if !ok {
			return errors.New("push: the account has no credentials to keep")
		}
		sealed, err := e.seal.seal(a.Name, user, pass)
		if err != nil {
			return err
		}
		puts = append(puts, accountdata.Record{Key: credKey, Value: sealed})
	}
	unlock := e.lock(a.Name)
	defer unlock()
	n, replaced := 0, false
	if err := e.data.List(a.Name, regPrefix, func(k string, _ []byte) bool {
		n++
		replaced = replaced || k == puts[0].Key
		return true
	}); err != nil {
		return fmt.Errorf("push: reading registrations: %w", err)
	}
	if !replaced && n >= e.cfg.MaxRegistrations {
		return fmt.Errorf("%w (at most %d)", ErrTooMany, e.cfg.MaxRegistrations)
	}
	if err := e.data.Write(a.Name, puts, nil); err != nil {
		return fmt.Errorf("push: storing the registration: %w", err)
	}
	e.log.Info("registered", "account", logName(a.Name), "channel", reg.Channel, "id", reg.ID, "replaced", replaced)
	// Under the account's lock, so that resume (which loads accounts
	// under it too) and this agree on the account's registrations.
	switch {
	case e.w.known(a.Name):
		e.w.registered(a.Name, ref(reg))
	case e.place != nil:
		// The session is served here, so this node owns the account:
		// it holds it for the watching.
		if err := e.claimLocked(a.Name); err != nil {
			e.log.Warn("holding a registered account; another node or a later claim watches it", "account", logName(a.Name), "err", err)
		}
	default:
		e.loadAccountLocked(a.Name)
	}
	return nil
}

// Unregister implements Registrar.
func (e *Extension) Unregister(ctx context.Context, account, channel, id string) error {
	return e.unregister(account, channel, id, "unregistered")
}

// unregister removes a registration with its pending pushes, and, with
// the account's last registration, its credentials and cursors.
func (e *Extension) unregister(account, channel, id, why string) error {
	unlock := e.lock(account)
	defer unlock()
	var dels []string
	found, others := false, 0
	if err := e.data.List(account, regPrefix, func(k string, _ []byte) bool {
		if k == regKey(channel, id) {
			found = true
		} else {
			others++
		}
		return true
	}); err != nil {
		return fmt.Errorf("push: reading registrations: %w", err)
	}
	if !found {
		return nil
	}
	dels = append(dels, regKey(channel, id))
	var dropped int
	if err := e.data.List(account, pendingRegPrefix(channel, id), func(k string, _ []byte) bool {
		dels = append(dels, k)
		dropped++
		return true
	}); err != nil {
		return fmt.Errorf("push: reading pending pushes: %w", err)
	}
	if others == 0 {
		dels = append(dels, credKey)
		if err := e.data.List(account, cursorPrefix, func(k string, _ []byte) bool {
			dels = append(dels, k)
			return true
		}); err != nil {
			return fmt.Errorf("push: reading cursors: %w", err)
		}
	}
	if err := e.data.Write(account, nil, dels); err != nil {
		return fmt.Errorf("push: removing the registration: %w", err)
	}
	e.q.drop(qkey{account, channel, id})
	e.log.Info(why, "account", logName(account), "channel", channel, "id", id, "pending_dropped", dropped)
	e.w.unregistered(account, channel, id)
	return nil
}

// Registrations implements Registrar.
func (e *Extension) Registrations(ctx context.Context, account, channel string) ([]Registration, error) {
	if e.data == nil {
		return nil, errors.New("push: not provisioned")
	}
	var out []Registration
	var bad error
	err := e.data.List(account, regPrefix+channel+"\x00", func(k string, v []byte) bool {
		r, err := decodeReg(v)
		if err != nil {
			bad = err
			return true
		}
		out = append(out, r)
		return true
	})
	if err == nil && bad != nil {
		e.log.Error("unreadable registration record", "account", logName(account), "err", bad)
	}
	return out, err
}

// StateChanged acts on each login of a registered account: it watches the
// account again if it was parked (its login was refused: a master user's
// for an account that did not exist then, or sealed credentials after a
// password change), and, with sealed credentials, keeps the login's own
// (after a password change the old ones stop working upstream).
func (e *Extension) StateChanged(s *proxy.Session, state proxy.State) {
	if state != proxy.StateAuthenticated {
		return
	}
	if !e.w.known(s.Account()) {
		if e.place != nil {
			// In a cluster the account may be registered but held by no
			// node (its session took it here): hold it.
			e.claimAtLogin(s.Account(), s.UpstreamAccount())
		}
		return
	}
	if e.seal == nil {
		e.w.unpark(s.Account())
		return
	}
	user, pass, ok := s.UpstreamAccount().Credentials()
	if !ok {
		return
	}
	if err := e.refreshCreds(s.Account(), user, pass); err != nil {
		e.log.Warn("keeping the credentials of a login", "account", logName(s.Account()), "err", err)
	}
}

// SessionClosed implements proxy.SessionHook.
func (*Extension) SessionClosed(*proxy.Session) {}

// Push implements proxy.SessionHook; push writes nothing to sessions.
func (*Extension) Push(*proxy.Session) error { return nil }

// refreshCreds keeps user and pass as the account's sealed credentials
// unless they are already, and wakes the account if it was parked.
func (e *Extension) refreshCreds(account, user, pass string) error {
	unlock := e.lock(account)
	old, err := e.data.Get(account, credKey)
	if err == nil {
		if u, p, err := e.seal.open(account, old); err == nil && u == user && p == pass {
			unlock()
			e.w.unpark(account)
			return nil
		}
	} else if !errors.Is(err, accountdata.ErrNotFound) {
		unlock()
		return err
	}
	n, err := accountdata.Count(e.data, account, regPrefix)
	if err != nil || n == 0 {
		unlock()
		return err // no registration left: nothing to keep them for
	}
	sealed, err := e.seal.seal(account, user, pass)
	if err == nil {
		err = accountdata.Put(e.data, account, credKey, sealed)
	}
	unlock()
	if err != nil {
		return err
	}
	e.w.unpark(account)
	return nil
}

// logName is an account key as logs show it: the user, without the
// upstream address and its NUL.
func logName(account string) string {
	if _, user, ok := strings.Cut(account, "\x00"); ok {
		return user
	}
	return account
}

// resume loads the registered accounts and the pending pushes at start.
func (e *Extension) resume() {
	var accounts []string
	if err := e.data.Accounts(regPrefix, func(a string) bool {
		accounts = append(accounts, a)
		return true
	}); err != nil {
		e.log.Error("listing registered accounts; none is watched until it registers again", "err", err)
	}
	for _, a := range accounts {
		if e.ctx.Err() != nil {
			return
		}
		e.loadAccount(a)
	}
	e.q.load()
	if len(accounts) > 0 {
		e.log.Info("resumed", "accounts", len(accounts), "pending", e.q.size())
	}
}

// loadAccount reads an account's registrations and starts watching it.
func (e *Extension) loadAccount(account string) {
	unlock := e.lock(account)
	defer unlock()
	if !e.w.known(account) { // else it registered meanwhile, and was loaded then
		e.loadAccountLocked(account)
	}
}

// loadAccountLocked is loadAccount under the account's lock.
func (e *Extension) loadAccountLocked(account string) {
	e.loadHeldLocked(account, nil)
}

// loadHeldLocked reads an account's registrations and starts watching it,
// kept here by h in a cluster (nil on a single node). It reports whether
// the account is watched now.
func (e *Extension) loadHeldLocked(account string, h *hold) bool {
	var refs []regRef
	if err := e.data.List(account, regPrefix, func(k string, v []byte) bool {
		r, err := decodeReg(v)
		if err != nil {
			e.log.Error("unreadable registration record: not pushed to (push list shows it)", "account", logName(account), "key", k[len(regPrefix):], "err", err)
			return true
		}
		refs = append(refs, ref(r))
		return true
	}); err != nil {
		e.log.Error("reading registrations", "account", logName(account), "err", err)
		return false
	}
	return e.w.loaded(account, refs, h)
}
