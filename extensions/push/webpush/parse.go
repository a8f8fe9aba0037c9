package webpush

import (
	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// args are a command's arguments.
type args struct {
	// ID is the subscription ID (WEBPUSH, ACKWEBPUSH).
	ID string
	// Delete is WEBPUSH's "id NIL" form.
	Delete bool
	// Endpoint, P256dh and Auth are WEBPUSH's other arguments; Code is
	// ACKWEBPUSH's validation code.
	Endpoint, P256dh, Auth, Code string
}

// parseArgs reads the arguments of GETVAPID, WEBPUSH or ACKWEBPUSH (name,
// upper case) from p, positioned after the command's name:
//
//	getvapid   = "GETVAPID"
//	webpush    = "WEBPUSH" SP id SP (endpoint SP p256dh SP auth / "NIL")
//	ackwebpush = "ACKWEBPUSH" SP id SP code
//
// Each argument is an astring (atom, quoted string or literal) bounded by
// the limit of its field, and the command must end after them. Errors
// are *invalidArg. Only the form is checked here; parseSubscription
// judges the values.
func parseArgs(name string, p *imapcodec.Parser) (*args, error) {
	a := &args{}
	var err error
	switch name {
	case "GETVAPID":
	case "WEBPUSH":
		if a.ID, err = astringArg(p, "subscription ID", MaxIDLen); err != nil {
			return nil, err
		}
		if err := p.SP(); err != nil {
			return nil, invalid("expected a push endpoint or NIL")
		}
		v, err := p.Value()
		if err != nil {
			return nil, invalid("expected a push endpoint or NIL")
		}
		if imapcodec.IsNil(v) {
			a.Delete = true
			break
		}
		s, ok := imapcodec.AsString(v)
		if !ok {
			return nil, invalid("expected a push endpoint or NIL")
		}
		if len(s) > MaxEndpointLen {
			return nil, invalid("the push endpoint is longer than %d bytes", MaxEndpointLen)
		}
		a.Endpoint = s
		if a.P256dh, err = astringArg(p, "ECDH public key", maxKeyText); err != nil {
			return nil, err
		}
		if a.Auth, err = astringArg(p, "authentication secret", maxKeyText); err != nil {
			return nil, err
		}
	case "ACKWEBPUSH":
		if a.ID, err = astringArg(p, "subscription ID", MaxIDLen); err != nil {
			return nil, err
		}
		if a.Code, err = astringArg(p, "validation code", maxCodeLen); err != nil {
			return nil, err
		}
	default:
		return nil, invalid("unknown command")
	}
	if !p.AtEnd() {
		return nil, invalid("unexpected arguments")
	}
	return a, nil
}

// astringArg reads SP astring, at most limit bytes.
func astringArg(p *imapcodec.Parser, what string, limit int) (string, error) {
	if err := p.SP(); err != nil {
		return "", invalid("expected a %s", what)
	}
	s, err := p.AString()
	if err != nil {
		return "", invalid("expected a %s", what)
	}
	if len(s) == 0 || len(s) > limit {
		return "", invalid("the %s must be 1 to %d bytes", what, limit)
	}
	return s, nil
}
