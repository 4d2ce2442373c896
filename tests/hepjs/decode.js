#!/usr/bin/env node
// Decode HEPv3 packets with the npm package hep-js, as a second, independent decoder
// for the captagent-tls tests.
//
// Usage: node decode.js FILE
// FILE holds the packets back to back, each preceded by its length as a 4-byte
// big-endian unsigned integer. For each packet one JSON object is printed on its own
// line: the rcinfo fields hep-js returns (protocolFamily, protocol, srcIp, dstIp,
// srcPort, dstPort, timeSeconds, timeUseconds, payloadType, captureId, capturePass,
// hepNodeName, ...) plus "payload" (hep-js's string) and "index". A packet hep-js
// rejects gives {"index": N, "error": "..."}.
'use strict';

const fs = require('fs');
const hep = require('hep-js');

// hep-js loops forever on a chunk whose length field is 0, so refuse such packets
// before handing them over (the product must never send them anyway).
function chunkLengthsSane(buf) {
  if (buf.length < 6) return 'shorter than the 6-byte header';
  const total = buf.readUInt16BE(4);
  if (total > buf.length) return `total length ${total} > datagram ${buf.length}`;
  let pos = 6;
  while (pos < total) {
    if (pos + 6 > total) return `truncated chunk header at ${pos}`;
    const len = buf.readUInt16BE(pos + 4);
    if (len < 6) return `chunk at ${pos} has length ${len} < 6`;
    if (pos + len > total) return `chunk at ${pos} overruns the packet`;
    pos += len;
  }
  return null;
}

function main() {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node decode.js FILE\n');
    process.exit(2);
  }
  const data = fs.readFileSync(file);
  const out = [];
  let pos = 0;
  let index = 0;
  while (pos < data.length) {
    if (pos + 4 > data.length) {
      process.stderr.write(`truncated length prefix at offset ${pos}\n`);
      process.exit(3);
    }
    const len = data.readUInt32BE(pos);
    pos += 4;
    if (pos + len > data.length) {
      process.stderr.write(`truncated packet ${index} at offset ${pos}\n`);
      process.exit(3);
    }
    const buf = data.subarray(pos, pos + len);
    pos += len;
    const problem = chunkLengthsSane(buf);
    let record;
    if (problem) {
      record = { index, error: problem };
    } else {
      const decoded = hep.decapsulate(Buffer.from(buf));
      if (!decoded || typeof decoded !== 'object') {
        record = { index, error: 'hep-js decapsulate failed' };
      } else {
        record = Object.assign({ index }, decoded.rcinfo || {});
        if (Object.prototype.hasOwnProperty.call(decoded, 'payload')) {
          record.payload = decoded.payload;
        }
      }
    }
    out.push(JSON.stringify(record));
    index += 1;
  }
  process.stdout.write(out.join('\n') + (out.length ? '\n' : ''));
}

main();
