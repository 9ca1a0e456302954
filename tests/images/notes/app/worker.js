#!/usr/bin/node
// The notes worker: takes each queued job, counts its words, hashes it,
// writes the result and removes the job from the queue.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { QUEUE, DONE, writeAtomic } = require('./queue');

function work() {
  for (const name of fs.readdirSync(QUEUE).filter((f) => f.endsWith('.json')).sort()) {
    const file = path.join(QUEUE, name);
    let job;
    try {
      job = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      if (e.code === 'ENOENT') continue;
      throw e;
    }
    const words = job.text.split(/\s+/).filter(Boolean);
    writeAtomic(DONE, name, {
      ...job,
      words: words.length,
      longest: words.reduce((a, w) => (w.length > a.length ? w : a), ''),
      sha256: crypto.createHash('sha256').update(job.text).digest('hex'),
      done_at: new Date().toISOString(),
    });
    fs.unlinkSync(file);
  }
}

console.log(`notes worker watching ${QUEUE}`);
const timer = setInterval(work, 200);
process.on('SIGTERM', () => { clearInterval(timer); process.exit(0); });
