// An encounter system for biox in Node.js (amqplib, @msgpack/msgpack, ajv), written from
// docs/integration.md and schemas/ alone: it submits one encounter, keeps the highest
// revision of its result, validates every result against schemas/encounter.result.v1.json
// with a standard JSON Schema 2020-12 validator, and exits 0 once the result is complete.
//
//   npm ci && node client.mjs --url amqp://guest:guest@127.0.0.1:5672/%2F --schemas ../../schemas
import { randomUUID, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { decode, encode } from "@msgpack/msgpack";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import amqp from "amqplib";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: process.env.BIOX_AMQP_URL },
    participant: { type: "string", default: "us" },
    system: { type: "string", default: "example" },
    schemas: { type: "string", default: "../../schemas" },
    timeout: { type: "string", default: "120" },
  },
});
const me = args.participant;
const reply = `${me}.replies.${args.system}.node`;

// the schemas are JSON Schema 2020-12 with its standard formats (date-time, date);
// biox's x-biox-* keywords are annotations
const ajv = new Ajv2020({ allErrors: true });
addFormats(ajv);
ajv.addVocabulary(["x-biox-kind", "x-biox-schema", "x-biox-template"]);
const schema = JSON.parse(readFileSync(join(args.schemas, "encounter.result.v1.json"), "utf8"));
const validate = ajv.compile(schema);

// what a JSON validator sees of a msgpack body: bin as base64, timestamps as ISO strings
function jsonView(value) {
  if (value instanceof Uint8Array) return Buffer.from(value).toString("base64");
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(jsonView);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, jsonView(v)]));
  }
  return value;
}

function floats(n) {
  // a template: n float32, little-endian, finite, not all zero (docs/integration.md)
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) values[i] = (randomBytes(1)[0] - 127.5) / 64;
  return new Uint8Array(values.buffer);
}

const conn = await amqp.connect(args.url);
const ch = await conn.createConfirmChannel();
await ch.assertQueue(reply, { durable: true, arguments: { "x-queue-type": "quorum" } });
await ch.bindQueue(reply, `biox.${me}.results`, reply);

const encounterId = `${args.system}-node-${randomUUID()}`;
const messageId = randomUUID();
const body = {
  encounter_id: encounterId,
  purpose: "enforce",
  subject_status: { citizenships: ["gt"], permanent_residences: [] },
  biometrics: {
    face: { algorithm: "biox-face-512/1", template: floats(512) },
    fingerprints: [{ position: 2, algorithm: "biox-finger-192/1", template: floats(192) }],
  },
  biographic: { family_name: "DOE", given_names: "JANE", date_of_birth: "1990" },
  encounter: { encountered_at: new Date(), country: me, type: "border", location: "POE-1" },
};
ch.on("return", (msg) => {
  console.error(`unroutable: ${msg.fields.replyText}`);
  process.exit(2);
});
await new Promise((resolve, reject) =>
  ch.publish(`biox.${me}.submit`, `${me}.encounter.submit`, Buffer.from(encode(body)), {
    messageId,
    correlationId: encounterId,
    replyTo: reply,
    type: "encounter.submit",
    contentType: "application/msgpack",
    deliveryMode: 2,
    mandatory: true,
    headers: { "biox-schema": "encounter.submit/1", "biox-from": me, "biox-to": me },
  }, (err) => (err ? reject(err) : resolve())),
);
console.log(`submitted ${encounterId}`);

let newest = -1;
let invalid = 0;
const deadline = setTimeout(() => {
  console.error("no complete result in time");
  process.exit(1);
}, Number(args.timeout) * 1000);
await ch.consume(reply, (msg) => {
  const result = decode(msg.content);
  ch.ack(msg); // after it is stored, in a real system
  if (msg.properties.correlationId !== encounterId) return; // another encounter's
  if (!validate(jsonView(result))) {
    invalid += 1;
    console.error(`revision ${result.revision}: not as the schema says`, validate.errors);
  }
  if (result.status === "refused" && result.submission_id !== messageId) return; // a duplicate's
  if ((result.revision ?? 0) <= newest) return; // an older revision arriving late
  newest = result.revision ?? 0;
  const outcomes = (result.outcomes ?? []).map((o) => `${o.partner}=${o.status}`).join(", ");
  console.log(`revision ${newest}: ${result.status} ${result.reason_code ?? ""} ${outcomes}`);
  if (result.status === "complete" || result.status === "refused") {
    clearTimeout(deadline);
    conn.close().then(() => process.exit(invalid ? 3 : result.status === "complete" ? 0 : 4));
  }
});
