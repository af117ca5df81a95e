// A long-lived CQL execution worker: cql-execution + cql-exec-fhir, JSON lines on stdin/stdout.
//
// Requests (one JSON object per line), each answered by exactly one line with the same "id":
//   {"id", "op": "load", "libraries": {name: elm, ...}, "valueSets": {url: {version: [codes]}}}
//   {"id", "op": "evaluate", "libraries": [name, ...], "bundle": {...}|null,
//    "executionDateTime": "2026-01-01T00:00:00Z", "parameters": {lib: {name: value}},
//    "defines": {lib: [define, ...]}}   (optional: return only these defines)
//   {"id", "op": "ping"}
// Replies: {"id", "ok": true, ...} or {"id", "ok": false, "error": "..."}.
//
// Libraries are loaded once; executors and the FHIR patient source are built once and reused,
// because building them is most of the cost of a small evaluation. Nothing but reply lines is
// ever written to stdout (the Python pool treats anything else as a broken worker).
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");
const cqlfhir = require("cql-exec-fhir");
const { checkUnit } = require("cql-execution/lib/util/units");

import { applyFastPaths, dropLocalIds, shareIncludedLibraries } from "./fastpaths.mjs";
import { IndexedCodeService } from "./codeservice.mjs";

applyFastPaths();

const UCUM = "http://unitsofmeasure.org";



const state = {
  repository: null,
  elm: {},
  codeService: new IndexedCodeService({}),
  executors: new Map(),
  patientSource: cqlfhir.PatientSource.FHIRv401(),
};

// Keep console output of the engine (it logs "Failed to locate element ..." on odd data) off stdout.
console.log = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.warn = console.log;
console.info = console.log;

function toJson(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return Number.isFinite(value) ? value : null;
  if (typeof value === "boolean" || typeof value === "string") return value;
  if (Array.isArray(value)) return value.map(toJson);
  if (value instanceof cql.Code) {
    return { "@type": "Code", code: value.code ?? null, system: value.system ?? null, version: value.version ?? null, display: value.display ?? null };
  }
  if (value instanceof cql.Concept) {
    return { "@type": "Concept", codes: (value.codes || []).map(toJson), display: value.display ?? null };
  }
  if (value instanceof cql.Quantity) return { "@type": "Quantity", value: toJson(value.value), unit: value.unit ?? null };
  if (value instanceof cql.Ratio) return { "@type": "Ratio", numerator: toJson(value.numerator), denominator: toJson(value.denominator) };
  if (value instanceof cql.Interval) {
    return { "@type": "Interval", low: toJson(value.low), high: toJson(value.high), lowClosed: value.lowClosed, highClosed: value.highClosed };
  }
  if (value instanceof cql.DateTime) {
    return value.isTime() ? { "@type": "Time", value: value.toStringTime().replace(/^T/, "") } : { "@type": "DateTime", value: value.toString() };
  }
  if (value instanceof cql.Date) return { "@type": "Date", value: value.toString() };
  if (value && value.constructor && value.constructor.name === "Uncertainty") {
    return { "@type": "Uncertainty", low: toJson(value.low), high: toJson(value.high) };
  }
  if (value && value._typeInfo && Object.prototype.hasOwnProperty.call(value, "_json")) {
    // A FHIR object from cql-exec-fhir: serialise the resource or element as it came in.
    return { "@type": `FHIR.${value._typeInfo.name}`, value: value._json ?? null };
  }
  if (value instanceof cql.ValueSet || value instanceof cql.CodeSystem) {
    return { "@type": value.constructor.name, id: value.oid ?? value.id ?? null, version: value.version ?? null };
  }
  if (typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = toJson(v);
    return out;
  }
  return String(value);
}

/**
 * cql-execution throws when it builds a Quantity whose unit is not valid UCUM, which would
 * fail a whole library over one odd unit an EHR sent ("tablets", "mg/24hr"). Before a record
 * reaches the engine, every FHIR Quantity whose effective unit (the UCUM code, else the unit
 * text, as FHIRHelpers.ToQuantity picks it) is not valid UCUM gets a UCUM annotation instead,
 * e.g. {tablets}: a valid, dimensionless unit that no rule accepts, so the value reads as
 * "unit not recognised" (unknown) and the lab's text stays in `unit` for the evidence.
 * "µ" (micro sign) written for UCUM's "u" is mapped, being the same unit.
 */
function validUnit(unit) {
  try {
    return checkUnit(unit).valid;
  } catch (err) {
    return false;
  }
}

function sanitizeQuantities(node) {
  if (Array.isArray(node)) {
    for (const item of node) sanitizeQuantities(item);
    return;
  }
  if (!node || typeof node !== "object") return;
  const isQuantity = typeof node.value === "number" && !("resourceType" in node)
    && ("unit" in node || "code" in node || "system" in node || "comparator" in node);
  if (isQuantity) {
    const ucum = node.system === UCUM;
    const picked = ucum && typeof node.code === "string" ? node.code : node.unit;
    if (typeof picked === "string" && !validUnit(picked)) {
      const micro = picked.replace(/[\u00b5\u03bc]/g, "u");
      const fixed = validUnit(micro)
        ? micro
        : "{" + picked.replace(/[^\x21-\x7e]|[{}]/g, "_") + "}";
      node.system = UCUM;
      node.code = fixed;
      if (node.unit == null) node.unit = picked;
    }
  }
  for (const [key, value] of Object.entries(node)) {
    if (value && typeof value === "object") sanitizeQuantities(value);
  }
}

function load(req) {
  const libs = req.libraries || {};
  for (const elm of Object.values(libs)) dropLocalIds(elm);
  state.elm = libs;
  state.repository = new cql.Repository(libs);
  state.codeService = new IndexedCodeService(req.valueSets || {});
  state.executors = new Map();
  return { libraries: Object.keys(libs) };
}

function executorFor(name) {
  let ex = state.executors.get(name);
  if (ex) return ex;
  const elm = state.elm[name];
  if (!elm) throw new Error(`library ${name} is not loaded`);
  const version = elm.library && elm.library.identifier && elm.library.identifier.version;
  const lib = state.repository.resolve(name, version);
  if (!lib) throw new Error(`library ${name} could not be resolved (missing include?)`);
  ex = new cql.Executor(lib, state.codeService);
  state.executors.set(name, ex);
  return ex;
}

async function evaluate(req) {
  if (!state.repository) throw new Error("no libraries loaded");
  const at = req.executionDateTime ? cql.DateTime.parse(req.executionDateTime) : null;
  if (req.executionDateTime && !at) throw new Error(`executionDateTime is not an ISO date-time: ${req.executionDateTime}`);
  if (req.bundle) sanitizeQuantities(req.bundle);
  return shareIncludedLibraries(() => evaluateLibraries(req, at));
}

async function evaluateLibraries(req, at) {
  const results = {};
  for (const name of req.libraries || []) {
    const ex = executorFor(name);
    const params = (req.parameters && req.parameters[name]) || {};
    ex.withParameters(params);
    const ps = state.patientSource;
    ps.reset();
    if (req.bundle) ps.loadBundles([req.bundle]);
    const r = await ex.exec(ps, at || undefined);
    const patientIds = Object.keys(r.patientResults || {});
    const merged = { ...(r.unfilteredResults || {}) };
    if (patientIds.length) Object.assign(merged, r.patientResults[patientIds[0]]);
    const out = {};
    // Only the defines asked for cross the pipe (all are evaluated: criteria need their
    // parts); serialising every retrieve's resources would cost more than evaluating them.
    const wanted = req.defines && req.defines[name] ? new Set(req.defines[name]) : null;
    for (const [k, v] of Object.entries(merged)) {
      if (k === "Patient" && !req.includePatient) continue;
      if (wanted !== null && !wanted.has(k)) continue;
      out[k] = toJson(v);
    }
    results[name] = out;
  }
  return { results };
}

async function handle(req) {
  switch (req.op) {
    case "ping":
      return { pid: process.pid };
    case "load":
      return load(req);
    case "evaluate":
      return evaluate(req);
    default:
      throw new Error(`unknown op ${JSON.stringify(req.op)}`);
  }
}

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function onLine(line) {
  if (!line.trim()) return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (err) {
    reply({ id: null, ok: false, error: `request is not JSON: ${err.message}` });
    return;
  }
  try {
    reply({ id: req.id, ok: true, ...(await handle(req)) });
  } catch (err) {
    reply({ id: req.id, ok: false, error: String((err && err.message) || err) });
  }
}

// Requests share one patient source, so they run strictly one after another.
let chain = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  chain = chain.then(() => onLine(line));
});
// The pool closes stdin to ask for a clean exit; dying with our parent avoids orphans.
rl.on("close", () => chain.then(() => process.exit(0)));
