// A long-lived CQL execution worker, JSON lines on stdin/stdout. Two engines of one meaning:
// the compiled engine (compiler/: each library compiled once to synchronous closures over
// cql-execution's own operators and datatypes) and the reference engine (reference.mjs:
// cql-execution's Executor), which stays the oracle and answers whatever the compiled engine
// does not: a library it did not compile (logged at load), a request with parameters, or a
// record where it raised Divergence or an error (logged, then the reference's answer is sent).
//
// Requests (one JSON object per line), each answered by exactly one line with the same "id":
//   {"id", "op": "load", "libraries": {name: elm, ...}, "valueSets": {url: {version: [codes]}},
//    "engine": "compiled"|"reference"}        (engine: default $TRIAL_CDS_ENGINE, else compiled)
//   {"id", "op": "evaluate", "libraries": [name, ...], "bundle": {...}|null,
//    "executionDateTime": "2026-01-01T00:00:00Z", "parameters": {lib: {name: value}},
//    "defines": {lib: [define, ...]},           (optional: return only these defines)
//    "engine": ..., "fallback": true}           (optional: this request's engine; fallback=false
//                                                 answers with the compiled engine alone: its
//                                                 own error, Divergence, or "not compiled")
//   {"id", "op": "compare", "libraries": [...], "records": [{"bundle", "executionDateTime"}, ...]}
//      both engines on every record, every define compared as encoded JSON (differential tests)
//   {"id", "op": "ping"}
// Replies: {"id", "ok": true, ...} or {"id", "ok": false, "error": "..."}; an evaluate reply
// also says which engine ran each library ("ran") and the worker CPU it took ("cpuMs").
// Nothing but reply lines is ever written to stdout (the Python pool treats anything else as a
// broken worker).
//
// TRIAL_CDS_ENGINE_PATCHES picks the reference engine's patches (patches/index.mjs).
import readline from "node:readline";
import { createRequire } from "node:module";

import { IndexedCodeService } from "./codeservice.mjs";
import { CompiledEngine, Divergence } from "./compiler/engine.mjs";
import { encodeResults, sameEncoding, toJson } from "./encode.mjs";
import { applyPatches, appliedPatches, selectPatches } from "./patches/index.mjs";
import { ReferenceEngine } from "./reference.mjs";
import { sanitizeQuantities } from "./sanitize.mjs";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");

// Keep console output of the engine (it logs "Failed to locate element ..." on odd data) off stdout.
console.log = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.warn = console.log;
console.info = console.log;

// A patch that does not fit the installed packages (or an unknown patch name) refuses to start
// the worker, with one clear line for the pool to quote.
try {
  applyPatches(selectPatches(process.env.TRIAL_CDS_ENGINE_PATCHES));
} catch (err) {
  process.stderr.write(`error: ${err.message}\n`);
  process.exit(1);
}

const ENGINES = new Set(["compiled", "reference"]);

function engineSetting(value, where) {
  const engine = (value ?? "compiled").trim().toLowerCase() || "compiled";
  if (!ENGINES.has(engine)) throw new Error(`${where} must be "compiled" or "reference", not ${JSON.stringify(value)}`);
  return engine;
}

const state = {
  loaded: false,
  engine: engineSetting(process.env.TRIAL_CDS_ENGINE, "TRIAL_CDS_ENGINE"),
  reference: new ReferenceEngine(),
  compiled: new CompiledEngine(),
  compiledLoad: null,
  warned: new Set(),
};

function warn(message) {
  process.stderr.write(`warning: ${message}\n`);
}

function load(req) {
  const libs = req.libraries || {};
  // One code service (the catalogue's value sets, indexed) shared by both engines.
  const codeService = new IndexedCodeService(req.valueSets || {});
  state.engine = engineSetting(req.engine ?? process.env.TRIAL_CDS_ENGINE, "the engine");
  state.reference.load(libs, codeService);
  let compiled = { compiled: [], fallback: {}, compileMs: 0 };
  if (state.engine === "compiled") {
    try {
      compiled = state.compiled.load(libs, codeService);
    } catch (err) {
      // The compiler itself cannot run (e.g. cql-execution is not the verified version).
      compiled = { compiled: [], fallback: Object.fromEntries(Object.keys(libs).map((n) => [n, [String(err.message || err)]])), compileMs: 0 };
      state.compiled = new CompiledEngine();
    }
    for (const [name, why] of Object.entries(compiled.fallback)) {
      warn(`library ${name} runs on the reference engine: ${why.join("; ")}`);
    }
  }
  state.compiledLoad = compiled;
  state.loaded = true;
  return { libraries: Object.keys(libs), engine: state.engine, patches: appliedPatches(), ...compiled };
}

function executionTime(req) {
  const at = req.executionDateTime ? cql.DateTime.parse(req.executionDateTime) : null;
  if (req.executionDateTime && !at) throw new Error(`executionDateTime is not an ISO date-time: ${req.executionDateTime}`);
  return at;
}

/** Raw results of `libraries` on the compiled engine where it can, else on the reference. */
async function run(req, libraries, at, engine, fallback) {
  const results = {};
  const ran = { compiled: [], reference: [] };
  let viaReference = libraries;
  if (engine === "compiled") {
    const part = { ...req, libraries: libraries.filter((name) => state.compiled.accepts({ ...req, libraries: [name] })) };
    if (!fallback && part.libraries.length < libraries.length) {
      const left = libraries.filter((name) => !part.libraries.includes(name));
      const why = left.map((name) => `${name}: ${(state.compiledLoad.fallback[name]
        || [state.compiledLoad.compiled.includes(name) ? "parameters passed in" : "not compiled at load"]).join("; ")}`);
      throw new Error(`not run by the compiled engine: ${why.join(" | ")}`);
    }
    if (part.libraries.length) {
      try {
        Object.assign(results, state.compiled.evaluate(part, at));
        ran.compiled = part.libraries;
        viaReference = libraries.filter((name) => !part.libraries.includes(name));
      } catch (err) {
        if (!fallback) throw err;
        const key = `${err.name}: ${err.message}`;
        if (!state.warned.has(key)) {
          state.warned.add(key);
          warn(`the reference engine answers a request the compiled engine could not (${key})`);
        }
      }
    }
  }
  if (viaReference.length) {
    Object.assign(results, await state.reference.evaluate(req, viaReference, at));
    ran.reference = viaReference;
  }
  return { results, ran };
}

async function evaluate(req) {
  if (!state.loaded) throw new Error("no libraries loaded");
  const cpu = process.cpuUsage();
  const at = executionTime(req);
  if (req.bundle) sanitizeQuantities(req.bundle);
  const libraries = req.libraries || [];
  const engine = engineSetting(req.engine ?? state.engine, "engine");
  const { results, ran } = await run(req, libraries, at, engine, req.fallback !== false);
  const out = {};
  for (const name of libraries) {
    const wanted = req.defines && req.defines[name] ? new Set(req.defines[name]) : null;
    out[name] = encodeResults(results[name], wanted, req.includePatient);
  }
  const used = process.cpuUsage(cpu);
  return { results: out, ran, cpuMs: (used.user + used.system) / 1000 };
}

/**
 * Both engines on every record; every define of every library compared as encoded JSON (the
 * same text the Python side decodes). The compiled engine runs without fallback, so any error
 * or Divergence of its own is reported, never hidden.
 */
async function compare(req) {
  if (!state.loaded) throw new Error("no libraries loaded");
  const libraries = req.libraries || [];
  const missing = libraries.filter((name) => !state.compiled.accepts({ libraries: [name] }));
  if (missing.length) throw new Error(`not compiled: ${missing.join(", ")}`);
  const limit = req.limit ?? 20;
  const report = { records: 0, defines: 0, bothFailed: 0, divergences: 0, referenceMs: 0, compiledMs: 0, mismatches: [] };
  for (const [index, record] of (req.records || []).entries()) {
    const one = { bundle: record.bundle ?? null, executionDateTime: record.executionDateTime, libraries };
    const at = executionTime(one);
    if (one.bundle) sanitizeQuantities(one.bundle);
    let expected = null;
    let actual = null;
    let expectedError = null;
    let actualError = null;
    let t0 = performance.now();
    try {
      expected = await state.reference.evaluate(one, libraries, at);
    } catch (err) {
      expectedError = String(err && err.message || err);
    }
    report.referenceMs += performance.now() - t0;
    t0 = performance.now();
    try {
      actual = state.compiled.evaluate(one, at);
    } catch (err) {
      if (err instanceof Divergence) report.divergences++;
      actualError = `${err.name}: ${err.message}`;
    }
    report.compiledMs += performance.now() - t0;
    report.records++;
    if (expectedError !== null || actualError !== null) {
      if (expectedError !== null && actualError !== null) report.bothFailed++;
      else if (report.mismatches.length < limit) {
        report.mismatches.push({ index, library: null, define: null, reference: expectedError ?? "(values)", compiled: actualError ?? "(values)" });
      }
      continue;
    }
    for (const name of libraries) {
      const a = expected[name];
      const b = actual[name];
      const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
      for (const define of keys) {
        report.defines++;
        if ((define in a) !== (define in b) || !sameEncoding(a[define], b[define])) {
          const ja = JSON.stringify(toJson(a[define]));
          const jb = JSON.stringify(toJson(b[define]));
          if (ja === jb && (define in a) === (define in b)) continue;
          if (report.mismatches.length < limit) {
            report.mismatches.push({ index, library: name, define, reference: JSON.parse(ja ?? "null"), compiled: JSON.parse(jb ?? "null") });
          } else {
            report.truncated = true;
          }
        }
      }
    }
  }
  return report;
}

async function handle(req) {
  switch (req.op) {
    case "ping":
      return { pid: process.pid, engine: state.engine, patches: appliedPatches() };
    case "load":
      return load(req);
    case "evaluate":
      return evaluate(req);
    case "compare":
      return compare(req);
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
