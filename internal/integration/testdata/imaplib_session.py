"""A real-client session through lemonproxy with Python's imaplib.

Usage: imaplib_session.py HOST PORT USER PASS
Exits 0 and prints PASS when every step gave the expected result.
"""
import imaplib
import sys

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def check(what, got, want):
    if got != want:
        print(f"FAIL {what}: got {got!r}, want {want!r}")
        sys.exit(1)


def ok(what, res):
    typ, data = res
    check(what, typ, "OK")
    return data


msg = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: imaplib test\r\n\r\n" + b"x" * 100000 + b"\r\nend\r\n"

c = imaplib.IMAP4(host, port)
caps = c.capabilities
check("AUTH=PLAIN before login", "AUTH=PLAIN" in caps, True)
# AUTHENTICATE PLAIN (imaplib sends the response after a continuation).
ok("authenticate", c.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, password)).encode()))
check("state", c.state, "AUTH")
caps = ok("capability", c.capability())[0].decode().upper().split()
for cap in ("IMAP4REV1", "ENABLE", "UNSELECT", "UIDPLUS", "NAMESPACE"):
    check("capability " + cap, cap in caps, True)
check("IDLE advertised (whatever the upstream has)", "IDLE" in caps, True)
check("no CONDSTORE (not yet provided)", "CONDSTORE" in caps, False)

ok("create", c.create("py"))
data = ok("append", c.append("py", r"(\Flagged)", None, msg))
check("APPENDUID", b"APPENDUID" in data[0], True)
data = ok("select", c.select("py"))
check("exists", data, [b"1"])
data = ok("fetch", c.fetch("1", "(BODY.PEEK[] FLAGS)"))
check("body", data[0][1], msg)
check("flags", b"\\Flagged" in data[0][0], True)
ok("store", c.store("1", "+FLAGS", r"(\Seen)"))
data = ok("search", c.search(None, "SEEN"))
check("search", data, [b"1"])
data = ok("uid search", c.uid("SEARCH", None, "ALL"))
check("uid search", data, [b"1"])
ok("copy", c.copy("1", "INBOX"))
data = ok("status", c.status("INBOX", "(MESSAGES)"))
check("status", data, [b'INBOX (MESSAGES 1)'])
ok("store deleted", c.store("1", "+FLAGS", r"(\Deleted)"))
data = ok("expunge", c.expunge())
check("expunge", data, [b"1"])
ok("close", c.close())
ok("delete", c.delete("py"))
typ, data = c.select("nosuchmailbox")
check("select missing", typ, "NO")
typ, data = c.logout()
check("logout", typ, "BYE")

# LOGIN with a wrong password.
c = imaplib.IMAP4(host, port)
try:
    c.login(user, "wrong-" + password)
    print("FAIL wrong password accepted")
    sys.exit(1)
except imaplib.IMAP4.error as e:
    check("auth failed code", "AUTHENTICATIONFAILED" in str(e), True)
c.logout()
print("PASS")
