package config

import "testing"

// TestCommandBytesSettings: max-other-command-bytes and
// max-preauth-command-bytes as flags and keys reach the proxy's
// configuration, 0 (the default) leaving the proxy's own default, and a
// reload applies them.
func TestCommandBytesSettings(t *testing.T) {
	path := writeFile(t, "c.toml", "max-other-command-bytes = 5000\nmax-preauth-command-bytes = 600\n")
	s := parse(t, "-config", path, "-max-preauth-command-bytes", "700")
	if s.MaxOtherCommandBytes != 5000 || s.MaxPreAuthCommandBytes != 700 {
		t.Errorf("MaxOtherCommandBytes %d, MaxPreAuthCommandBytes %d; want 5000, 700", s.MaxOtherCommandBytes, s.MaxPreAuthCommandBytes)
	}
	s.Upstream = "u:143"
	cfg, err := s.ProxyConfig(nil, discardLog)
	if err != nil || cfg.MaxOtherCommandBytes != 5000 || cfg.MaxPreAuthCommandBytes != 700 {
		t.Errorf("ProxyConfig: %d, %d, %v", cfg.MaxOtherCommandBytes, cfg.MaxPreAuthCommandBytes, err)
	}
	if d := Defaults(); d.MaxOtherCommandBytes != 0 || d.MaxPreAuthCommandBytes != 0 {
		t.Errorf("defaults %d, %d; want 0 (the proxy's defaults)", d.MaxOtherCommandBytes, d.MaxPreAuthCommandBytes)
	}
	for _, k := range []string{"max-other-command-bytes", "max-preauth-command-bytes"} {
		if !Reloadable(k) {
			t.Errorf("%s not reloadable", k)
		}
	}
}

// TestUpstreamConnsPerAccount: the budget's flag and key reach the pool's
// configuration; 0 (the default) leaves the pool's default.
func TestUpstreamConnsPerAccount(t *testing.T) {
	path := writeFile(t, "c.toml", "upstream-conns-per-account = 7\n")
	s := parse(t, "-config", path)
	if s.UpstreamConnsPerAccount != 7 {
		t.Errorf("file: %d", s.UpstreamConnsPerAccount)
	}
	if s := parse(t, "-config", path, "-upstream-conns-per-account", "-1"); s.UpstreamConnsPerAccount != -1 {
		t.Errorf("flag over file: %d", s.UpstreamConnsPerAccount)
	}
	s.Upstream = "u:143"
	cfg, err := s.ProxyConfig(nil, discardLog)
	if err != nil || cfg.Pool.MaxConnsPerAccount != 7 {
		t.Errorf("ProxyConfig: %d, %v", cfg.Pool.MaxConnsPerAccount, err)
	}
	if d := Defaults().UpstreamConnsPerAccount; d != 0 {
		t.Errorf("default %d; want 0 (the pool's default, 10)", d)
	}
}
