"""UIDPLUS and MOVE with Python's imaplib through lemonproxy.

Usage: imaplib_uidplus.py HOST PORT USER PASS
Prints one line per step (the Go test compares them); UIDVALIDITY values
are checked against STATUS here and printed as "v".
"""
import imaplib
import re
import sys

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = imaplib.IMAP4(host, port)
c.login(user, password)
caps = c.capability()[1][0].decode().upper().split()  # after login
print("caps UIDPLUS=%s MOVE=%s" % ("UIDPLUS" in caps, "MOVE" in caps))


def validity(box):
    typ, data = c.status(box, "(UIDVALIDITY)")
    return re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1).decode()


def code(name, text, box):
    m = re.search(r"\[%s (\d+) ([^\]]+)\]" % name, text)
    if not m:
        return "none"
    v = "v" if m.group(1) == validity(box) else m.group(1)
    return "%s %s" % (v, m.group(2))


msg = b"From: a@example.org\r\nSubject: py %d\r\nMessage-ID: <py%d@example.org>\r\n\r\nbody\r\n"
for i in (1, 2, 3):
    typ, data = c.append("INBOX", None, None, msg % (i, i))
    print("append %s %s" % (typ, code("APPENDUID", data[0].decode(), "INBOX")))
c.select("INBOX")


def copyuid():
    # imaplib files every response code, the tagged answer's too, under
    # its name; response() takes them.
    _, data = c.response("COPYUID")
    return code("COPYUID", "[COPYUID %s]" % data[-1].decode(), "Archive") if data[-1] else "none"


typ, data = c.uid("COPY", "1:2", "Archive")
print("uid copy %s %s" % (typ, copyuid()))
try:
    typ, data = c.uid("MOVE", "3", "Archive")
    cu = copyuid()
    _, expunged = c.response("EXPUNGE")
    print("uid move %s %s expunged %s" % (typ, cu, b",".join(expunged).decode()))
except imaplib.IMAP4.error as e:
    print("uid move refused")
typ, data = c.uid("SEARCH", None, "ALL")
print("inbox %s" % data[0].decode())
c.select("Archive", readonly=True)
typ, data = c.uid("SEARCH", None, "ALL")
print("archive %s" % data[0].decode())
c.logout()
