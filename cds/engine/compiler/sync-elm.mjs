// A synchronous copy of cql-execution's ELM node classes (lib/elm/*.js and lib/util/util.js),
// made mechanically at start from the installed, pinned package.
//
// Why: the compiled engine must give exactly the reference engine's answers, so it calls the
// reference engine's own operator code (Add, Overlaps, DurationBetween, As, Round, ...) instead
// of re-implementing it. That code is `async` in cql-execution 3.x only because a child node or
// a data source *might* return a promise; none of ours does. An async function always returns a
// promise, so to call an operator synchronously we need a copy of its code without the
// async/await keywords. The transform below is the whole difference:
//   `async ` before a function or method  -> removed
//   `await `                               -> removed
//   `Promise.all(x)`                       -> `x`   (the elements are already values)
// The copy requires the ORIGINAL datatypes, runtime and other util modules (so a DateTime or a
// Quantity made here is the very class the reference engine and the worker's encoder know);
// only lib/elm/* and lib/util/util.js (which holds asyncMergeSort and resolveValueSet) are copied.
//
// Safety: the transform is applied only to the reviewed upstream text: the package version must
// be PINNED_VERSION and the SHA-256 of the transformed sources must be PINNED_SHA256, otherwise
// `loadSyncElm` throws and the worker runs every library on the reference engine (logged at
// start). After an upgrade of cql-execution, review the diff of lib/elm and update both pins
// (`node cds/engine/compiler/sync-elm.mjs --print-pin` prints the new hash).
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import vm from "node:vm";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const PINNED_VERSION = "3.3.2";
export const PINNED_SHA256 = "7ce95a52623b3d34aa1b36d027f26423873519a1ae3152d6aead383d90e43aa2";

const PACKAGE_DIR = path.dirname(require.resolve("cql-execution/package.json"));
const LIB_DIR = path.join(PACKAGE_DIR, "lib");
const ELM_DIR = path.join(LIB_DIR, "elm");
const UTIL_FILE = path.join(LIB_DIR, "util", "util.js");

/** The transform (see the header); returns the new text and how many edits of each kind. */
export function desugar(text) {
  const counts = { async: 0, await: 0, promiseAll: 0 };
  let out = text.replace(/\basync\s+(?=function\b|\(|[A-Za-z_$][\w$]*\s*\()/g, () => {
    counts.async++;
    return "";
  });
  out = out.replace(/\bawait\s+/g, () => {
    counts.await++;
    return "";
  });
  out = out.replace(/\bPromise\.all\(/g, () => {
    counts.promiseAll++;
    return "__syncAll(";
  });
  const left = /\b(async|await|Promise)\b|\.then\(/.exec(out.replace(/\/\/.*$/gm, ""));
  if (left) throw new Error(`sync-elm: '${left[0]}' is left after the transform`);
  return { text: out, counts };
}

function isCopied(file) {
  return file === UTIL_FILE || (path.dirname(file) === ELM_DIR && file.endsWith(".js"));
}

function sourceFiles() {
  const files = fs.readdirSync(ELM_DIR).filter((f) => f.endsWith(".js")).sort().map((f) => path.join(ELM_DIR, f));
  return [...files, UTIL_FILE];
}

function transformedSources() {
  const out = new Map();
  for (const file of sourceFiles()) out.set(file, desugar(fs.readFileSync(file, "utf8")).text);
  return out;
}

export function sourceHash(sources = transformedSources()) {
  const h = crypto.createHash("sha256");
  for (const [file, text] of sources) {
    h.update(path.relative(LIB_DIR, file));
    h.update("\0");
    h.update(text);
    h.update("\0");
  }
  return h.digest("hex");
}

let loaded = null;

/**
 * The synchronous ELM classes: `{ E, build, jsonOf, instOf, Expression, util, list, version }`
 * where `E` holds every node class by ELM type name (like cql-execution's `elm/expressions`).
 * Throws when the installed package is not the pinned one.
 */
export function loadSyncElm() {
  if (loaded) return loaded;
  const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, "package.json"), "utf8"));
  if (pkg.version !== PINNED_VERSION) {
    throw new Error(`cql-execution ${pkg.version} is installed; the compiled engine was verified against ${PINNED_VERSION}`);
  }
  const sources = transformedSources();
  const hash = sourceHash(sources);
  if (hash !== PINNED_SHA256) {
    throw new Error(`cql-execution's lib/elm differs from the reviewed ${PINNED_VERSION} sources (sha256 ${hash})`);
  }
  const modules = new Map();
  const syncAll = (xs) => xs;
  function load(file) {
    let mod = modules.get(file);
    if (mod) return mod.exports;
    mod = { exports: {} };
    modules.set(file, mod);
    const dir = path.dirname(file);
    const localRequire = (spec) => {
      if (spec.startsWith(".")) {
        let target = path.resolve(dir, spec);
        if (!target.endsWith(".js")) target += ".js";
        if (isCopied(target)) return load(target);
        return require(target);
      }
      return require(spec);
    };
    const fn = vm.compileFunction(sources.get(file),
      ["exports", "require", "module", "__filename", "__dirname", "__syncAll"],
      { filename: `sync-elm:${path.relative(PACKAGE_DIR, file)}` });
    fn(mod.exports, localRequire, mod, file, dir, syncAll);
    return mod.exports;
  }
  const E = load(path.join(ELM_DIR, "expressions.js"));
  // Every node the copy builds is remembered with the ELM JSON it came from (the compiler
  // replaces an operator's child nodes by the compiled closures of their JSON). The builder
  // builds array elements through a local function: those are matched up here.
  const builderModule = load(path.join(ELM_DIR, "builder.js"));
  const plainBuild = builderModule.build;
  const jsonOf = new WeakMap();
  const instOf = new WeakMap();
  const record = (inst, json) => {
    if (inst && typeof inst === "object" && json && typeof json === "object") {
      jsonOf.set(inst, json);
      if (!instOf.has(json)) instOf.set(json, inst);
    }
  };
  builderModule.build = function build(json) {
    const out = plainBuild(json);
    if (Array.isArray(json) && Array.isArray(out)) out.forEach((inst, i) => record(inst, json[i]));
    else record(out, json);
    return out;
  };
  loaded = {
    E,
    build: builderModule.build,
    jsonOf,
    instOf,
    Expression: load(path.join(ELM_DIR, "expression.js")).Expression,
    util: load(UTIL_FILE),
    list: load(path.join(ELM_DIR, "list.js")),
    query: load(path.join(ELM_DIR, "query.js")),
    version: pkg.version,
    hash,
  };
  return loaded;
}

if (import.meta.url === `file://${process.argv[1]}` && process.argv.includes("--print-pin")) {
  process.stdout.write(`${sourceHash()}\n`);
}
