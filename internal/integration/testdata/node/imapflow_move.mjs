// Moves UIDs 2:4 of INBOX to Archive with ImapFlow's messageMove and
// prints, as JSON, whether MOVE was advertised, the result messageMove
// returned (its uidMap from COPYUID), the expunges ImapFlow heard, and
// what each mailbox holds afterwards (UID and Message-ID).
//
// Usage: node imapflow_move.mjs HOST PORT USER PASS
import { ImapFlow } from 'imapflow';

const [host, port, user, pass] = process.argv.slice(2);
const client = new ImapFlow({
    host,
    port: Number(port),
    secure: false,
    auth: { user, pass },
    logger: false,
    disableAutoIdle: true,
});

async function contents(path) {
    const lock = await client.getMailboxLock(path);
    try {
        const msgs = [];
        if (client.mailbox.exists > 0) {
            for await (const msg of client.fetch('1:*', { uid: true, envelope: true })) {
                msgs.push([msg.uid, msg.envelope.messageId]);
            }
        }
        return msgs;
    } finally {
        lock.release();
    }
}

await client.connect();
const out = { move: client.capabilities.has('MOVE'), uidplus: client.capabilities.has('UIDPLUS'), expunged: [] };
client.on('expunge', (ev) => out.expunged.push(ev.seq));
const lock = await client.getMailboxLock('INBOX');
try {
    const res = await client.messageMove('2:4', 'Archive', { uid: true });
    out.result = res ? {
        path: res.path,
        destination: res.destination,
        uidValidity: res.uidValidity !== undefined ? String(res.uidValidity) : null,
        uidMap: res.uidMap ? [...res.uidMap.entries()] : null,
    } : res;
    out.existsAfter = client.mailbox.exists;
} finally {
    lock.release();
}
out.inbox = await contents('INBOX');
out.archive = await contents('Archive');
await client.logout();
process.stdout.write(JSON.stringify(out));
