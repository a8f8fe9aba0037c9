package push

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
)

// WriteList writes the registrations kept in s, one a line, for operators
// (lemonproxy push list): the account (user and upstream), the channel,
// the registration's ID, when it was made, the mailboxes it pushes
// ("default": Config.Mailboxes), its pending pushes, and how the proxy
// logs in for the account without a session (sealed: credentials kept;
// "-": none kept, the master user or nothing). The device's data (a
// token, an endpoint: a capability to wake the device) is shown only with
// showData; otherwise its size. Unreadable records are listed as such.
func WriteList(w io.Writer, s accountdata.Store, showData bool) error {
	var accounts []string
	if err := s.Accounts(regPrefix, func(a string) bool {
		accounts = append(accounts, a)
		return true
	}); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tUPSTREAM\tCHANNEL\tID\tCREATED\tMAILBOXES\tPENDING\tLOGIN\tDATA")
	for _, account := range accounts {
		upstreamAddr, user, ok := strings.Cut(account, "\x00")
		if !ok {
			upstreamAddr, user = "?", account
		}
		login := "-"
		if _, err := s.Get(account, credKey); err == nil {
			login = "sealed"
		}
		pendingBy := map[string]int{}
		if err := s.List(account, pendingPrefix, func(k string, _ []byte) bool {
			if ch, id, _, ok := parsePendingKey(k[len(pendingPrefix):]); ok {
				pendingBy[ch+"\x00"+id]++
			}
			return true
		}); err != nil {
			return err
		}
		err := s.List(account, regPrefix, func(k string, v []byte) bool {
			ch, id, _ := parseRegKey(k[len(regPrefix):])
			r, err := decodeReg(v)
			if err != nil {
				fmt.Fprintf(tw, "%q\t%s\t%q\t%q\tUNREADABLE\t\t\t%s\t%v\n", user, upstreamAddr, ch, id, login, err)
				return true
			}
			boxes := "default"
			if r.Mailboxes != nil {
				boxes = strings.Join(r.Mailboxes, ",")
			}
			data := fmt.Sprintf("(%d bytes)", len(r.Data))
			if showData {
				data = fmt.Sprintf("%q", r.Data)
			}
			fmt.Fprintf(tw, "%q\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", user, upstreamAddr, r.Channel, r.ID,
				r.Created.UTC().Format(time.RFC3339), boxes, pendingBy[ch+"\x00"+id], login, data)
			return true
		})
		if err != nil {
			return err
		}
	}
	return tw.Flush()
}
