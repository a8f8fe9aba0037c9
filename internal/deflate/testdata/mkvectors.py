#!/usr/bin/env python3
"""Writes raw deflate test vectors with zlib's flush modes.

plain.txt is the plaintext; zlib-<mode>-<level>.bin is that text compressed
in pieces, each piece followed by a flush of the given mode, and the stream
finished with Z_FINISH; zlib-<mode>-<level>.idx lists, for each piece, the
compressed and plaintext offsets where it ends. Run from this directory:
python3 mkvectors.py
"""
import random
import zlib

rng = random.Random(42)
words = ("FETCH UID FLAGS \\Seen ENVELOPE BODYSTRUCTURE INBOX Sent example.org alice bob "
         "meeting invoice Re: text plain html utf-8 NIL").split()
pieces = []
for i in range(300):
    n = rng.choice([1, 5, 40, 200, 3000])
    s = "".join("%s%s" % (rng.choice(words), " " if rng.random() < 0.9 else "\r\n") for _ in range(n))
    if rng.random() < 0.05:
        s += "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(2000)))
    pieces.append(s.encode())
with open("plain.txt", "wb") as f:
    f.write(b"".join(pieces))

modes = {"sync": zlib.Z_SYNC_FLUSH, "partial": zlib.Z_PARTIAL_FLUSH,
         "full": zlib.Z_FULL_FLUSH, "block": zlib.Z_BLOCK}
for name, mode in modes.items():
    for level in (1, 6, 9):
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        out = []
        idx = []
        comp = plain = 0
        for p in pieces:
            out.append(c.compress(p))
            out.append(c.flush(mode))
            comp += len(out[-2]) + len(out[-1])
            plain += len(p)
            idx.append("%d %d\n" % (comp, plain))
        out.append(c.flush(zlib.Z_FINISH))
        with open("zlib-%s-%d.bin" % (name, level), "wb") as f:
            f.write(b"".join(out))
        with open("zlib-%s-%d.idx" % (name, level), "w") as f:
            f.write("".join(idx))
