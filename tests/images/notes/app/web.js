#!/usr/bin/node
// The notes web app: takes jobs, queues them for the worker, answers with
// their state and result.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');
const { QUEUE, DONE, writeAtomic } = require('./queue');

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(text + '\n');
}

function readJob(id) {
  for (const [dir, state] of [[DONE, 'done'], [QUEUE, 'queued']]) {
    try {
      return { state, ...JSON.parse(fs.readFileSync(path.join(dir, `${id}.json`), 'utf8')) };
    } catch (e) {
      if (e.code !== 'ENOENT') throw e;
    }
  }
  return null;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://notes');
  if (req.method === 'GET' && url.pathname === '/api/health') {
    return send(res, 200, { ok: true, queued: fs.readdirSync(QUEUE).filter((f) => f.endsWith('.json')).length });
  }
  if (req.method === 'POST' && url.pathname === '/api/jobs') {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      let text;
      try {
        text = JSON.parse(body).text;
      } catch (e) {
        return send(res, 400, { error: 'the body is not JSON' });
      }
      if (typeof text !== 'string' || text.length === 0) {
        return send(res, 422, { error: 'a job needs a non-empty "text"' });
      }
      const id = crypto.randomUUID();
      writeAtomic(QUEUE, `${id}.json`, { id, text, queued_at: new Date().toISOString() });
      send(res, 202, { id, state: 'queued' });
    });
    return;
  }
  const m = url.pathname.match(/^\/api\/jobs\/([0-9a-f-]{36})$/);
  if (req.method === 'GET' && m) {
    const job = readJob(m[1]);
    return job ? send(res, 200, job) : send(res, 404, { error: 'no such job' });
  }
  if (req.method === 'DELETE' && m) {
    try {
      fs.unlinkSync(path.join(DONE, `${m[1]}.json`));
      return send(res, 200, { deleted: m[1] });
    } catch (e) {
      if (e.code === 'ENOENT') return send(res, 404, { error: 'no such finished job' });
      throw e;
    }
  }
  send(res, 404, { error: 'not found' });
});

server.listen(3000, '127.0.0.1', () => console.log('notes web app on 127.0.0.1:3000'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
