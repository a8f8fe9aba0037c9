package listext_test

import (
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/lemonproxy/lemonproxy/extensions/listext"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rfcCommands are RFC 5258 section 5's commands over its example tree
// (rfcTree), and more that exercise what its examples leave out.
var rfcCommands = []string{
	`LIST (SUBSCRIBED) "" "*"`,
	`LIST () "" "%" RETURN (CHILDREN)`,
	`LIST "" "%" RETURN (SUBSCRIBED)`,
	`LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)`,
	`LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"`,
	`LIST (SUBSCRIBED) "" "%"`,
	`LIST (SUBSCRIBED RECURSIVEMATCH) "" "*Banana"`,
	`LIST "" ("Fruit" "Vegetable/%")`,
	`LIST "" ("Fruit/*" "Fruit/Apple" "Tofu") RETURN (SUBSCRIBED CHILDREN)`,
	`LIST (REMOTE) "" "*" RETURN (CHILDREN)`,
	`LIST (SUBSCRIBED) "" ("Fruit/%" "inbox")`,
	`LIST "Fruit/" "%"`,
	`LIST (SUBSCRIBED) "Fruit/" "%" RETURN (SUBSCRIBED)`,
}

// rfcTree makes RFC 5258 5's example hierarchy on the account (sep is
// the upstream's delimiter): INBOX, Fruit with Apple and Banana, Tofu,
// Vegetable with Broccoli and Corn; subscribed are INBOX, Fruit/Banana,
// the nonexistent Fruit/Peach, Vegetable and Vegetable/Broccoli.
func rfcTree(c *imaptest.Client, sep string) {
	for _, m := range []string{"Fruit", "Fruit/Apple", "Fruit/Banana", "Tofu", "Vegetable", "Vegetable/Broccoli", "Vegetable/Corn"} {
		c.MustOK(`CREATE "` + strings.ReplaceAll(m, "/", sep) + `"`)
	}
	for _, m := range []string{"INBOX", "Fruit/Banana", "Vegetable", "Vegetable/Broccoli"} {
		c.MustOK(`SUBSCRIBE "` + strings.ReplaceAll(m, "/", sep) + `"`)
	}
	// Dovecot subscribes only to mailboxes that exist: Fruit/Peach is
	// made, subscribed to and deleted, as imaptest's listext does.
	c.MustOK(`CREATE "Fruit` + sep + `Peach"`)
	c.MustOK(`SUBSCRIBE "Fruit` + sep + `Peach"`)
	c.MustOK(`DELETE "Fruit` + sep + `Peach"`)
}

// run sends each command and returns its untagged answers, each with its
// attributes in a fixed order, sorted: RFC 5258 orders neither.
func run(t *testing.T, c *imaptest.Client, sep string) map[string][]string {
	out := map[string][]string{}
	for _, cmd := range rfcCommands {
		lines := c.MustOK(strings.ReplaceAll(cmd, "/", sep))
		var got []string
		for _, l := range lines[:len(lines)-1] {
			got = append(got, normalize(l))
		}
		slices.Sort(got)
		out[cmd] = got
	}
	return out
}

// normalize sorts a LIST response's attributes and spells them in one case.
func normalize(line string) string {
	i, j := strings.Index(line, "("), strings.Index(line, ")")
	if i < 0 || j < i {
		return line
	}
	attrs := strings.Fields(strings.ToLower(line[i+1 : j]))
	slices.Sort(attrs)
	// CHILDINFO is an astring: Dovecot sends it as an atom, the proxy
	// quoted as RFC 5258's examples.
	rest := strings.Replace(line[j:], `("CHILDINFO"`, `(CHILDINFO`, 1)
	return line[:i+1] + strings.Join(attrs, " ") + rest
}

// TestDovecot runs the commands through the proxy over Dovecot's legacy
// profile (no LIST-EXTENDED: the proxy synthesizes) and full profile (the
// proxy relays), on the same tree, and prints both.
func TestDovecot(t *testing.T) {
	results := map[dovecottest.Profile]map[string][]string{}
	sepOf := map[dovecottest.Profile]string{}
	for _, profile := range []dovecottest.Profile{dovecottest.Legacy, dovecottest.Full} {
		dc := dovecottest.Start(t, profile)
		p := imaptest.StartProxy(t, dc.Addr, proxy.Config{Extensions: []proxy.Extension{listext.New()}})
		c := imaptest.Login(t, p.Addr, "alice", "alicepass")
		if caps := c.MustOK("CAPABILITY")[0]; strings.Count(caps, " LIST-EXTENDED") != 1 {
			t.Errorf("%s: capabilities %q: want LIST-EXTENDED once", profile, caps)
		}
		// LIST-STATUS is not the proxy's (the upstream's HIGHESTMODSEQ
		// is not), relayed or not.
		c.ExpectDo("st", `LIST "" "*" RETURN (STATUS (MESSAGES))`, "st BAD *")
		c.ExpectDo("bad", `LIST (RECURSIVEMATCH) "" "*"`, "bad BAD *")
		sep := delimiter(t, c)
		sepOf[profile] = sep
		rfcTree(c, sep)
		results[profile] = run(t, c, sep)
		c.Close()
	}
	for i, cmd := range rfcCommands {
		l, f := results[dovecottest.Legacy][cmd], results[dovecottest.Full][cmd]
		if !slices.Equal(l, f) {
			t.Errorf("%s: synthesized over legacy and relayed from full differ:\n legacy %q\n full   %q", cmd, l, f)
		}
		var want []string
		for _, w := range rfcWant[i] {
			want = append(want, strings.ReplaceAll(w, "/", sepOf[dovecottest.Legacy]))
		}
		if !slices.Equal(l, want) {
			t.Errorf("%s:\n got  %q\n want %q", cmd, l, want)
		}
	}
}

func delimiter(t *testing.T, c *imaptest.Client) string {
	lines := c.MustOK(`LIST "" ""`)
	f := strings.Fields(lines[0])
	if len(f) < 4 {
		t.Fatalf("LIST \"\" \"\": %q", lines)
	}
	return strings.Trim(f[len(f)-2], `"`)
}

// rfcWant are the answers to rfcCommands, normalized as run does, with
// "/" for the delimiter. The first four are RFC 5258 5's examples 2 to 5
// on its tree (INBOX there is \Marked \NoInferiors, which Dovecot's is
// not; Dovecot's LIST answers in the delimiter ".").
var rfcWant = [][]string{
	{`* LIST (\nonexistent \subscribed) "/" Fruit/Peach`, `* LIST (\subscribed) "/" Fruit/Banana`, `* LIST (\subscribed) "/" INBOX`, `* LIST (\subscribed) "/" Vegetable`, `* LIST (\subscribed) "/" Vegetable/Broccoli`},
	{`* LIST (\haschildren) "/" Fruit`, `* LIST (\haschildren) "/" Vegetable`, `* LIST (\hasnochildren) "/" INBOX`, `* LIST (\hasnochildren) "/" Tofu`},
	{`* LIST () "/" Fruit`, `* LIST () "/" Tofu`, `* LIST (\subscribed) "/" INBOX`, `* LIST (\subscribed) "/" Vegetable`},
	{`* LIST (\haschildren \subscribed) "/" Vegetable (CHILDINFO ("SUBSCRIBED"))`, `* LIST (\haschildren) "/" Fruit (CHILDINFO ("SUBSCRIBED"))`, `* LIST (\hasnochildren \subscribed) "/" INBOX`},
	{`* LIST () "/" Fruit (CHILDINFO ("SUBSCRIBED"))`, `* LIST (\subscribed) "/" INBOX`, `* LIST (\subscribed) "/" Vegetable (CHILDINFO ("SUBSCRIBED"))`},
	{`* LIST (\subscribed) "/" INBOX`, `* LIST (\subscribed) "/" Vegetable`},
	{`* LIST (\subscribed) "/" Fruit/Banana`},
	{`* LIST () "/" Fruit`, `* LIST () "/" Vegetable/Broccoli`, `* LIST () "/" Vegetable/Corn`},
	{`* LIST (\hasnochildren \subscribed) "/" Fruit/Banana`, `* LIST (\hasnochildren) "/" Fruit/Apple`, `* LIST (\hasnochildren) "/" Tofu`},
	{`* LIST (\haschildren) "/" Fruit`, `* LIST (\haschildren) "/" Vegetable`, `* LIST (\hasnochildren) "/" Fruit/Apple`, `* LIST (\hasnochildren) "/" Fruit/Banana`, `* LIST (\hasnochildren) "/" INBOX`, `* LIST (\hasnochildren) "/" Tofu`, `* LIST (\hasnochildren) "/" Vegetable/Broccoli`, `* LIST (\hasnochildren) "/" Vegetable/Corn`},
	{`* LIST (\nonexistent \subscribed) "/" Fruit/Peach`, `* LIST (\subscribed) "/" Fruit/Banana`, `* LIST (\subscribed) "/" INBOX`},
	{`* LIST (\hasnochildren) "/" Fruit/Apple`, `* LIST (\hasnochildren) "/" Fruit/Banana`},
	{`* LIST (\nonexistent \subscribed) "/" Fruit/Peach`, `* LIST (\subscribed) "/" Fruit/Banana`},
}
