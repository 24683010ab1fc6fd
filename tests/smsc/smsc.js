// The SMSC that tests/test_smpp.py sends to: the npm `smpp` package's server (its
// SMPP 3.4/5.0 codec and sessions are not ours), plus the least an SMSC must do for
// the test: accept binds, acknowledge submit_sm, send delivery receipts.
//
//   node smsc.js PORT DIR
//
// DIR/received.jsonl: one line per submit_sm accepted (as the package decoded it:
//   UDH and text by data_coding), written before the answer goes out.
// DIR/receipts.json: receipts not yet acknowledged by the ESME, kept across a
//   restart (store and forward, as an SMSC does) and sent on the next bind.
// DIR/enquire_link.log: a line per enquire_link answered.
// SIGTERM stops it for a restart: every submit_sm it read is answered, then the
// connections close (what it had not read, it never took) and it exits.
//
// Environment: SMSC_SYSTEM_ID, SMSC_PASSWORD (the bind's credentials);
// SMSC_THROTTLE_EVERY=N answers every Nth submit_sm ESME_RTHROTTLED;
// SMSC_UNDELIV_PREFIX: receipts for destinations starting with it say UNDELIV;
// SMSC_DROP_AT=N drops the connection on reading the Nth submit_sm, unanswered.
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const smpp = require('smpp');

const port = Number(process.argv[2]);
const dir = process.argv[3];
const systemId = process.env.SMSC_SYSTEM_ID || 'churnwatch';
const password = process.env.SMSC_PASSWORD || 'secret';
const throttleEvery = Number(process.env.SMSC_THROTTLE_EVERY || 0);
const undelivPrefix = process.env.SMSC_UNDELIV_PREFIX || '';
const dropAt = Number(process.env.SMSC_DROP_AT || 0);
const receivedFile = path.join(dir, 'received.jsonl');
const spoolFile = path.join(dir, 'receipts.json');

let receipts = fs.existsSync(spoolFile) ? JSON.parse(fs.readFileSync(spoolFile, 'utf8')) : {};
let submits = 0;
const bound = new Set();

function saveSpool() {
  fs.writeFileSync(spoolFile + '.tmp', JSON.stringify(receipts));
  fs.renameSync(spoolFile + '.tmp', spoolFile);
}

function stamp(date) {
  const p = (n) => String(n).padStart(2, '0');
  return `${p(date.getUTCFullYear() % 100)}${p(date.getUTCMonth() + 1)}${p(date.getUTCDate())}` +
    `${p(date.getUTCHours())}${p(date.getUTCMinutes())}`;
}

// Sends every stored receipt to this session; each leaves the spool once acknowledged.
function flush(session) {
  for (const [id, r] of Object.entries(receipts)) {
    if (session.inFlight.has(id)) continue;
    session.inFlight.add(id);
    const sent = session.deliver_sm({
      source_addr: r.to,
      destination_addr: r.from,
      esm_class: smpp.ESM_CLASS.MC_DELIVERY_RECEIPT,
      short_message: `id:${id} sub:001 dlvrd:${r.stat === 'DELIVRD' ? '001' : '000'} ` +
        `submit date:${r.submitted} done date:${stamp(new Date())} stat:${r.stat} ` +
        `err:${r.stat === 'DELIVRD' ? '000' : '001'} text:`,
      receipted_message_id: id,
      message_state: r.stat === 'DELIVRD' ? 2 : 5,
    }, (resp) => {
      session.inFlight.delete(id);
      if (resp.command_status === 0 && receipts[id]) {
        delete receipts[id];
        saveSpool();
      }
    });
    if (!sent) session.inFlight.delete(id);
  }
}

const server = smpp.createServer((session) => {
  session.inFlight = new Set();
  session.on('error', () => session.destroy());
  session.on('close', () => bound.delete(session));
  session.on('bind_transceiver', (pdu) => {
    if (pdu.system_id !== systemId || pdu.password !== password) {
      session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }));
      session.close();
      return;
    }
    session.send(pdu.response({ system_id: 'testsmsc' }));
    bound.add(session);
    flush(session);
  });
  session.on('enquire_link', (pdu) => {
    fs.appendFileSync(path.join(dir, 'enquire_link.log'), '.\n');
    session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on('submit_sm', (pdu) => {
    if (!bound.has(session)) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
      return;
    }
    submits += 1;
    if (submits === dropAt) {
      // As if it crashed having read this one: not stored, not answered, connection gone.
      session.destroy();
      return;
    }
    if (throttleEvery && submits % throttleEvery === 0) {
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    const id = crypto.randomBytes(8).toString('hex');
    const sm = pdu.short_message;
    fs.appendFileSync(receivedFile, JSON.stringify({
      message_id: id,
      source_addr: pdu.source_addr,
      destination_addr: pdu.destination_addr,
      esm_class: pdu.esm_class,
      data_coding: pdu.data_coding,
      registered_delivery: pdu.registered_delivery,
      udh: (sm.udh || []).map((u) => u.toString('hex')),
      text: sm.message,
    }) + '\n');
    session.send(pdu.response({ message_id: id }));
    if (pdu.registered_delivery & 1) {
      const undeliv = undelivPrefix && pdu.destination_addr.startsWith(undelivPrefix);
      receipts[id] = {
        from: pdu.source_addr,
        to: pdu.destination_addr,
        stat: undeliv ? 'UNDELIV' : 'DELIVRD',
        submitted: stamp(new Date()),
      };
      saveSpool();
      flush(session);
    }
  });
});

// A restart: no new connections, nothing more read; what was read is answered (each
// submit_sm is answered as it is read), the connections are closed, and it exits.
process.on('SIGTERM', () => {
  server.close();
  for (const session of bound) {
    session.pause();
    session.close();
  }
  setTimeout(() => process.exit(0), 300);
});

server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
