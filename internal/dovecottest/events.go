package dovecottest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// CommandEvent is one IMAP command as Dovecot reported it finished (its
// imap_command_finished event).
type CommandEvent struct {
	User string
	// Session is Dovecot's session ID, one per connection. Events of
	// different connections (different imap processes) reach the log in
	// no set order, even when the commands ran one after the other: only
	// one session's events are in the order of its commands.
	Session string
	// Name is the command as Dovecot names it: "UID FETCH", "NOOP".
	Name string
	// Duration is how long Dovecot took from reading the command to
	// answering it; LockWait is the part of it spent waiting for locks
	// (the index's, the maildir's).
	Duration, LockWait time.Duration
}

// CommandEvents returns every command the server has finished so far, in
// the order its log holds them (per connection, the order of its commands:
// see CommandEvent.Session). The server must have been started with
// Options.CommandEvents. Dovecot's log process writes the events a little
// after the commands end: a command answered just now may be missing.
func (s *Server) CommandEvents() ([]CommandEvent, error) {
	if !s.params.CommandEvents {
		return nil, errors.New("dovecottest: server started without Options.CommandEvents")
	}
	f, err := os.Open(filepath.Join(s.Dir, "dovecot.log"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []CommandEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	marker := []byte(`{"event":"imap_command_finished"`)
	for sc.Scan() {
		i := bytes.Index(sc.Bytes(), marker)
		if i < 0 {
			continue
		}
		var e struct {
			Fields struct {
				User     string `json:"user"`
				Session  string `json:"session"`
				Name     string `json:"cmd_name"`
				Duration int64  `json:"duration"`        // µs
				LockWait int64  `json:"lock_wait_usecs"` // µs
			} `json:"fields"`
		}
		if err := json.Unmarshal(sc.Bytes()[i:], &e); err != nil {
			return nil, fmt.Errorf("dovecottest: command event %q: %w", sc.Bytes()[i:], err)
		}
		out = append(out, CommandEvent{
			User:     e.Fields.User,
			Session:  e.Fields.Session,
			Name:     e.Fields.Name,
			Duration: time.Duration(e.Fields.Duration) * time.Microsecond,
			LockWait: time.Duration(e.Fields.LockWait) * time.Microsecond,
		})
	}
	return out, sc.Err()
}
