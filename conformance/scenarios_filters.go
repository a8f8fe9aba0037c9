package conformance

import "strings"

// filterSetup makes a mailbox of three messages, selects it, and defines
// the scenario's filters (name -> value, private or shared), which cleanup
// removes; it returns the client, the UIDs and the names (unique to the
// scenario).
func (t *T) filterSetup(filters []struct{ tree, value string }) (*Client, []uint32, []string, error) {
	name, uids, err := t.Mailbox(3)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := t.Login()
	if err != nil {
		return nil, nil, nil, err
	}
	fname := strings.ToLower(t.base) + "-filter"
	for _, f := range filters {
		e := "/" + f.tree + "/filters/values/" + fname
		t.ServerEntry(e)
		if err := mustOK(c, `SETMETADATA "" (`+e+" "+quote(f.value)+")"); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := mustOK(c, "SELECT "+quote(name)); err != nil {
		return nil, nil, nil, err
	}
	return c, uids, []string{fname}, nil
}

func filters5466() []*Scenario {
	return []*Scenario{
		{ID: "5466-filter-search", RFC: 5466, Section: "3.1", Level: Must, Caps: []string{"FILTERS"},
			Summary: "SEARCH FILTER name searches with the search program stored in /private/filters/values/name",
			Run: func(t *T) error {
				c, uids, names, err := t.filterSetup([]struct{ tree, value string }{{"private", "2:3"}})
				if err != nil {
					return err
				}
				if err := searchStep(c, "SEARCH FILTER "+names[0], u32s(2, 3)); err != nil {
					return err
				}
				if err := searchStep(c, "UID SEARCH FILTER "+names[0], uids[1:]); err != nil {
					return err
				}
				return searchStep(c, "SEARCH OR FILTER "+names[0]+" 1", u32s(1, 2, 3))
			}},
		{ID: "5466-private-first", RFC: 5466, Section: "3.1", Level: Must, Caps: []string{"FILTERS"},
			Summary: "a private filter is used before a shared one of the same name; the shared one when there is no private one",
			Run: func(t *T) error {
				c, _, names, err := t.filterSetup([]struct{ tree, value string }{{"shared", "1"}, {"private", "3"}})
				if err != nil {
					return err
				}
				if err := searchStep(c, "SEARCH FILTER "+names[0], u32s(3)); err != nil {
					return err
				}
				if err := mustOK(c, `SETMETADATA "" (/private/filters/values/`+names[0]+` NIL)`); err != nil {
					return err
				}
				return searchStep(c, "SEARCH FILTER "+names[0], u32s(1))
			}},
		{ID: "5466-undefined-filter", RFC: 5466, Section: "3.1", Level: Must, Caps: []string{"FILTERS"},
			Summary: "SEARCH FILTER with a name no filter has is answered NO [UNDEFINED-FILTER name]",
			Run: func(t *T) error {
				c, _, names, err := t.filterSetup(nil)
				if err != nil {
					return err
				}
				res, err := c.Do("SEARCH FILTER " + names[0])
				if err != nil {
					return err
				}
				if res.Status.Name != "NO" || res.Status.Code != "UNDEFINED-FILTER" || !strings.EqualFold(res.Status.CodeArg, names[0]) {
					return failf("expected NO [UNDEFINED-FILTER %s], got %q", names[0], status(res))
				}
				if s := find(res.Untagged, "SEARCH"); s != nil {
					return failf("a SEARCH response came with the NO: %q", s.Line)
				}
				return nil
			}},
		{ID: "5466-filter-in-not", RFC: 5466, Section: "3.1", Level: Must, Caps: []string{"FILTERS"},
			Summary: "a FILTER key is one search key: NOT FILTER negates the whole stored program",
			Run: func(t *T) error {
				c, _, names, err := t.filterSetup([]struct{ tree, value string }{{"private", "OR 1 3"}})
				if err != nil {
					return err
				}
				if err := searchStep(c, "SEARCH NOT FILTER "+names[0], u32s(2)); err != nil {
					return err
				}
				return searchStep(c, "SEARCH FILTER "+names[0]+" 3", u32s(3))
			}},
	}
}
