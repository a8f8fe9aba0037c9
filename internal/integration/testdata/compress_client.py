#!/usr/bin/env python3
"""An IMAP client with COMPRESS=DEFLATE done by hand with zlib (raw deflate,
wbits -15, a Z_SYNC_FLUSH after every write), as RFC 4978 describes.

Usage: compress_client.py HOST PORT USER PASS MODE
  big      APPEND a 10 MB message in 1 MB writes, FETCH it back, compare
  idle     IDLE, have a second (plain imaplib) connection APPEND, expect
           the EXISTS compressed and at once, then DONE
  corrupt  send bytes that are not deflate after COMPRESS: expect a BYE
  zlib     send a zlib stream (header and all) after COMPRESS: expect a BYE
  interleave UID:SHA256...
           three rounds of: FETCH each message (its SHA-256 must match),
           pausing between them; NOOP; IDLE with a push from a second
           connection; DONE; FETCH the pushed message
  loop N on|off MAILBOX
           print READY, wait for a line on stdin, FETCH every message of
           MAILBOX N times (with COMPRESS if on), print the JSON, wait for
           another line, LOGOUT (the caller measures CPU meanwhile)

Prints one line of JSON; "ok": true when every check passed.
"""
import hashlib
import imaplib
import json
import random
import re
import socket
import sys
import time
import zlib

LIT = re.compile(rb"\{(\d+)\+?\}$")


class Client:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.buf = bytearray()
        self.c = None  # compressor
        self.d = None  # decompressor
        self.wire_out = self.plain_out = self.wire_in = self.plain_in = 0
        self.seq = 0
        self.readline()  # greeting

    def send(self, data):
        self.plain_out += len(data)
        if self.c is not None:
            data = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        self.wire_out += len(data)
        self.sock.sendall(data)

    def fill(self):
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("connection closed")
        self.wire_in += len(data)
        if self.d is not None:
            data = self.d.decompress(data)
        self.plain_in += len(data)
        self.buf += data

    def readline(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self.fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def response_line(self):
        """One response; literals are returned as (line, [literals])."""
        line = self.readline()
        lits = []
        while True:
            m = LIT.search(line)
            if not m:
                return line, lits
            lits.append(self.read_exact(int(m.group(1))))
            line += b"\r\n" + self.readline()

    def command(self, text, literal=None, chunk=1 << 20):
        self.seq += 1
        tag = b"z%d" % self.seq
        if literal is None:
            self.send(tag + b" " + text + b"\r\n")
        else:
            self.send(tag + b" " + text + b" {%d}\r\n" % len(literal))
            line, _ = self.response_line()
            if not line.startswith(b"+"):
                raise RuntimeError("no continuation: %r" % line)
            for i in range(0, len(literal), chunk):
                self.send(literal[i:i + chunk])
            self.send(b"\r\n")
        out = []
        while True:
            line, lits = self.response_line()
            out.append((line, lits))
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError("%s failed: %r" % (text[:40], line))
                return out

    def compress(self):
        self.command(b"COMPRESS DEFLATE")
        self.c = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.d = zlib.decompressobj(-15)
        # Anything buffered past the OK is already compressed.
        rest = bytes(self.buf)
        self.buf = bytearray(self.d.decompress(rest)) if rest else bytearray()

    def stats(self):
        return {"wire_out": self.wire_out, "plain_out": self.plain_out,
                "wire_in": self.wire_in, "plain_in": self.plain_in}


def big_message():
    rng = random.Random(7)
    words = ("meeting report invoice quarterly the of and to project budget review "
             "please find attached regards thanks schedule update status").split()
    lines = [b"From: Big Sender <big@example.org>", b"To: alice@example.org",
             b"Subject: ten megabytes", b"Message-ID: <big@example.org>",
             b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="b1"', b"",
             b"--b1", b"Content-Type: text/plain", b""]
    size = 0
    while size < 6 << 20:
        l = " ".join(rng.choice(words) for _ in range(12)).encode()
        lines.append(l)
        size += len(l) + 2
    lines += [b"--b1", b"Content-Type: application/octet-stream",
              b"Content-Transfer-Encoding: base64", b""]
    import base64
    blob = base64.encodebytes(rng.randbytes(3 << 20)).replace(b"\n", b"\r\n")
    msg = b"\r\n".join(lines) + b"\r\n" + blob + b"--b1--\r\n"
    return msg[:10 << 20] if len(msg) > 10 << 20 else msg + b"x" * ((10 << 20) - len(msg))


def mode_big(host, port, user, pw):
    c = Client(host, port)
    c.command(b"LOGIN %s %s" % (user.encode(), pw.encode()))
    c.compress()
    msg = big_message()
    t0 = time.time()
    resp = c.command(b"APPEND INBOX", literal=msg)
    t_append = time.time() - t0
    m = re.search(rb"APPENDUID \d+ (\d+)", resp[-1][0])
    c.command(b"SELECT INBOX")
    if m:
        fetch = b"UID FETCH %s BODY.PEEK[]" % m.group(1)
    else:
        fetch = b"FETCH * BODY.PEEK[]"
    t0 = time.time()
    resp = c.command(fetch)
    t_fetch = time.time() - t0
    bodies = [l[0] for line, l in resp if l]
    ok = len(bodies) == 1 and hashlib.sha256(bodies[0]).digest() == hashlib.sha256(msg).digest()
    c.command(b"LOGOUT")
    return {"ok": ok, "size": len(msg), "append_s": round(t_append, 3),
            "fetch_s": round(t_fetch, 3), **c.stats()}


def mode_idle(host, port, user, pw):
    c = Client(host, port)
    c.command(b"LOGIN %s %s" % (user.encode(), pw.encode()))
    c.compress()
    sel = c.command(b"SELECT INBOX")
    exists = [int(l.split()[1]) for l, _ in sel if l.endswith(b" EXISTS")][0]
    c.seq += 1
    tag = b"z%d" % c.seq
    c.send(tag + b" IDLE\r\n")
    line, _ = c.response_line()
    if not line.startswith(b"+"):
        raise RuntimeError("IDLE: %r" % line)
    other = imaplib.IMAP4(host, int(port))
    other.login(user, pw)
    msg = (b"From: pusher@example.org\r\nSubject: pushed\r\n"
           b"Message-ID: <pushed@example.org>\r\n\r\nhello\r\n")
    t0 = time.time()
    other.append("INBOX", None, None, msg)
    other.logout()
    got = None
    while got is None:
        line, _ = c.response_line()
        if line.endswith(b" EXISTS"):
            got = int(line.split()[1])
    latency = time.time() - t0
    c.send(b"DONE\r\n")
    while True:
        line, _ = c.response_line()
        if line.startswith(tag + b" "):
            break
    c.command(b"NOOP")
    c.command(b"LOGOUT")
    return {"ok": got == exists + 1 and line.startswith(tag + b" OK"),
            "exists_before": exists, "exists_pushed": got,
            "push_latency_s": round(latency, 3), **c.stats()}


def fetch_uid(c, uid):
    resp = c.command(b"UID FETCH %d BODY.PEEK[]" % uid)
    bodies = [l[0] for line, l in resp if l]
    if len(bodies) != 1:
        raise RuntimeError("UID FETCH %d: %d bodies" % (uid, len(bodies)))
    return bodies[0]


def idle_push(c, host, port, user, pw, n):
    """IDLE until a message appended by a second connection is announced;
    returns its sequence number."""
    c.seq += 1
    tag = b"z%d" % c.seq
    c.send(tag + b" IDLE\r\n")
    line, _ = c.response_line()
    if not line.startswith(b"+"):
        raise RuntimeError("IDLE: %r" % line)
    other = imaplib.IMAP4(host, int(port))
    other.login(user, pw)
    other.append("INBOX", None, None, b"From: pusher@example.org\r\nSubject: pushed %d\r\n"
                 b"Message-ID: <pushed%d@example.org>\r\n\r\nhello %d\r\n" % (n, n, n))
    other.logout()
    got = None
    while got is None:
        line, _ = c.response_line()
        if line.endswith(b" EXISTS"):
            got = int(line.split()[1])
    c.send(b"DONE\r\n")
    while True:
        line, _ = c.response_line()
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise RuntimeError("IDLE ended with %r" % line)
            return got


def mode_interleave(host, port, user, pw, want):
    c = Client(host, port)
    c.command(b"LOGIN %s %s" % (user.encode(), pw.encode()))
    c.compress()
    c.command(b"SELECT INBOX")
    bad = []
    for rnd in range(3):
        for i, (uid, digest) in enumerate(want):
            body = fetch_uid(c, uid)
            if hashlib.sha256(body).hexdigest() != digest:
                bad.append("round %d uid %d: %d bytes, wrong digest" % (rnd, uid, len(body)))
            # Idle for a moment: the proxy gives its compressor back and
            # parks its inflater; the stream must carry on across that.
            time.sleep(0.05 * (i % 3))
        c.command(b"NOOP")
        seq = idle_push(c, host, port, user, pw, rnd)
        resp = c.command(b"FETCH %d BODY.PEEK[]" % seq)
        body = [l[0] for line, l in resp if l][0]
        if b"hello %d\r\n" % rnd not in body:
            bad.append("round %d: pushed message %r" % (rnd, body[:80]))
    c.command(b"LOGOUT")
    return {"ok": not bad, "bad": bad, **c.stats()}


def mode_loop(host, port, user, pw, n, compress, mailbox):
    c = Client(host, port)
    c.command(b"LOGIN %s %s" % (user.encode(), pw.encode()))
    if compress:
        c.compress()
    c.command(b"SELECT " + mailbox.encode())
    uids = [int(x) for line, _ in c.command(b"UID SEARCH ALL") if line.startswith(b"* SEARCH")
            for x in line.split()[2:]]
    print("READY", flush=True)
    sys.stdin.readline()
    start = c.stats()
    digests = {}
    ok = True
    t0 = time.time()
    for _ in range(n):
        for uid in uids:
            d = hashlib.sha256(fetch_uid(c, uid)).digest()
            ok = ok and digests.setdefault(uid, d) == d
    elapsed = time.time() - t0
    end = c.stats()
    print(json.dumps({"ok": ok, "messages": len(uids), "seconds": round(elapsed, 3),
                      **{k: end[k] - start[k] for k in end}}), flush=True)
    sys.stdin.readline()
    c.command(b"LOGOUT")
    return None


def mode_bad(host, port, user, pw, data):
    c = Client(host, port)
    c.command(b"LOGIN %s %s" % (user.encode(), pw.encode()))
    c.compress()
    c.sock.sendall(data)
    last = b""
    try:
        while True:
            line, _ = c.response_line()
            last = line
    except (EOFError, ConnectionError, zlib.error):
        pass
    return {"ok": last.startswith(b"* BYE"), "last": last.decode("latin-1")}


def main():
    host, port, user, pw, mode = sys.argv[1:6]
    if mode == "big":
        out = mode_big(host, port, user, pw)
    elif mode == "idle":
        out = mode_idle(host, port, user, pw)
    elif mode == "corrupt":
        out = mode_bad(host, port, user, pw, b"\xff\xfe\xfd\xfc garbage, not deflate\r\n")
    elif mode == "zlib":
        out = mode_bad(host, port, user, pw, zlib.compress(b"a1 NOOP\r\n"))
    elif mode == "interleave":
        want = [(int(u), d) for u, d in (a.split(":") for a in sys.argv[6:])]
        out = mode_interleave(host, port, user, pw, want)
    elif mode == "loop":
        out = mode_loop(host, port, user, pw, int(sys.argv[6]), sys.argv[7] == "on", sys.argv[8])
    else:
        raise SystemExit("unknown mode " + mode)
    if out is not None:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
