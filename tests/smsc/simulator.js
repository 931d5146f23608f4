#!/usr/bin/env node
// SMSC simulator owned by the test suite. It speaks SMPP 3.4 through the npm
// `smpp` package (node-smpp) and is steered over a line-JSON control socket.
// Both sockets bind 127.0.0.1 on a port chosen by the OS; the ports are
// announced as one JSON line on stdout, nothing else is ever written there.
// See README.md for the control vocabulary.
'use strict';

const net = require('net');
const fs = require('fs');
const smpp = require('smpp');

const STATUS = smpp.errors;
const MESSAGE_STATES = {
  ENROUTE: 1, DELIVRD: 2, EXPIRED: 3, DELETED: 4,
  UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8,
};

// Keep the exact bytes of every inbound PDU so that submits can be reported
// as they were on the wire, independent of node-smpp's own decoding.
const originalFromBuffer = smpp.PDU.prototype.fromBuffer;
smpp.PDU.prototype.fromBuffer = function fromBuffer(buffer) {
  Object.defineProperty(this, 'raw', { value: Buffer.from(buffer), enumerable: false });
  return originalFromBuffer.call(this, buffer);
};

function parseArgs(argv) {
  const args = {};
  for (let i = 2; i < argv.length; i += 1) {
    const key = argv[i].replace(/^--/, '');
    args[key] = argv[i + 1];
    i += 1;
  }
  return args;
}

const args = parseArgs(process.argv);

function freshConfig() {
  return {
    system_id: args['system-id'] || null,
    password: args.password || null,
    smsc_system_id: 'SIMSMSC',
    bind_status: null,          // force a bind_resp status
    withhold_bind: false,       // never answer bind requests
    answer_enquire_link: true,
    blackhole: false,           // ignore every inbound PDU
    refuse_connections: false,  // accept and immediately destroy
    default_submit: {},         // applied when the script queue is empty
    auto_receipt: null,         // {stat, err, form, delay_ms, id_format, before_resp, route,
                                //  wrong_handset_every, wrong_handset} after each accepted submit
    message_id_format: 'hex',   // hex | dec
    message_id_pad: true,       // hex ids zero-padded to 8 digits
    message_id_start: null,     // set the id counter (small ids make hex/decimal readings collide)
    throttle_every: 0,          // every Nth submit_sm is answered ESME_RTHROTTLED
    drop_every: 0,              // every Nth submit_sm: the connection is destroyed instead of answered
    drop_accepts: 'none',       // none | all | alternate: whether a dropped submit was taken (receipt follows)
  };
}

let config = freshConfig();
let submitScript = [];
let events = [];
let messageCounter = 0x5F3A0000;
let submitCount = 0;            // submit_sm PDUs seen since reset (throttle_every, drop_every)
let dropCount = 0;
let autoReceiptCount = 0;
let roundRobin = 0;
let sessionCounter = 0;
const sessions = new Map();     // id -> state
let withheld = [];              // [{state, pdu, response, entry}]
const started = Date.now();

function log(...parts) {
  process.stderr.write(`[smsc ${Date.now() - started}ms] ${parts.join(' ')}\n`);
}

function record(kind, fields) {
  const event = Object.assign({ kind, index: events.length, t: Date.now() - started }, fields);
  events.push(event);
  return event;
}

function nextMessageId() {
  messageCounter += 1;
  if (config.message_id_format === 'dec') {
    return String(messageCounter);
  }
  const hex = messageCounter.toString(16).toUpperCase();
  return config.message_id_pad ? hex.padStart(8, '0') : hex;
}

// How this SMSC writes a submit_sm_resp id in its receipts (id_format: same | dec | hex).
function receiptId(messageId, idFormat) {
  if (idFormat === 'dec') return BigInt(`0x${messageId}`).toString(10);
  if (idFormat === 'hex') return BigInt(messageId).toString(16).toUpperCase();
  return messageId;
}

function receivers() {
  return [...sessions.values()].filter((s) => s.open && (s.mode === 'transceiver' || s.mode === 'receiver'));
}

// Where an automatic receipt goes: the first receiving session (default), the submitter's
// own session when it is still open, or each receiving session in turn.
function receiptTarget(route, submitter) {
  const open = receivers();
  if (open.length === 0) return null;
  if (route === 'submitter' && submitter && submitter.open && submitter.mode !== 'transmitter') return submitter;
  if (route === 'round_robin') {
    roundRobin += 1;
    return open[roundRobin % open.length];
  }
  return open[0];
}

// Send an automatic receipt once some session can take it (after a drop, on the next bind).
function sendAutoReceipt(receipt, messageId, decoded, submitter, attempt = 0) {
  const target = receiptTarget(receipt.route, submitter);
  if (!target) {
    if (attempt < 600) setTimeout(() => sendAutoReceipt(receipt, messageId, decoded, submitter, attempt + 1), 50);
    return;
  }
  autoReceiptCount += 1;
  // Only receipts of submits answered on a live link lie: the proof of a submit whose resp
  // a drop may have eaten (or a redelivery) naming a stranger would leave the ESME no way to
  // know the SMSC took it.
  const answered = Boolean(submitter) && submitter.open && !submitter.session.socket.destroyed;
  const wrong = answered && receipt.wrong_handset_every
    && autoReceiptCount % receipt.wrong_handset_every === 0;
  const spec = Object.assign({}, receipt, {
    message_id: receiptId(messageId, receipt.id_format),
    source_addr: wrong ? (receipt.wrong_handset || '8613700000000') : decoded.destination_addr,
    destination_addr: decoded.source_addr,
  });
  const seq = sendReceipt(target, spec);
  // Unanswered when the link closes: delivered again on another bind, as an SMSC does.
  target.pendingAuto = target.pendingAuto || new Map();
  target.pendingAuto.set(seq, [receipt, messageId, decoded]);
  record('auto_receipt', {
    session: target.id, sequence: seq, submit_message_id: messageId, message_id: spec.message_id,
    source_addr: spec.source_addr, true_handset: decoded.destination_addr, wrong_handset: Boolean(wrong),
  });
}

// ---------------------------------------------------------------- decoding

function readCString(buf, pos) {
  let end = pos;
  while (end < buf.length && buf[end] !== 0) end += 1;
  return [buf.toString('latin1', pos, end), end + 1];
}

// Walk a submit_sm body by the SMPP 3.4 layout (5.2 / 4.4.1).
function decodeSubmitSm(raw) {
  const out = {};
  let pos = 16;
  [out.service_type, pos] = readCString(raw, pos);
  out.source_addr_ton = raw[pos]; out.source_addr_npi = raw[pos + 1]; pos += 2;
  [out.source_addr, pos] = readCString(raw, pos);
  out.dest_addr_ton = raw[pos]; out.dest_addr_npi = raw[pos + 1]; pos += 2;
  [out.destination_addr, pos] = readCString(raw, pos);
  out.esm_class = raw[pos]; out.protocol_id = raw[pos + 1]; out.priority_flag = raw[pos + 2];
  pos += 3;
  [out.schedule_delivery_time, pos] = readCString(raw, pos);
  [out.validity_period, pos] = readCString(raw, pos);
  out.registered_delivery = raw[pos];
  out.replace_if_present_flag = raw[pos + 1];
  out.data_coding = raw[pos + 2];
  out.sm_default_msg_id = raw[pos + 3];
  out.sm_length = raw[pos + 4];
  pos += 5;
  const shortMessage = raw.subarray(pos, pos + out.sm_length);
  out.short_message_hex = shortMessage.toString('hex');
  if ((out.esm_class & 0x40) && shortMessage.length > 0) {
    out.udh_hex = shortMessage.subarray(0, shortMessage[0] + 1).toString('hex');
  }
  pos += out.sm_length;
  out.tlvs = [];
  while (pos + 4 <= raw.length) {
    const tag = raw.readUInt16BE(pos);
    const length = raw.readUInt16BE(pos + 2);
    const tlvValue = raw.subarray(pos + 4, pos + 4 + length);
    const known = smpp.tlvsById[tag];
    out.tlvs.push({ tag, name: known ? known.tag : null, hex: tlvValue.toString('hex') });
    pos += 4 + length;
  }
  return out;
}

function hexToBuffer(value) {
  return Buffer.from(value || '', 'hex');
}

function tlvOptions(tlvs) {
  // {name: number|string|{hex}} -> node-smpp option values
  const out = {};
  for (const [name, value] of Object.entries(tlvs || {})) {
    if (!smpp.tlvs[name]) {
      throw new Error(`unknown TLV name ${name}; use raw_tlvs for vendor tags`);
    }
    out[name] = value !== null && typeof value === 'object' && 'hex' in value
      ? hexToBuffer(value.hex) : value;
  }
  return out;
}

function encodeRawTlvs(rawTlvs) {
  const parts = (rawTlvs || []).map((tlv) => {
    const value = hexToBuffer(tlv.hex);
    const head = Buffer.alloc(4);
    head.writeUInt16BE(tlv.tag, 0);
    head.writeUInt16BE(tlv.length === undefined ? value.length : tlv.length, 2);
    return Buffer.concat([head, value]);
  });
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------- sessions

function pickSession(spec, { needReceive = false } = {}) {
  if (spec !== undefined && spec !== null) {
    const state = sessions.get(spec);
    if (!state) throw new Error(`no open session ${spec}`);
    return state;
  }
  const candidates = [...sessions.values()].filter((s) => s.mode
    && (!needReceive || s.mode === 'transceiver' || s.mode === 'receiver'));
  if (candidates.length === 0) throw new Error('no bound session');
  return candidates[candidates.length - 1];
}

function sendRequest(state, command, options, rawTlvs, onResponse, resendSequence) {
  const session = state.session;
  const pdu = new smpp.PDU(command, options);
  if (resendSequence) {
    pdu.sequence_number = resendSequence; // a retransmission: the sequence number of an earlier PDU
  } else {
    if (session.sequence === 0x7FFFFFFF) session.sequence = 0;
    session.sequence += 1;
    pdu.sequence_number = session.sequence;
  }
  let buffer = pdu.toBuffer();
  const extra = encodeRawTlvs(rawTlvs);
  if (extra.length) {
    buffer = Buffer.concat([buffer, extra]);
    buffer.writeUInt32BE(buffer.length, 0);
  }
  if (onResponse) session._callbacks[pdu.sequence_number] = onResponse;
  session.socket.write(buffer);
  return pdu.sequence_number;
}

function deliverOptions(spec) {
  const options = {
    service_type: spec.service_type || '',
    source_addr_ton: spec.source_addr_ton || 0,
    source_addr_npi: spec.source_addr_npi || 0,
    source_addr: spec.source_addr || '',
    dest_addr_ton: spec.dest_addr_ton || 0,
    dest_addr_npi: spec.dest_addr_npi || 0,
    destination_addr: spec.destination_addr || '',
    esm_class: spec.esm_class || 0,
    protocol_id: spec.protocol_id || 0,
    priority_flag: spec.priority_flag || 0,
    registered_delivery: spec.registered_delivery || 0,
    data_coding: spec.data_coding || 0,
  };
  if (spec.short_message_hex !== undefined) {
    options.short_message = hexToBuffer(spec.short_message_hex);
  } else if (spec.text !== undefined) {
    options.short_message = options.data_coding === 8
      ? Buffer.from(Buffer.from(spec.text, 'utf16le').swap16())
      : Buffer.from(spec.text, 'latin1');
  } else {
    options.short_message = Buffer.alloc(0);
  }
  return Object.assign(options, tlvOptions(spec.tlvs));
}

function sendDeliver(state, spec, kind, after) {
  const options = deliverOptions(spec);
  let seq = 0;
  seq = sendRequest(state, 'deliver_sm', options, spec.raw_tlvs, (resp) => {
    record('deliver_sm_resp', {
      session: state.id, sequence: seq, status: resp.command_status, of: kind,
    });
    if (after) after(resp);
  }, spec.resend_sequence);
  record(kind, {
    session: state.id,
    sequence: seq,
    source_addr: options.source_addr,
    destination_addr: options.destination_addr,
    esm_class: options.esm_class,
    data_coding: options.data_coding,
    short_message_hex: options.short_message.toString('hex'),
    message_id: spec.receipted_message_id || null,
  });
  return seq;
}

function yymmddhhmm(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${pad(date.getUTCFullYear() % 100)}${pad(date.getUTCMonth() + 1)}${pad(date.getUTCDate())}`
    + `${pad(date.getUTCHours())}${pad(date.getUTCMinutes())}`;
}

function sendReceipt(state, spec) {
  const stat = spec.stat || 'DELIVRD';
  const form = spec.form || 'both';
  const now = new Date();
  const text = `id:${spec.message_id} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} `
    + `submit date:${spec.submit_date || yymmddhhmm(now)} done date:${spec.done_date || yymmddhhmm(now)} `
    + `stat:${stat} err:${spec.err || '000'} text:${spec.text || ''}`;
  const deliver = {
    source_addr: spec.source_addr || '',
    destination_addr: spec.destination_addr || '',
    esm_class: 0x04,
    data_coding: 0,
    short_message_hex: form === 'tlv' ? '' : Buffer.from(text, 'latin1').toString('hex'),
    tlvs: {},
    raw_tlvs: spec.raw_tlvs,
    receipted_message_id: spec.message_id,
  };
  if (form !== 'text') {
    deliver.tlvs.receipted_message_id = spec.receipted_message_id_tlv || spec.message_id;
    deliver.tlvs.message_state = spec.message_state || MESSAGE_STATES[stat] || 7;
  }
  return sendDeliver(state, deliver, 'receipt');
}

function answerSubmit(state, pdu, entry, response) {
  if (!state.open) return;
  const fields = { command_status: response.command_status };
  if (response.command_status === 0) fields.message_id = response.message_id;
  state.session.send(pdu.response(Object.assign({}, fields)));
  record('submit_sm_resp', {
    session: state.id,
    sequence: pdu.sequence_number,
    status: response.command_status,
    message_id: fields.message_id || null,
  });
  if (!entry.receipt && config.auto_receipt && response.command_status === 0
    && (pdu.registered_delivery & 0x03)) {
    if (!config.auto_receipt.before_resp) {
      const decoded = decodeSubmitSm(pdu.raw);
      setTimeout(() => sendAutoReceipt(config.auto_receipt, response.message_id, decoded, state),
        config.auto_receipt.delay_ms || 0);
    }
    return;
  }
  const receipt = entry.receipt;
  if (receipt && !entry.receipt_before_resp && response.command_status === 0) {
    setTimeout(() => {
      const target = [...sessions.values()].find((s) => s.open
        && (s.mode === 'transceiver' || s.mode === 'receiver'));
      if (target) {
        sendReceipt(target, Object.assign({
          message_id: response.message_id,
          source_addr: pdu.raw ? decodeSubmitSm(pdu.raw).destination_addr : '',
          destination_addr: pdu.raw ? decodeSubmitSm(pdu.raw).source_addr : '',
        }, receipt));
      }
    }, receipt.delay_ms || 0);
  }
}

function handleSubmit(state, pdu) {
  const decoded = decodeSubmitSm(pdu.raw);
  const entry = submitScript.length ? submitScript.shift() : Object.assign({}, config.default_submit);
  submitCount += 1;
  if (config.throttle_every && submitCount % config.throttle_every === 0 && !entry.status) {
    entry.status = STATUS.ESME_RTHROTTLED;
  }
  if (config.drop_every && submitCount % config.drop_every === 0 && !entry.status) {
    dropCount += 1;
    entry.drop = true;
    entry.drop_accepted = config.drop_accepts === 'all'
      || (config.drop_accepts === 'alternate' && dropCount % 2 === 1);
  }
  const status = entry.status || 0;
  const messageId = entry.message_id || (status === 0 ? nextMessageId() : null);
  const text = pdu.short_message && typeof pdu.short_message.message === 'string'
    ? pdu.short_message.message : null;
  record('submit_sm', Object.assign({
    session: state.id,
    sequence: pdu.sequence_number,
    pdu_hex: pdu.raw.toString('hex'),
    text,
    scripted: entry,
  }, decoded));
  if (entry.drop) {
    if (entry.drop_accepted) {
      // Taken, but the link died before the resp: only the receipt (on a later bind) tells.
      record('accepted_unanswered', {
        session: state.id, sequence: pdu.sequence_number, message_id: messageId,
        destination_addr: decoded.destination_addr,
      });
      if (config.auto_receipt && (decoded.registered_delivery & 0x03)) {
        setTimeout(() => sendAutoReceipt(config.auto_receipt, messageId, decoded, null),
          Math.max(config.auto_receipt.delay_ms || 0, 20));
      }
    }
    state.session.destroy();
    return;
  }
  if (status === 0 && !entry.receipt && config.auto_receipt && config.auto_receipt.before_resp
    && (decoded.registered_delivery & 0x03)) {
    sendAutoReceipt(config.auto_receipt, messageId, decoded, state);
  }
  const response = { command_status: status, message_id: messageId };
  if (entry.receipt && entry.receipt_before_resp) {
    sendReceipt(state, Object.assign({
      message_id: messageId,
      source_addr: decoded.destination_addr,
      destination_addr: decoded.source_addr,
    }, entry.receipt));
  }
  if (entry.withhold) {
    withheld.push({ state, pdu, entry, response });
    return;
  }
  if (entry.delay_ms) {
    setTimeout(() => answerSubmit(state, pdu, entry, response), entry.delay_ms);
  } else {
    answerSubmit(state, pdu, entry, response);
  }
}

function handleBind(state, pdu) {
  const mode = pdu.command.replace('bind_', '');
  let status = 0;
  if (state.mode) status = STATUS.ESME_RALYBND;
  else if (config.system_id !== null && pdu.system_id !== config.system_id) status = STATUS.ESME_RINVSYSID;
  else if (config.password !== null && pdu.password !== config.password) status = STATUS.ESME_RINVPASWD;
  if (config.bind_status !== null) status = config.bind_status;
  record('bind', {
    session: state.id,
    mode,
    system_id: pdu.system_id,
    password: pdu.password,
    system_type: pdu.system_type,
    interface_version: pdu.interface_version,
    status,
    withheld: config.withhold_bind,
  });
  if (config.withhold_bind) return;
  if (status === 0) {
    state.mode = mode;
    state.session.send(pdu.response({ system_id: config.smsc_system_id }));
  } else {
    state.session.send(pdu.response({ command_status: status }));
  }
}

function onPdu(state, pdu) {
  if (pdu.isResponse()) {
    if (pdu.command === 'unbind_resp') record('unbind_resp', { session: state.id, sequence: pdu.sequence_number });
    if (pdu.command === 'enquire_link_resp') record('enquire_link_resp', { session: state.id, sequence: pdu.sequence_number });
    if (pdu.command === 'generic_nack') {
      record('generic_nack', { session: state.id, sequence: pdu.sequence_number, status: pdu.command_status });
    }
    return;
  }
  if (config.blackhole) {
    record('ignored', { session: state.id, command: pdu.command, sequence: pdu.sequence_number });
    return;
  }
  switch (pdu.command) {
    case 'bind_transceiver':
    case 'bind_transmitter':
    case 'bind_receiver':
      handleBind(state, pdu);
      break;
    case 'enquire_link':
      record('enquire_link', { session: state.id, sequence: pdu.sequence_number, answered: config.answer_enquire_link });
      if (config.answer_enquire_link) state.session.send(pdu.response());
      break;
    case 'unbind':
      record('unbind', { session: state.id, sequence: pdu.sequence_number });
      state.session.send(pdu.response(), () => state.session.close());
      break;
    case 'submit_sm':
      if (!state.mode || state.mode === 'receiver') {
        record('submit_sm_rejected', { session: state.id, sequence: pdu.sequence_number });
        state.session.send(pdu.response({ command_status: STATUS.ESME_RINVBNDSTS }));
      } else {
        handleSubmit(state, pdu);
      }
      break;
    default:
      record('unexpected', { session: state.id, command: pdu.command, command_id: pdu.command_id, sequence: pdu.sequence_number });
      if (pdu.command === 'unknown') state.session.send(pdu.response());
      else state.session.send(new smpp.PDU('generic_nack', { sequence_number: pdu.sequence_number, command_status: STATUS.ESME_RINVCMDID }));
  }
}

function onSession(session) {
  sessionCounter += 1;
  const state = { id: sessionCounter, session, mode: null, open: true };
  const socket = session.socket;
  record('connect', { session: state.id, remote_port: socket.remotePort });
  if (config.refuse_connections) {
    record('refused', { session: state.id });
    session.destroy();
    return;
  }
  sessions.set(state.id, state);
  session.on('pdu', (pdu) => {
    try {
      onPdu(state, pdu);
    } catch (err) {
      log('pdu handler failed', err.stack);
      record('error', { session: state.id, message: String(err) });
    }
  });
  session.on('error', (err) => {
    record('error', { session: state.id, message: String(err) });
    session.destroy();
  });
  session.on('close', () => {
    state.open = false;
    sessions.delete(state.id);
    record('close', { session: state.id });
    for (const [seq, [receipt, messageId, decoded]] of (state.pendingAuto || new Map())) {
      const answered = events.some((e) => e.kind === 'deliver_sm_resp' && e.session === state.id
        && e.sequence === seq);
      if (!answered) setTimeout(() => sendAutoReceipt(receipt, messageId, decoded, null), 20);
    }
  });
}

// ---------------------------------------------------------------- control

function matches(event, where) {
  return Object.entries(where || {}).every(([key, value]) => event[key] === value);
}

function selectEvents(kind, where) {
  return events.filter((e) => (!kind || e.kind === kind) && matches(e, where));
}

function closeSession(state, how) {
  if (how === 'end') state.session.close();
  else state.session.destroy();
}

const commands = {
  ping: () => ({ pong: true }),

  reset: () => {
    for (const state of sessions.values()) state.session.destroy();
    config = freshConfig();
    messageCounter = 0x5F3A0000;  // a test's message_id_start must not leak into the next
    submitCount = 0;
    dropCount = 0;
    autoReceiptCount = 0;
    submitScript = [];
    withheld = [];
    events = [];
    return { reset: true };
  },

  configure: (req) => {
    for (const [key, value] of Object.entries(req)) {
      if (key === 'cmd') continue;
      if (!(key in config)) throw new Error(`unknown setting ${key}`);
      config[key] = value;
      if (key === 'message_id_start' && value !== null) messageCounter = value;
    }
    return Object.assign({}, config);
  },

  script_submits: (req) => {
    submitScript.push(...req.responses);
    return { queued: submitScript.length };
  },

  release_withheld: (req) => {
    const count = req.count === undefined || req.count === null ? withheld.length : req.count;
    const batch = withheld.splice(0, count);
    for (const item of batch) answerSubmit(item.state, item.pdu, item.entry, item.response);
    return { released: batch.length };
  },

  deliver: (req) => {
    const state = pickSession(req.session, { needReceive: true });
    return { sequence: sendDeliver(state, req, 'deliver_sm') };
  },

  deliver_burst: (req) => {
    const state = pickSession(req.session, { needReceive: true });
    const sequences = [];
    for (let i = 0; i < req.count; i += 1) {
      const spec = Object.assign({}, req, { text: `${req.text || 'burst'} ${i}` });
      sequences.push(sendDeliver(state, spec, 'deliver_sm'));
    }
    return { sequences };
  },

  deliver_window: (req) => {
    // Send every spec, keeping at most `window` deliver_sm unanswered (as an SMSC's window
    // does); answers at once, the PDUs go out as the responses come back.
    // With `rate` (per second) they are also paced: one becomes due every 1/rate s.
    const state = pickSession(req.session, { needReceive: true });
    const specs = req.specs.slice();
    const window = Math.max(1, req.window || 10);
    let inFlight = 0;
    let due = req.rate ? 0 : Infinity;
    const pump = () => {
      while (inFlight < window && due > 0 && specs.length > 0 && !state.session.socket.destroyed) {
        inFlight += 1;
        due -= 1;
        sendDeliver(state, specs.shift(), 'deliver_sm', () => { inFlight -= 1; pump(); });
      }
    };
    if (req.rate) {
      const started = Date.now();
      let released = 0;
      const tick = () => {
        const owed = Math.min(req.specs.length, Math.floor(((Date.now() - started) * req.rate) / 1000) + 1);
        due += owed - released;
        released = owed;
        pump();
        if (released < req.specs.length && !state.session.socket.destroyed) setTimeout(tick, 2);
      };
      tick();
    } else {
      pump();
    }
    return { queued: req.specs.length, window, rate: req.rate || null };
  },

  receipt: (req) => {
    const state = pickSession(req.session, { needReceive: true });
    return { sequence: sendReceipt(state, req) };
  },

  send_raw: (req) => {
    const state = pickSession(req.session);
    state.session.socket.write(hexToBuffer(req.hex));
    record('raw_sent', { session: state.id, hex: req.hex });
    return { written: req.hex.length / 2 };
  },

  enquire_link: (req) => {
    const state = pickSession(req.session);
    const seq = sendRequest(state, 'enquire_link', {}, null, () => {
      record('enquire_link_resp_received', { session: state.id, sequence: seq });
    });
    return { sequence: seq };
  },

  unbind: (req) => {
    const state = pickSession(req.session);
    const seq = sendRequest(state, 'unbind', {}, null, () => {
      record('unbind_resp_received', { session: state.id, sequence: seq });
      if (req.close !== false) state.session.close();
    });
    return { sequence: seq };
  },

  drop: (req) => {
    const targets = req.all ? [...sessions.values()] : [pickSession(req.session)];
    for (const state of targets) closeSession(state, req.how);
    return { dropped: targets.map((s) => s.id) };
  },

  sessions: () => [...sessions.values()].map((s) => ({ id: s.id, mode: s.mode })),

  events: (req) => selectEvents(req.kind, req.where),

  wait: (req) => new Promise((resolve, reject) => {
    const count = req.count === undefined ? 1 : req.count;
    const deadline = Date.now() + (req.timeout_ms === undefined ? 5000 : req.timeout_ms);
    const check = () => {
      const found = selectEvents(req.kind, req.where);
      if (found.length >= count) {
        resolve(found);
      } else if (Date.now() >= deadline) {
        reject(new Error(`timeout waiting for ${count} x ${req.kind} ${JSON.stringify(req.where || {})}; `
          + `have ${found.length}`));
      } else {
        setTimeout(check, 5);
      }
    };
    check();
  }),
};

function startControl(port) {
  const server = net.createServer((socket) => {
    let buffered = '';
    socket.setEncoding('utf8');
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk) => {
      buffered += chunk;
      let newline = buffered.indexOf('\n');
      while (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        newline = buffered.indexOf('\n');
        let request;
        Promise.resolve()
          .then(() => {
            request = JSON.parse(line);
            const handler = commands[request.cmd];
            if (!handler) throw new Error(`unknown command ${request.cmd}`);
            return handler(request);
          })
          .then((result) => socket.write(`${JSON.stringify({ ok: true, result })}\n`))
          .catch((err) => socket.write(`${JSON.stringify({ ok: false, error: String(err.message || err) })}\n`));
      }
    });
  });
  return new Promise((resolve) => server.listen(port, args.host || '127.0.0.1', () => resolve(server)));
}

function startSmsc(port) {
  const options = {};
  if (args['tls-key'] && args['tls-cert']) {
    options.key = fs.readFileSync(args['tls-key']);
    options.cert = fs.readFileSync(args['tls-cert']);
  }
  const server = smpp.createServer(options, onSession);
  server.on('error', (err) => log('server error', err));
  if (server.tls) {
    server.on('tlsClientError', (err) => record('tls_error', { message: String(err) }));
  }
  return new Promise((resolve) => server.listen(port, args.host || '127.0.0.1', () => resolve(server)));
}

process.on('uncaughtException', (err) => {
  log('uncaught', err.stack);
  record('error', { message: String(err) });
});

(async () => {
  const smsc = await startSmsc(Number(args.port || 0));
  const control = await startControl(Number(args['control-port'] || 0));
  process.stdout.write(`${JSON.stringify({
    ready: true,
    pid: process.pid,
    smpp_port: smsc.address().port,
    control_port: control.address().port,
    tls: Boolean(smsc.tls),
  })}\n`);
  log('ready');
})();

// The parent test process owns us: exit when it closes our stdin.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
