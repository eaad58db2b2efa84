#!/usr/bin/env node
// (c) The Node peer: a `ws` WebSocketServer (version pinned in package.json)
// that sends each tick's frame to every open client with client.send(). The
// frame's JSON is built once per tick into a Buffer (the same bytes for every
// client) and sent as a text frame. permessage-deflate is off (the clients
// offer none anyway); ws has no keepalive ping of its own. The protocol with
// bench_fanout.py is the one in common.py: "PORT n" / "go N" / "DONE N late".
'use strict';
const fs = require('fs');
const readline = require('readline');
const { WebSocketServer, WebSocket } = require('ws');

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const rate = Number(opt('--rate', '4'));
const base = JSON.parse(fs.readFileSync(opt('--metrics'), 'utf8'));

// CLOCK_REALTIME in microseconds: Date.now() is only milliseconds, so pin the
// offset between it and the monotonic hrtime once. Date.now() floors, and it
// is read before h2, so Date.now()*1000 - h2 never exceeds the true offset
// (a preemption only makes it smaller); the max over 20 ms of samples (20 ms
// boundaries crossed) is within a few microseconds of it.
const hrUs = () => Number(process.hrtime.bigint() / 1000n);
let offsetUs = -Infinity;
for (const end = Date.now() + 20; Date.now() < end;) {
  const ms = Date.now();
  offsetUs = Math.max(offsetUs, ms * 1000 - hrUs());
}
const realtimeUs = () => offsetUs + hrUs();

function payload(nowUs) {
  // Same key order and text as common.build_payload / Cache.publish_stats.
  const metrics = Object.assign({ sent_us: String(nowUs).padStart(16, '0') }, base);
  const ts = new Date(Math.round(nowUs / 1000)).toISOString();
  return Buffer.from(JSON.stringify({ type: 'stats', gpu_id: 'card0', ts, metrics }));
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, backlog: 1024,
                                  perMessageDeflate: false, maxPayload: 65536 });
wss.on('connection', (ws) => { ws.on('error', () => {}); });
wss.on('listening', () => console.log('PORT ' + wss.address().port));

function run(count, done) {
  const period = 1000 / rate;
  const start = performance.now();
  let index = 0, late = 0;
  const step = () => {
    const lag = performance.now() - (start + index * period);
    if (lag > 0) late = Math.max(late, lag);
    const data = payload(realtimeUs());
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(data, { binary: false });
    }
    index += 1;
    if (index >= count) return done(late);
    setTimeout(step, Math.max(0, start + index * period - performance.now()));
  };
  step();
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const words = line.trim().split(/\s+/);
  if (words[0] === 'quit') process.exit(0);
  if (words[0] === 'go' && /^\d+$/.test(words[1] || '')) {
    const count = Number(words[1]);
    run(count, (late) => console.log('DONE ' + count + ' ' + late.toFixed(1)));
  }
});
rl.on('close', () => process.exit(0));
