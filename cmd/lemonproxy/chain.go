package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/chain"
	"github.com/lemonproxy/lemonproxy/internal/config"
	"github.com/lemonproxy/lemonproxy/internal/listen"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// extensions is the chain of extensions (package chain: the one list and
// its order) with the settings' values, which config.Settings.ProxyConfig
// has checked.
func extensions(s config.Settings, log *slog.Logger) ([]proxy.Extension, error) {
	var hosts []string
	for _, h := range strings.Split(s.URLHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	// Checked by config.Settings.ProxyConfig, as everything below.
	submit, err := listen.ParsePrefixes(s.URLAuthSubmitFrom)
	if err != nil {
		return nil, fmt.Errorf("urlauth-submit-from: %w", err)
	}
	perUser := s.SpoolMaxBytesPerUser
	if perUser <= 0 {
		perUser = spoolShare(s.SpoolMaxBytes, s.MaxAppend)
	}
	maxComps := s.CompressMaxCompressors
	if maxComps <= 0 {
		maxComps = -1 // no bound (compress.Extension: 0 would be its default)
	}
	cfg := chain.Config{
		CompressLevel:          s.CompressLevel,
		CompressMaxCompressors: maxComps,
		IdleKeepAlive:          s.IdleKeepAlive.Duration,
		NotifyPollInterval:     s.NotifyPollInterval.Duration,
		WatchGrace:             s.WatchGrace.Duration,
		UpstreamSearchCasemap:  s.UpstreamSearchCasemap,
		SearchMaxBytes:         s.SearchMaxBytes,
		ContextMaxBytes:        s.ContextMaxBytes,
		SpoolMaxBytes:          s.SpoolMaxBytes,
		SpoolMaxBytesPerUser:   perUser,
		URLHosts:               hosts,
		SubmitFrom:             submit,
	}
	pp, err := pushSetup(s, log)
	if err != nil {
		return nil, err
	}
	if pp != nil {
		cfg.Push, cfg.DeviceToken, cfg.WebPush = pp.ext, pp.deviceToken, pp.webPush
	}
	return chain.Extensions(cfg), nil
}

// spoolShare is spool-max-bytes-per-user's default: a quarter of the
// total (its default, 1 GiB, as extensions/internal/urlfetch has it, for
// 0), at least maxAppend and at most the total, so that one account
// cannot hold the whole spool disk and settings made before the share
// existed keep working.
func spoolShare(total, maxAppend int64) int64 {
	if total <= 0 {
		total = 1 << 30
	}
	return min(max(total/4, maxAppend), total)
}
