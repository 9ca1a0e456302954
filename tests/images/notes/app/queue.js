// The job queue both processes share: one JSON file per job, written to a
// temporary name and renamed, so a reader never sees half a job.
'use strict';
const fs = require('fs');
const path = require('path');

const SPOOL = process.env.NOTES_SPOOL || '/var/spool/notes';
const QUEUE = path.join(SPOOL, 'queue');
const DONE = path.join(SPOOL, 'done');

function writeAtomic(dir, name, value) {
  const tmp = path.join(dir, `.${name}.tmp`);
  fs.writeFileSync(tmp, JSON.stringify(value));
  fs.renameSync(tmp, path.join(dir, name));
}

module.exports = { QUEUE, DONE, writeAtomic };
