#!/usr/bin/env node
// Validates the AsyncAPI contract of tts-worker.
//
// Usage: node contract/validate.mjs [path/to/asyncapi.yaml]
//
// 1. Parses the document with @asyncapi/parser (relative $refs resolve against
//    the document's directory) and prints every diagnostic with its severity
//    and path. Any error-severity diagnostic, or a document that does not
//    parse, fails. Warnings are printed and do not fail, except "No schema
//    parser registered" (an unknown schemaFormat, whose payload the parser
//    would silently leave unvalidated).
// 2. Asserts that every message payload resolved to a real schema (no $ref
//    left anywhere in it), in a schemaFormat the parser validates, and that
//    the three schema files were loaded: their `$id`s must be
//    urn:tts-worker:schema:{request,tts.job.completed,tts.job.failed}:N.
// 3. Validates every message example (headers and payload) against the
//    message's schemas, and an event example's CloudEvents `dataschema`
//    against its payload schema's `$id`.
//
// Exit status: 0 when all of that holds, 1 otherwise.

import { createRequire } from 'node:module';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = path.resolve(process.argv[2] ?? path.join(here, 'asyncapi.yaml'));
const shown = path.basename(file);

// Ajv and its formats come with the parser (its own validator), so no
// package beyond @asyncapi/parser is needed.
const requireFromParser = createRequire(createRequire(import.meta.url).resolve('@asyncapi/parser'));
const AjvModule = requireFromParser('ajv');
const Ajv = AjvModule.default ?? AjvModule;
const formatsModule = requireFromParser('ajv-formats');
const addFormats = formatsModule.default ?? formatsModule;

// Schema formats whose payloads the parser validates (its built-in AsyncAPI
// schema parser; the AsyncAPI 3.0.0 JSON Schema checks `schema` against the
// draft-07 meta-schema or the AsyncAPI Schema Object).
const VALIDATED_FORMATS = new Set([
  'application/schema+json;version=draft-07',
  'application/schema+yaml;version=draft-07',
  'application/vnd.aai.asyncapi;version=3.0.0',
  'application/vnd.aai.asyncapi+json;version=3.0.0',
  'application/vnd.aai.asyncapi+yaml;version=3.0.0',
]);

// The schema files the contract references, by the `$id` they must have.
const EXPECTED_SCHEMA_IDS = [
  { file: 'schemas/request.schema.json', id: /^urn:tts-worker:schema:request:\d+$/ },
  { file: 'schemas/job.completed.schema.json', id: /^urn:tts-worker:schema:tts\.job\.completed:\d+$/ },
  { file: 'schemas/job.failed.schema.json', id: /^urn:tts-worker:schema:tts\.job\.failed:\d+$/ },
];

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

const problems = [];
const fail = (message) => problems.push(message);

function pointer(p) {
  return Array.isArray(p) && p.length > 0 ? `/${p.join('/')}` : '/';
}

// A $ref left anywhere in a resolved schema, or undefined.
function findRef(value, at = '', seen = new Set()) {
  if (value === null || typeof value !== 'object' || seen.has(value)) return undefined;
  seen.add(value);
  if (typeof value.$ref === 'string') return `${at || '/'} -> ${value.$ref}`;
  for (const [k, v] of Object.entries(value)) {
    const found = findRef(v, `${at}/${k}`, seen);
    if (found) return found;
  }
  return undefined;
}

function compile(schema, what) {
  const ajv = new Ajv({ strict: false, allErrors: true, allowUnionTypes: true, validateFormats: true });
  addFormats(ajv);
  try {
    return ajv.compile(schema);
  } catch (e) {
    fail(`${what}: the schema does not compile: ${e.message}`);
    return undefined;
  }
}

function ajvErrors(validate) {
  return (validate.errors ?? [])
    .map((e) => `${e.instancePath || '/'} ${e.message}${e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : ''}`)
    .join('; ');
}

const parser = new Parser();
let result;
try {
  result = await fromFile(parser, file).parse();
} catch (e) {
  console.error(`${shown}: could not be read or parsed: ${e.message}`);
  process.exit(1);
}
const { document, diagnostics } = result;

let errors = 0;
let warnings = 0;
for (const d of diagnostics) {
  const severity = SEVERITY[d.severity] ?? String(d.severity);
  // Diagnostics inside a referenced schema file name that file.
  const where = d.source ? path.relative(process.cwd(), d.source) || d.source : shown;
  const line = d.range ? `:${d.range.start.line + 1}` : '';
  const text = `${severity} ${d.code ?? ''} ${pointer(d.path)} (${where}${line}): ${d.message}`;
  if (d.severity === DiagnosticSeverity.Error) {
    errors += 1;
    console.error(text);
  } else {
    if (d.severity === DiagnosticSeverity.Warning) warnings += 1;
    console.log(text);
    if (typeof d.message === 'string' && d.message.startsWith('No schema parser registered')) {
      fail(`${pointer(d.path)}: unknown schemaFormat, its schema would not be validated`);
    }
  }
}

if (!document) {
  console.error(`${shown}: does not parse (${errors} errors)`);
  process.exit(1);
}

const version = document.version();
const channels = document.allChannels();
const operations = document.allOperations();
const messages = document.allMessages();

const seenIds = new Map();
for (const message of messages) {
  const name = message.name() ?? message.id();
  if (!message.hasPayload()) {
    fail(`message ${name}: has no payload`);
    continue;
  }
  const payload = message.payload();
  const format = payload.schemaFormat();
  if (!VALIDATED_FORMATS.has(format)) {
    fail(`message ${name}: schemaFormat ${format} is not one the parser validates`);
  }
  const raw = payload.json();
  const schema = raw && typeof raw === 'object' && 'schema' in raw ? raw.schema : raw;
  if (schema === undefined || schema === null || (typeof schema !== 'object' && typeof schema !== 'boolean')) {
    fail(`message ${name}: payload is not a schema`);
    continue;
  }
  const ref = findRef(schema);
  if (ref) {
    fail(`message ${name}: payload has an unresolved $ref at ${ref}`);
    continue;
  }
  const id = typeof schema === 'object' ? schema.$id : undefined;
  if (id) seenIds.set(id, name);

  const validatePayload = compile(schema, `message ${name}: payload`);
  const headersSchema = message.hasHeaders() ? message.headers().json() : undefined;
  if (headersSchema !== undefined) {
    const headerRef = findRef(headersSchema);
    if (headerRef) fail(`message ${name}: headers have an unresolved $ref at ${headerRef}`);
  }
  const validateHeaders = headersSchema !== undefined ? compile(headersSchema, `message ${name}: headers`) : undefined;

  for (const [i, example] of message.examples().all().entries()) {
    const label = `message ${name}: example ${example.name() ?? i}`;
    if (example.hasPayload() && validatePayload && !validatePayload(example.payload())) {
      fail(`${label}: payload does not match the payload schema: ${ajvErrors(validatePayload)}`);
    }
    if (example.hasHeaders() && validateHeaders && !validateHeaders(example.headers())) {
      fail(`${label}: headers do not match the headers schema: ${ajvErrors(validateHeaders)}`);
    }
    const dataschema = example.hasPayload() ? example.payload()?.dataschema : undefined;
    if (dataschema !== undefined && dataschema !== id) {
      fail(`${label}: dataschema ${JSON.stringify(dataschema)} is not the payload schema's $id ${JSON.stringify(id)}`);
    }
  }
}

for (const expected of EXPECTED_SCHEMA_IDS) {
  const found = [...seenIds.keys()].filter((id) => expected.id.test(id));
  if (found.length === 0) {
    fail(`${expected.file} was not loaded: no message payload has an $id matching ${expected.id}`);
  } else {
    console.log(`loaded ${expected.file}: $id ${found.join(', ')} (message ${found.map((id) => seenIds.get(id)).join(', ')})`);
  }
}

for (const p of problems) console.error(`error ${p}`);
const totalErrors = errors + problems.length;
console.log(
  `${shown}: ${version}, ${channels.length} channels, ${operations.length} operations, ` +
    `${messages.length} messages, ${totalErrors} errors, ${warnings} warnings`,
);
process.exit(totalErrors > 0 ? 1 : 0);
