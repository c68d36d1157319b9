// docs/asyncapi.json read by the official AsyncAPI parser: `node --test tests/js/`.
// The parser is an npm dev dependency of tests/js (`cd tests/js && npm ci`); without it
// this test is skipped, and scripts/test says so loudly. tests/test_asyncapi.py checks
// that the file is what the code generates and that real frames fit its schemas.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const DOCUMENT = new URL("../../docs/asyncapi.json", import.meta.url);
// The parser's DiagnosticSeverity: 0 error, 1 warning, 2 information, 3 hint.
const ERROR = 0;
const WARNING = 1;

let parserModule = null;
try {
  parserModule = await import("@asyncapi/parser");
} catch {
  parserModule = null;
}
const skip = parserModule === null && "@asyncapi/parser is not installed (cd tests/js && npm ci)";

/** Parse JSON text; return the document (undefined when invalid) and the diagnostics. */
async function parse(text) {
  const parser = new parserModule.Parser();
  return parser.parse(text);
}

function describe(diagnostic) {
  return `${diagnostic.code} at ${JSON.stringify(diagnostic.path)}: ${diagnostic.message}`;
}

test("docs/asyncapi.json parses with no diagnostic of error severity", { skip }, async (t) => {
  const { document, diagnostics } = await parse(readFileSync(DOCUMENT, "utf8"));
  for (const warning of diagnostics.filter((d) => d.severity === WARNING)) {
    t.diagnostic(`warning: ${describe(warning)}`);
    process.stderr.write(`asyncapi warning: ${describe(warning)}\n`);
  }
  const errors = diagnostics.filter((d) => d.severity === ERROR);
  assert.deepEqual(errors.map(describe), []);
  assert.ok(document, "the parser returned no document");

  assert.equal(document.version(), "3.0.0");
  assert.equal(document.info().version(), "1.2");
  const channel = document.channels().get("agent");
  assert.equal(channel.address(), "/ws");
  const names = (operation) =>
    document
      .operations()
      .get(operation)
      .messages()
      .all()
      .map((m) => m.name())
      .sort();
  assert.deepEqual(names("receiveClientMessages"), ["HEARTBEAT", "INTERRUPT", "REQUEST", "RESUME"]);
  assert.deepEqual(names("sendServerMessages"), [
    "AUDIO",
    "DONE",
    "ERROR",
    "HEARTBEAT",
    "INTERRUPT_ACK",
    "RESUMED",
    "SESSION",
    "STREAM",
  ]);
  const audio = document.components().messages().get("AUDIO");
  assert.equal(audio.contentType(), "application/octet-stream");
  const schemes = document
    .servers()
    .get("local")
    .security()
    .flatMap((alternative) => alternative.all().map((requirement) => requirement.scheme().type()));
  assert.deepEqual(schemes.sort(), ["http", "httpApiKey", "httpApiKey"]);
});

test("the parser does report a broken document (the test above can fail)", { skip }, async () => {
  const broken = JSON.parse(readFileSync(DOCUMENT, "utf8"));
  delete broken.info.version;
  broken.components.messages.REQUEST.payload = { $ref: "#/components/schemas/Nowhere" };
  const { diagnostics } = await parse(JSON.stringify(broken));
  const errors = diagnostics.filter((d) => d.severity === ERROR);
  assert.ok(errors.length >= 1, "a document without info.version parsed without error");
});
