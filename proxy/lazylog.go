package proxy

import (
	"context"
	"log/slog"
	"slices"
	"sync"
)

// lazyAttrs is a slog.Handler that adds a session's attributes (its id,
// the client's address, later its user) to what it logs, and formats them
// only when the session first logs something. slog's own With formats
// them at once (a TextHandler keeps the formatted prefix), a few hundred
// bytes that every session paid when it started and kept while idle,
// although most sessions never log at the levels in force (issue 20).
// The records come out as With would have made them.
type lazyAttrs struct {
	base  slog.Handler
	attrs []slog.Attr
	once  sync.Once
	h     slog.Handler // base.WithAttrs(attrs), made by handler
}

func newLazyAttrs(base slog.Handler, attrs ...slog.Attr) *lazyAttrs {
	return &lazyAttrs{base: base, attrs: attrs}
}

func (l *lazyAttrs) handler() slog.Handler {
	l.once.Do(func() { l.h = l.base.WithAttrs(l.attrs) })
	return l.h
}

// Enabled asks the base handler: attributes do not change what a
// handler logs.
func (l *lazyAttrs) Enabled(ctx context.Context, level slog.Level) bool {
	return l.base.Enabled(ctx, level)
}

func (l *lazyAttrs) Handle(ctx context.Context, r slog.Record) error {
	return l.handler().Handle(ctx, r)
}

// WithAttrs stays lazy: the new attributes follow the session's.
func (l *lazyAttrs) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return l
	}
	return newLazyAttrs(l.base, append(slices.Clip(l.attrs), attrs...)...)
}

func (l *lazyAttrs) WithGroup(name string) slog.Handler {
	if name == "" {
		return l
	}
	return l.handler().WithGroup(name)
}
