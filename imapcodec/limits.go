package imapcodec

import "errors"

// Limits bounds what a Reader and the parser accept. The zero value of a field
// selects its default.
type Limits struct {
	// MaxLine is the longest line of text, literal headers included, without
	// its CRLF. Default 64 KiB (Dovecot's default imap_max_line_length).
	MaxLine int
	// MaxLiteral is the largest literal that may be announced at all.
	// Default 64 MiB.
	MaxLiteral int64
	// MaxInlineLiteral is the largest literal read into memory by
	// [Reader.ReadSegments]; larger literals are streamed or refused.
	// Default 64 KiB.
	MaxInlineLiteral int64
	// MaxDepth is the deepest nesting of parenthesised lists. Default 32.
	MaxDepth int
}

// Default limit values.
const (
	DefaultMaxLine          = 64 * 1024
	DefaultMaxLiteral       = 64 * 1024 * 1024
	DefaultMaxInlineLiteral = 64 * 1024
	DefaultMaxDepth         = 32
)

// WithDefaults returns l with zero fields replaced by their defaults.
func (l Limits) WithDefaults() Limits {
	if l.MaxLine <= 0 {
		l.MaxLine = DefaultMaxLine
	}
	if l.MaxLiteral <= 0 {
		l.MaxLiteral = DefaultMaxLiteral
	}
	if l.MaxInlineLiteral <= 0 {
		l.MaxInlineLiteral = DefaultMaxInlineLiteral
	}
	if l.MaxInlineLiteral > l.MaxLiteral {
		l.MaxInlineLiteral = l.MaxLiteral
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	return l
}

// Errors reported by the Reader and the parser. They are returned wrapped, so
// test with errors.Is.
var (
	// ErrLineTooLong means a line exceeded Limits.MaxLine. The rest of the
	// line has not been read; the stream cannot be resynchronised.
	ErrLineTooLong = errors.New("line too long")
	// ErrLiteralTooLarge means a literal header announced more than the
	// applicable limit. The literal's bytes have not been read.
	ErrLiteralTooLarge = errors.New("literal too large")
	// ErrTooDeep means lists were nested deeper than Limits.MaxDepth.
	ErrTooDeep = errors.New("lists nested too deeply")
	// ErrSyntax is wrapped by every syntax error.
	ErrSyntax = errors.New("syntax error")
)
