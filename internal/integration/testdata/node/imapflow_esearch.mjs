// Searches INBOX with ImapFlow's ESEARCH result options (which it uses only
// when the server advertises ESEARCH) and prints, as JSON, whether ESEARCH
// was advertised and what each search returned.
//
// Usage: node imapflow_esearch.mjs HOST PORT USER PASS
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
const out = { esearch: client.capabilities.has('ESEARCH') };
const lock = await client.getMailboxLock('INBOX');
try {
    const opts = ['MIN', 'MAX', 'COUNT', 'ALL'];
    out.flagged = await client.search({ flagged: true }, { returnOptions: opts });
    out.flaggedUID = await client.search({ flagged: true }, { uid: true, returnOptions: opts });
    out.none = await client.search({ larger: 100000000 }, { returnOptions: opts });
    out.plain = await client.search({ seen: false });
} finally {
    lock.release();
}
await client.logout();
process.stdout.write(JSON.stringify(out));
