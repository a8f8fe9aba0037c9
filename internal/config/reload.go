package config

import "reflect"

// Reloading (SIGHUP). The settings below take effect in the running
// process: for the log, at once; for sessions, in those that start
// afterwards (the abuse limits counted across sessions, conns-per-ip,
// sessions-per-user and auth-failure-max-delay, at the next connection or
// login). Everything else (listeners, upstream, pool, data directory,
// watchers, metrics, PROXY protocol) is built once at start and needs a
// restart.
var reloadable = map[string]bool{
	"log-level":              true,
	"tls-cert":               true, // only while a certificate is in use; see Reload
	"tls-key":                true,
	"allow-plaintext-auth":   true,
	"max-line":               true,
	"max-literal":            true,
	"max-append":             true,
	"max-command-bytes":      true,
	"max-depth":              true,
	"auth-failure-delay":     true,
	"auth-failure-max-delay": true,
	"preauth-timeout":        true,
	"idle-timeout":           true,
	"conns-per-ip":           true,
	"sessions-per-user":      true,
	"preauth-commands":       true,

	"max-other-command-bytes":   true,
	"max-preauth-command-bytes": true,
}

// Reloadable reports whether a reload applies the setting key (a flag
// name) to the running process.
func Reloadable(key string) bool { return reloadable[key] }

// Diff returns the names of the settings that differ between a and b, in
// the order of the Settings fields.
func Diff(a, b Settings) []string {
	var keys []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	typ := va.Type()
	for i := range typ.NumField() {
		if va.Field(i).Interface() != vb.Field(i).Interface() {
			keys = append(keys, typ.Field(i).Tag.Get("toml"))
		}
	}
	return keys
}

// Reload compares the settings just read (next) with those in force (cur).
// applied lists the changed settings a reload applies, restart those that
// need a restart; merged is cur with the applied ones changed, the settings
// in force after the reload. The certificate files count as applied only
// if a certificate is configured both before and after: turning TLS on or
// off changes the listeners and needs a restart.
func Reload(cur, next Settings) (merged Settings, applied, restart []string) {
	merged = cur
	withTLS := hasCert(cur) && hasCert(next)
	vm, vn := reflect.ValueOf(&merged).Elem(), reflect.ValueOf(next)
	typ := vm.Type()
	for i := range typ.NumField() {
		if vm.Field(i).Interface() == vn.Field(i).Interface() {
			continue
		}
		key := typ.Field(i).Tag.Get("toml")
		if !reloadable[key] || (key == "tls-cert" || key == "tls-key") && !withTLS {
			restart = append(restart, key)
			continue
		}
		vm.Field(i).Set(vn.Field(i))
		applied = append(applied, key)
	}
	return merged, applied, restart
}

// hasCert tells whether s configures a client certificate (the proxy then
// offers STARTTLS and may serve listen-tls).
func hasCert(s Settings) bool { return s.TLSCert != "" || s.TLSKey != "" }
