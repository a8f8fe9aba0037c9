package config

import (
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
)

// CertReloader serves a certificate loaded from files and replaces it when
// Reload or Load is called (on SIGHUP), without dropping connections. A
// failed reload keeps the previous certificate.
type CertReloader struct {
	mu                sync.Mutex // serialises Reload and Load, guards the file names
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

// NewCertReloader loads the certificate and key.
func NewCertReloader(certFile, keyFile string) (*CertReloader, error) {
	r := &CertReloader{}
	if err := r.Load(certFile, keyFile); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload re-reads the files.
func (r *CertReloader) Reload() error {
	r.mu.Lock()
	certFile, keyFile := r.certFile, r.keyFile
	r.mu.Unlock()
	return r.Load(certFile, keyFile)
}

// Load reads a certificate and key from (possibly other) files and, if they
// load, serves them from now on and reads them on the next Reload. If
// they do not, everything stays as it was.
func (r *CertReloader) Load(certFile, keyFile string) error {
	switch {
	case certFile == "":
		return fmt.Errorf("config: tls-key %s is set without tls-cert", keyFile)
	case keyFile == "":
		return fmt.Errorf("config: tls-cert %s is set without tls-key", certFile)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("config: loading certificate %s: %w", certFile, err)
	}
	r.certFile, r.keyFile = certFile, keyFile
	r.cert.Store(&c)
	return nil
}

// GetCertificate is a tls.Config.GetCertificate callback.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}
