// Syncs every mailbox with ImapFlow and prints what it saw as JSON:
// whether COMPRESS=DEFLATE was in use, the mailbox list, and for each
// message its envelope, flags and full source (base64).
//
// Usage: node imapflow_sync.mjs HOST PORT USER PASS
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

await client.connect();
const out = { compressed: !!client._deflate, mailboxes: [], messages: [] };
const list = await client.list();
out.mailboxes = list.map((m) => m.path).sort();
for (const path of out.mailboxes) {
    const lock = await client.getMailboxLock(path);
    try {
        if (client.mailbox.exists === 0) {
            continue;
        }
        for await (const msg of client.fetch('1:*', { uid: true, flags: true, envelope: true, source: true })) {
            out.messages.push({
                mailbox: path,
                uid: msg.uid,
                flags: [...msg.flags].sort(),
                messageId: msg.envelope.messageId,
                subject: msg.envelope.subject,
                from: (msg.envelope.from || []).map((a) => a.address),
                date: msg.envelope.date ? msg.envelope.date.toISOString() : null,
                source: msg.source.toString('base64'),
            });
        }
    } finally {
        lock.release();
    }
}
await client.logout();
process.stdout.write(JSON.stringify(out) + '\n');
