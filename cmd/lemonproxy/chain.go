package main

import (
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/chain"
	"github.com/lemonproxy/lemonproxy/internal/config"
	"github.com/lemonproxy/lemonproxy/internal/listen"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// extensions is the chain of extensions (package chain: the one list and
// its order) with the settings' values.
func extensions(s config.Settings) ([]proxy.Extension, error) {
	var hosts []string
	for _, h := range strings.Split(s.URLHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	submit, err := listen.ParsePrefixes(s.URLAuthSubmitFrom)
	if err != nil {
		return nil, fmt.Errorf("urlauth-submit-from: %w", err)
	}
	return chain.Extensions(chain.Config{
		IdleKeepAlive:         s.IdleKeepAlive.Duration,
		NotifyPollInterval:    s.NotifyPollInterval.Duration,
		WatchGrace:            s.WatchGrace.Duration,
		UpstreamSearchCasemap: s.UpstreamSearchCasemap,
		SearchMaxBytes:        s.SearchMaxBytes,
		ContextMaxBytes:       s.ContextMaxBytes,
		URLHosts:              hosts,
		SubmitFrom:            submit,
	}), nil
}
