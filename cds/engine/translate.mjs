// CQL -> ELM JSON with the official translator (@cqframework/cql, the Kotlin/JS build).
//
// Two ways in:
//   node translate.mjs --rules DIR FILE.cql...   one batch, prints {"results": [...]} on stdout
//   node translate.mjs --serve --rules DIR       JSON lines on stdin/stdout, one request per line:
//   (add --result-types to annotate every ELM node with its result type)
//        {"id": 1, "cql": "library X ...", "sources": {"Other": "library Other ..."}}
//     -> {"id": 1, "library": "X", "version": "1", "elm": {...}|null, "errors": [...], "warnings": [...]}
//
// The JS translator registers nothing by default, so this module wires the System and FHIR 4.0.1
// model infos, a library source provider (request sources first, then the rules directories) and a
// UCUM service backed by @lhncbc/ucum-lhc. `toJson()` returns ELM even when translation failed, so
// every caller must look at `errors`.
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";
import {
  CqlCompilerOptions,
  CqlTranslator,
  LibraryManager,
  ModelManager,
  createLibrarySourceProvider,
  createModelInfoProvider,
  createUcumService,
  stringAsSource,
} from "@cqframework/cql/cql-to-elm";
import { SystemModelInfoProvider } from "@cqframework/cql/cql";
import ucumPkg from "@lhncbc/ucum-lhc";

// The translator's logger (kotlin-logging) prints to stdout: keep stdout for replies only.
const writeReply = process.stdout.write.bind(process.stdout);
process.stdout.write = (chunk, ...rest) => process.stderr.write(chunk, ...rest);
for (const level of ["log", "info", "debug", "warn", "trace"]) {
  console[level] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const require = createRequire(import.meta.url);
const FHIR_MODELINFO = fs.readFileSync(
  path.join(path.dirname(require.resolve("cql-exec-fhir")), "modelInfos", "fhir-modelinfo-4.0.1.xml"),
  "utf8",
);
const ucum = ucumPkg.UcumLhcUtils.getInstance();

function ucumService() {
  return createUcumService(
    (value, from, to) => {
      const r = ucum.convertUnitTo(from, Number(value), to);
      if (r.status !== "succeeded") throw new Error(`cannot convert ${from} to ${to}`);
      return String(r.toVal);
    },
    (unit) => {
      const r = ucum.validateUnitString(unit, true);
      return r.status === "valid" ? null : (r.msg || ["invalid UCUM unit"]).join("; ");
    },
    // Quantity arithmetic at compile time is only used for constant folding of unit
    // expressions; the translator does not call these for our libraries. Keep them exact
    // rather than guessing: a call means a feature we do not support yet.
    () => { throw new Error("UCUM multiply is not supported at translation time"); },
    () => { throw new Error("UCUM divide is not supported at translation time"); },
  );
}

function compilerOptions(resultTypes) {
  const O = CqlCompilerOptions.Options;
  // Locators keep file:line in errors and in ELM; annotations are dropped because the CQL
  // text travels beside the ELM (Library.content) and would double the size of every bundle.
  // Result types (off by default: the engine needs none) are asked for by the conformance run,
  // which must tell an Integer 1 from a Decimal 1.0 that JSON cannot.
  return new CqlCompilerOptions().withOptions([
    O.EnableLocators,
    O.DisableListDemotion,
    O.DisableListPromotion,
    ...(resultTypes ? [O.EnableResultTypes] : []),
  ]);
}

/** Parse the translator's TrackBack (its Kotlin fields are minified; toString is stable). */
function parseLocator(locator) {
  if (!locator) return {};
  const s = String(locator);
  const m = /startLine=(\d+), startChar=(\d+), endLine=(\d+), endChar=(\d+)/.exec(s);
  if (!m) return {};
  return { line: Number(m[1]), column: Number(m[2]), endLine: Number(m[3]), endColumn: Number(m[4]) };
}

function exceptions(list) {
  return list.asJsReadonlyArrayView().map((e) => ({
    message: e.message,
    severity: e.severity ? e.severity.name : "Error",
    ...parseLocator(e.locator),
  }));
}

function libraryHeader(cql) {
  const m = /^\s*library\s+("[^"]+"|[A-Za-z_][A-Za-z0-9_]*)(?:\s+version\s+'([^']*)')?/m.exec(cql);
  return m ? { library: m[1].replace(/"/g, ""), version: m[2] ?? null } : { library: null, version: null };
}

/**
 * A translator bound to some rules directories. A fresh LibraryManager per batch: its cache of
 * compiled libraries is what makes a batch fast, and a new one per batch keeps edits visible.
 */
export function makeTranslator(rulesDirs, { resultTypes = false } = {}) {
  return function translateBatch(items) {
    const inMemory = new Map();
    for (const it of items) {
      const h = libraryHeader(it.cql);
      if (h.library) inMemory.set(h.library, it.cql);
      for (const [name, text] of Object.entries(it.sources || {})) inMemory.set(name, text);
    }
    const mm = new ModelManager();
    mm.modelInfoLoader.registerModelInfoProvider(new SystemModelInfoProvider(), true);
    mm.modelInfoLoader.registerModelInfoProvider(
      createModelInfoProvider((id, _system, version) =>
        id === "FHIR" && (version == null || version === "4.0.1") ? stringAsSource(FHIR_MODELINFO) : null,
      ),
    );
    const lm = new LibraryManager(mm, compilerOptions(resultTypes), undefined, ucumService());
    lm.librarySourceLoader.registerProvider(
      createLibrarySourceProvider((id) => {
        if (inMemory.has(id)) return stringAsSource(inMemory.get(id));
        for (const dir of rulesDirs) {
          const p = path.join(dir, `${id}.cql`);
          if (fs.existsSync(p)) return stringAsSource(fs.readFileSync(p, "utf8"));
        }
        return null;
      }),
    );
    return items.map((it) => {
      const header = libraryHeader(it.cql);
      let t;
      try {
        t = CqlTranslator.fromText(it.cql, lm);
      } catch (err) {
        return { ...header, file: it.file ?? null, elm: null, errors: [{ message: String(err && err.message || err), severity: "Error" }], warnings: [] };
      }
      const errors = exceptions(t.errors);
      const warnings = exceptions(t.warnings);
      const elm = errors.length ? null : JSON.parse(t.toJson());
      return { ...header, file: it.file ?? null, elm, errors, warnings };
    });
  };
}

function parseArgs(argv) {
  const out = { rules: [], files: [], serve: false, resultTypes: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--rules") out.rules.push(argv[++i]);
    else if (argv[i] === "--serve") out.serve = true;
    else if (argv[i] === "--result-types") out.resultTypes = true;
    else out.files.push(argv[i]);
  }
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const translate = makeTranslator(args.rules, { resultTypes: args.resultTypes });
  if (!args.serve) {
    const items = args.files.map((f) => ({ file: f, cql: fs.readFileSync(f, "utf8") }));
    writeReply(JSON.stringify({ results: translate(items) }));
    return;
  }
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let req;
    try {
      req = JSON.parse(line);
    } catch (err) {
      writeReply(JSON.stringify({ id: null, error: `request is not JSON: ${err.message}` }) + "\n");
      continue;
    }
    let reply;
    try {
      const [res] = translate([{ cql: req.cql, sources: req.sources }]);
      reply = { id: req.id, ...res };
    } catch (err) {
      reply = { id: req.id, error: String(err && err.stack || err) };
    }
    writeReply(JSON.stringify(reply) + "\n");
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    process.stderr.write(String(err && err.stack || err) + "\n");
    process.exit(1);
  });
}
