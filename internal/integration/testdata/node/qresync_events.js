// Resynchronises INBOX with ImapFlow's QRESYNC support and prints what it
// saw as JSON lines, for TestImapFlowQResync.
//
// Usage:
//   node qresync_events.js HOST PORT USER PASS open
//     Opens INBOX and prints {uidValidity, highestModseq, exists, uids,
//     enabled}, then logs out.
//   node qresync_events.js HOST PORT USER PASS resync UIDVALIDITY MODSEQ
//     Opens INBOX with the stored UIDVALIDITY and mod-sequence (SELECT
//     ... (QRESYNC (...))), prints {mailbox, events} with the expunge,
//     flags and exists events the open produced, then waits for "noop" on
//     stdin, runs NOOP and STATUS (HIGHESTMODSEQ) and prints
//     {highestModseq, events} with the events since, and logs out.
'use strict';

const readline = require('node:readline');
const { ImapFlow } = require('imapflow');

const [host, port, user, pass, mode, uidValidity, modseq] = process.argv.slice(2);

const client = new ImapFlow({
    host,
    port: Number(port),
    secure: false,
    auth: { user, pass },
    logger: false,
    qresync: true,
});

let events = [];
client.on('expunge', (e) => events.push({ event: 'expunge', seq: e.seq, uid: e.uid, vanished: !!e.vanished, earlier: !!e.earlier }));
client.on('flags', (e) => events.push({
    event: 'flags',
    seq: e.seq,
    uid: e.uid,
    modseq: e.modseq === undefined ? undefined : String(e.modseq),
    flags: [...e.flags].sort(),
}));
client.on('exists', (e) => events.push({ event: 'exists', count: e.count, prevCount: e.prevCount }));
client.on('error', (err) => {
    console.error('imapflow error:', err);
    process.exit(2);
});

function print(value) {
    process.stdout.write(JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
}

async function main() {
    await client.connect();
    if (mode === 'open') {
        const mailbox = await client.mailboxOpen('INBOX');
        const uids = [];
        for await (const msg of client.fetch('1:*', { uid: true })) {
            uids.push(msg.uid);
        }
        print({
            uidValidity: mailbox.uidValidity,
            highestModseq: mailbox.highestModseq,
            exists: mailbox.exists,
            uids,
            enabled: [...client.enabled],
        });
        await client.logout();
        return;
    }
    if (mode !== 'resync') {
        throw new Error(`unknown mode ${mode}`);
    }
    const mailbox = await client.mailboxOpen('INBOX', { uidValidity, changedSince: modseq });
    print({
        mailbox: {
            uidValidity: mailbox.uidValidity,
            highestModseq: mailbox.highestModseq,
            exists: mailbox.exists,
            qresync: !!mailbox.qresync,
        },
        events,
    });
    events = [];
    const lines = readline.createInterface({ input: process.stdin });
    for await (const line of lines) {
        if (line.trim() !== 'noop') {
            continue;
        }
        await client.noop();
        const status = await client.status('INBOX', { highestModseq: true });
        print({ highestModseq: status.highestModseq, events });
        break;
    }
    lines.close();
    await client.logout();
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
