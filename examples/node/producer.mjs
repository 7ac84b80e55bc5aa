#!/usr/bin/env node
// An example tts-worker producer: one request, its answer, its audio.
//
// 1. Connects to RabbitMQ and declares a private reply queue (exclusive,
//    auto-delete, named by the server).
// 2. Validates a version 2 request against contract/schemas/request.schema.json
//    and publishes it to the requests queue: persistent, with a job id
//    (messageId), a correlationId, replyTo and a fresh W3C `traceparent`.
// 3. Waits for the event whose correlationId is ours, validates it against the
//    schema its `type` names (JSON Schema draft-07, Ajv), checks `dataschema`
//    and that the worker kept our trace id.
// 4. On `tts.job.completed`, downloads the audio and its captions from S3,
//    checks the audio's size and SHA-256 against the event, and prints one
//    line of JSON (job id, type, files, bytes). On `tts.job.failed`, prints
//    the error's code and message and exits 2.
//
// Exit codes: 0 completed and verified; 1 usage, connection or storage error;
// 2 the job failed (a valid tts.job.failed event); 3 the request or the event
// breaks the contract (schema, dataschema, trace id, job id); 4 no answer
// within --timeout; 5 the downloaded audio differs from the event (size,
// SHA-256).
//
// Environment: AMQP_URL, TTS_REQUESTS_QUEUE, S3_ENDPOINT (empty: AWS's own
// endpoint), AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// TTS_SCHEMAS_DIR. Run with --help for the flags.

import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import amqp from 'amqplib';

const EXIT_OK = 0;
const EXIT_ERROR = 1;
const EXIT_JOB_FAILED = 2;
const EXIT_CONTRACT = 3;
const EXIT_TIMEOUT = 4;
const EXIT_MISMATCH = 5;

const DEFAULT_TEXT = 'Hello from the Node example producer. Your audio is ready.';
// Fields newer than version 1 of the request; a body with any of them
// carries "version": 2.
const VERSION_2_FIELDS = ['format', 'sample_rate', 'bitrate_kbps', 'loudness_lufs', 'true_peak_db', 'captions'];
const REQUEST_SCHEMA = 'request.schema.json';
// The schema of each event, chosen by the event's `type`.
const EVENT_SCHEMAS = {
  'tts.job.completed': 'job.completed.schema.json',
  'tts.job.failed': 'job.failed.schema.json',
};
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
// This file is examples/node/producer.mjs; the contract is contract/schemas/.
const REPO_SCHEMAS = fileURLToPath(new URL('../../contract/schemas/', import.meta.url));
const FORMATS = ['wav', 'mp3', 'ogg', 'flac', 'mulaw'];

/** Ends the run with an exit code and a message for stderr. */
class Fail extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function log(message) {
  process.stderr.write(`[producer] ${message}\n`);
}

const USAGE = `usage: producer.mjs [--text TEXT] [--voice VOICE] [--format wav|mp3|ogg|flac|mulaw]
                    [--captions vtt,srt] [--job-id ID] [--timeout SECONDS]
                    [--out-dir DIR] [--schemas DIR]

Publish one text-to-speech request to tts-worker, wait for its CloudEvent,
validate it against the contract and download the audio.

  --text TEXT        what to say (default: a short sentence)
  --voice VOICE      voice_1 (default: Puck)
  --format FORMAT    audio format (default: ogg)
  --captions LIST    comma-separated caption formats: vtt, srt; empty for none (default: vtt)
  --job-id ID        job id (default: example-node-<random>)
  --timeout SECONDS  seconds to wait for the event (default: 120)
  --out-dir DIR      where to write the audio and captions (default: .)
  --schemas DIR      directory of the contract's JSON Schemas
                     (default: $TTS_SCHEMAS_DIR or the repository's contract/schemas)
`;

function parseArguments(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        text: { type: 'string', default: DEFAULT_TEXT },
        voice: { type: 'string', default: 'Puck' },
        format: { type: 'string', default: 'ogg' },
        captions: { type: 'string', default: 'vtt' },
        'job-id': { type: 'string' },
        timeout: { type: 'string', default: '120' },
        'out-dir': { type: 'string', default: '.' },
        schemas: { type: 'string', default: process.env.TTS_SCHEMAS_DIR || REPO_SCHEMAS },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new Fail(EXIT_ERROR, `${e.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(EXIT_OK);
  }
  if (!FORMATS.includes(values.format)) {
    throw new Fail(EXIT_ERROR, `--format must be one of ${FORMATS.join(', ')}`);
  }
  const timeout = Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0) {
    throw new Fail(EXIT_ERROR, '--timeout must be a positive number of seconds');
  }
  return {
    text: values.text,
    voice: values.voice,
    format: values.format,
    captions: values.captions
      .split(',')
      .map((c) => c.trim())
      .filter((c) => c !== ''),
    jobId: values['job-id'],
    timeout,
    outDir: values['out-dir'],
    schemas: values.schemas,
  };
}

/** The URL without its password, for messages. */
function redact(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(an unparsable URL)';
  }
}

/** A fresh, sampled W3C trace context: version 00, random trace and span ids. */
function newTraceparent() {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  // All-zero ids are invalid (a chance of 2^-128 and 2^-64, but still).
  if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) return newTraceparent();
  return `00-${traceId}-${spanId}-01`;
}

function traceIdOf(traceparent) {
  const match = typeof traceparent === 'string' ? TRACEPARENT.exec(traceparent) : null;
  return match ? match[1] : null;
}

/**
 * The contract's schemas: every *.schema.json of a directory, added to Ajv by
 * `$id` (so schemas may refer to one another) and checked against the
 * draft-07 meta-schema.
 */
class Contract {
  static async load(directory) {
    let names;
    try {
      names = (await readdir(directory)).filter((n) => n.endsWith('.schema.json')).sort();
    } catch (e) {
      throw new Fail(EXIT_ERROR, `no schema directory ${directory} (pass --schemas or set TTS_SCHEMAS_DIR): ${e.message}`);
    }
    // The default Ajv class is draft-07. Not strict: the contract's authors
    // may use annotation keywords Ajv does not know; instances are still
    // checked by every validation keyword, and formats by ajv-formats.
    const ajv = new Ajv({ allErrors: true, strict: false });
    addFormats(ajv);
    const schemas = new Map();
    for (const name of names) {
      const file = path.join(directory, name);
      let schema;
      try {
        schema = JSON.parse(await readFile(file, 'utf8'));
      } catch (e) {
        throw new Fail(EXIT_ERROR, `cannot read ${file}: ${e.message}`);
      }
      if (!ajv.validateSchema(schema)) {
        throw new Fail(EXIT_CONTRACT, `${file} is not a valid draft-07 schema: ${ajv.errorsText(ajv.errors)}`);
      }
      schemas.set(name, schema);
      ajv.addSchema(schema, schema.$id ?? name);
    }
    return new Contract(directory, ajv, schemas);
  }

  constructor(directory, ajv, schemas) {
    this.directory = directory;
    this.ajv = ajv;
    this.schemas = schemas;
  }

  schema(name) {
    const schema = this.schemas.get(name);
    if (!schema) throw new Fail(EXIT_ERROR, `schema ${name} not found in ${this.directory}`);
    return schema;
  }

  validate(name, instance, what) {
    const schema = this.schema(name);
    const validate = this.ajv.getSchema(schema.$id ?? name);
    if (!validate(instance)) {
      const listed = validate.errors
        .map((e) => `  ${e.instancePath || '/'}: ${e.message} ${JSON.stringify(e.params)}`)
        .join('\n');
      throw new Fail(EXIT_CONTRACT, `${what} does not match ${name}:\n${listed}`);
    }
  }
}

function buildRequest(args, jobId) {
  let request = {
    text: args.text,
    voice_1: args.voice,
    format: args.format,
    job_id: jobId,
  };
  if (args.captions.length > 0) request.captions = args.captions;
  // The versioning rule: a request using any field newer than version 1
  // says "version": 2 (here always: it names a format).
  if (VERSION_2_FIELDS.some((field) => field in request)) request = { version: 2, ...request };
  return request;
}

/** Publishes the request; resolves to the reply (properties, content) and the correlation id sent. */
async function sendAndWait(args, request, traceparent) {
  const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
  const queue = process.env.TTS_REQUESTS_QUEUE || 'tts.requests';
  const correlationId = randomUUID();
  let connection;
  try {
    connection = await amqp.connect(url);
  } catch (e) {
    throw new Fail(EXIT_ERROR, `cannot connect to ${redact(url)}: ${e.message}`);
  }
  // Errors also reject the pending operation; without a listener an
  // 'error' event would end the process.
  connection.on('error', (e) => log(`connection error: ${e.message}`));
  let timer;
  try {
    // Publisher confirms: waitForConfirms resolves once the broker has it.
    const channel = await connection.createConfirmChannel();
    channel.on('error', (e) => log(`channel error: ${e.message}`));
    // A private reply queue: exclusive to this connection, deleted with it.
    const { queue: replyQueue } = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false });

    let settle;
    const replied = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    replied.catch(() => {}); // handled by the race below; not an unhandled rejection before it
    connection.on('close', () => settle.reject(new Fail(EXIT_ERROR, 'the broker closed the connection')));
    await channel.consume(
      replyQueue,
      (message) => {
        if (message === null) {
          settle.reject(new Fail(EXIT_ERROR, 'the broker cancelled the reply consumer'));
        } else if (message.properties.correlationId !== correlationId) {
          log(`ignoring a reply for correlation_id ${JSON.stringify(message.properties.correlationId)}`);
        } else {
          settle.resolve(message);
        }
      },
      { noAck: true },
    );

    // mandatory: a request no queue takes comes back (basic.return) before
    // its confirmation.
    let returned = false;
    channel.on('return', () => {
      returned = true;
    });
    channel.sendToQueue(queue, Buffer.from(JSON.stringify(request)), {
      persistent: true,
      contentType: 'application/json',
      messageId: request.job_id,
      correlationId,
      replyTo: replyQueue,
      headers: { traceparent },
      mandatory: true,
    });
    try {
      await channel.waitForConfirms();
    } catch (e) {
      throw new Fail(EXIT_ERROR, `the broker refused the request on ${JSON.stringify(queue)}: ${e.message}`);
    }
    if (returned) {
      throw new Fail(EXIT_ERROR, `no queue ${JSON.stringify(queue)} took the request: is the worker running?`);
    }
    log(`published job ${request.job_id} to ${JSON.stringify(queue)} (traceparent ${traceparent}); waiting up to ${args.timeout} s`);

    const timedOut = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Fail(EXIT_TIMEOUT, `no event for job ${request.job_id} within ${args.timeout} s`)),
        args.timeout * 1000,
      );
    });
    const reply = await Promise.race([replied, timedOut]);
    return { properties: reply.properties, content: reply.content, correlationId };
  } catch (e) {
    if (e instanceof Fail) throw e;
    throw new Fail(EXIT_ERROR, `broker error: ${e.message}`);
  } finally {
    clearTimeout(timer);
    await connection.close().catch(() => {});
  }
}

/** The event, checked against the contract and against what was sent. */
function checkEvent(contract, properties, content, jobId, traceparent) {
  let event;
  try {
    event = JSON.parse(content.toString('utf8'));
  } catch (e) {
    throw new Fail(EXIT_CONTRACT, `the reply is not JSON: ${e.message}`);
  }
  if (event === null || typeof event !== 'object' || Array.isArray(event)) {
    throw new Fail(EXIT_CONTRACT, 'the reply is not a JSON object');
  }
  const schemaName = Object.hasOwn(EVENT_SCHEMAS, event.type) ? EVENT_SCHEMAS[event.type] : undefined;
  if (!schemaName) throw new Fail(EXIT_CONTRACT, `unknown event type ${JSON.stringify(event.type)}`);
  contract.validate(schemaName, event, `the ${event.type} event`);
  const expected = contract.schema(schemaName).$id;
  if (event.dataschema !== expected) {
    throw new Fail(EXIT_CONTRACT, `dataschema is ${JSON.stringify(event.dataschema)}, expected ${JSON.stringify(expected)}`);
  }
  // The worker continues the producer's trace: same trace id (its own span id
  // when it exports spans).
  const sent = traceIdOf(traceparent);
  if (traceIdOf(event.traceparent) !== sent) {
    throw new Fail(EXIT_CONTRACT, `the event's traceparent ${JSON.stringify(event.traceparent)} is not in trace ${sent}`);
  }
  let header = properties.headers?.traceparent;
  if (Buffer.isBuffer(header)) header = header.toString('utf8');
  if (header !== undefined && traceIdOf(header) !== sent) {
    throw new Fail(EXIT_CONTRACT, `the reply's traceparent header ${JSON.stringify(header)} is not in trace ${sent}`);
  }
  if (event.data?.job_id !== jobId) {
    throw new Fail(EXIT_CONTRACT, `the event is for job ${JSON.stringify(event.data?.job_id)}, not ${JSON.stringify(jobId)}`);
  }
  return event;
}

function s3Client() {
  const endpoint = process.env.S3_ENDPOINT ?? 'http://127.0.0.1:3900';
  return new S3Client({
    ...(endpoint ? { endpoint } : {}),
    region: process.env.AWS_REGION || 'garage',
    forcePathStyle: true,
    maxAttempts: 3,
    // Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any source
    // of the SDK's default chain).
  });
}

/**
 * Streams s3://bucket/key to outDir/<basename>, checking size and SHA-256
 * when given; resolves to the path, the byte count and the SHA-256.
 */
async function download(s3, { bucket, key, uri, outDir, size, sha256 }) {
  if (uri !== `s3://${bucket}/${key}`) {
    throw new Fail(EXIT_CONTRACT, `uri ${JSON.stringify(uri)} does not name s3://${bucket}/${key}`);
  }
  const name = path.posix.basename(key);
  if (name === '' || name === '.' || name === '..') {
    throw new Fail(EXIT_CONTRACT, `key ${JSON.stringify(key)} has no file name`);
  }
  const target = path.resolve(outDir, name);
  const partial = `${target}.part`;
  const digest = createHash('sha256');
  let count = 0;
  try {
    const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const file = createWriteStream(partial);
    try {
      for await (const chunk of object.Body) {
        digest.update(chunk);
        count += chunk.length;
        if (!file.write(chunk)) await once(file, 'drain');
      }
    } finally {
      file.end();
      await once(file, 'close');
    }
  } catch (e) {
    await rm(partial, { force: true });
    throw new Fail(EXIT_ERROR, `cannot download ${uri}: ${e.name}: ${e.message}`);
  }
  const got = digest.digest('hex');
  if (size !== undefined && count !== size) {
    await rm(partial, { force: true });
    throw new Fail(EXIT_MISMATCH, `${uri} has ${count} bytes, the event says ${size}`);
  }
  if (sha256 !== undefined && got !== sha256.toLowerCase()) {
    await rm(partial, { force: true });
    throw new Fail(EXIT_MISMATCH, `${uri} has SHA-256 ${got}, the event says ${sha256}`);
  }
  await rename(partial, target);
  return { path: target, bytes: count, sha256: got };
}

async function run(argv) {
  const args = parseArguments(argv);
  const contract = await Contract.load(args.schemas);
  const jobId = args.jobId ?? `example-node-${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  const request = buildRequest(args, jobId);
  contract.validate(REQUEST_SCHEMA, request, 'the request');
  const traceparent = newTraceparent();

  const { properties, content, correlationId } = await sendAndWait(args, request, traceparent);
  const event = checkEvent(contract, properties, content, jobId, traceparent);
  const data = event.data;
  const summary = {
    job_id: jobId,
    type: event.type,
    event_id: event.id,
    correlation_id: correlationId,
    traceparent,
  };

  if (event.type === 'tts.job.failed') {
    const error = data.error ?? {};
    summary.error = { code: error.code, message: error.message, retryable: error.retryable };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    log(`job ${jobId} failed: ${error.code}: ${error.message} (${error.retryable ? 'retryable' : 'not retryable'})`);
    return EXIT_JOB_FAILED;
  }

  const audio = data.audio;
  await mkdir(args.outDir, { recursive: true });
  const s3 = s3Client();
  const file = await download(s3, {
    bucket: audio.bucket,
    key: audio.key,
    uri: audio.uri,
    outDir: args.outDir,
    size: audio.size_bytes,
    sha256: audio.sha256,
  });
  summary.audio = {
    path: file.path,
    bytes: file.bytes,
    sha256: file.sha256,
    content_type: audio.content_type,
    format: audio.format ?? null,
  };
  summary.captions = [];
  for (const caption of audio.captions ?? []) {
    const c = await download(s3, { bucket: audio.bucket, key: caption.key, uri: caption.uri, outDir: args.outDir });
    summary.captions.push({ format: caption.format, path: c.path, bytes: c.bytes });
  }
  s3.destroy();
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  log(`job ${jobId} completed: ${file.path} (${file.bytes} bytes, SHA-256 verified)`);
  return EXIT_OK;
}

try {
  process.exitCode = await run(process.argv.slice(2));
} catch (e) {
  if (e instanceof Fail) {
    log(`error: ${e.message}`);
    process.exitCode = e.code;
  } else {
    log(`error: ${e.stack ?? e}`);
    process.exitCode = EXIT_ERROR;
  }
}
