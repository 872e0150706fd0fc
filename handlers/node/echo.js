// echo.js - example jobpipe handler (persistent mode) built on jobpipe_handler.js.
// It returns each job's input unchanged, which makes it useful for trying out
// jobpipe end to end:
//   {"fail": "msg"}  -> the job fails with "Error: msg"
//   {"stream": N}    -> N partial results {"part": 0} .. {"part": N-1}
// Run from the repository root:  jobpipe ... -- node handlers/node/echo.js
'use strict';

const { serve } = require('./jobpipe_handler');

function init() {
  // A real handler would load its model here. This goes to stderr, not to
  // the protocol channel, because serve() has redirected console output.
  console.log('echo handler loading...');
}

function* streamParts(count) {
  for (let i = 0; i < count; i++) yield { part: i };
}

function handler(job) {
  const value = job.input;
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    if ('fail' in value) throw new Error(String(value.fail));
    if (Number.isInteger(value.stream)) return streamParts(value.stream);
  }
  return value;
}

serve(handler, { init });
