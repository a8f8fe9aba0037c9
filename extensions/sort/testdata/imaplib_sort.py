"""SORT, ESORT and ESEARCH through lemonproxy with Python's imaplib.

Run by python_test.go with the proxy's address in LEMONPROXY_ADDR; prints
one line per answer for the test to compare.
"""
import imaplib
import os

host, port = os.environ["LEMONPROXY_ADDR"].rsplit(":", 1)
M = imaplib.IMAP4(host, int(port))
M.login("alice", "secret")
typ, data = M.capability()
caps = data[0].decode().split()
print("caps", " ".join(c for c in ("SORT", "ESORT", "ESEARCH") if c in caps))
M.select("INBOX")
typ, data = M.sort("(REVERSE ARRIVAL)", "UTF-8", "ALL")
print("sort", typ, data[0].decode())
typ, data = M.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
print("uid sort", typ, data[0].decode())
typ, data = M._simple_command("SORT", "RETURN", "(MIN MAX COUNT)", "(DATE)", "UTF-8", "ALL")
typ, data = M._untagged_response(typ, data, "ESEARCH")
print("esort", typ, data[0].decode().split(")", 1)[1].strip())
typ, data = M._simple_command("SEARCH", "RETURN", "(COUNT)", "ALL")
typ, data = M._untagged_response(typ, data, "ESEARCH")
print("esearch", typ, data[0].decode().split(")", 1)[1].strip())
M.logout()
