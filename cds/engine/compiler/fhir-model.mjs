// cql-exec-fhir's FHIR data model (lib/fhir.js: PatientSource, FHIRObject, its `get` with
// choice types, primitives with extensions and System conversions), as the compiled engine
// uses it: a copy of the pinned file in which FHIR objects are built by a faster factory.
//
// Why: building a FHIRObject is the largest cost left in an evaluation. Its constructor walks
// the type's hierarchy (a model lookup per level) and defines one getter per element (~30 for
// an Observation) with Object.defineProperty, ~30 us per object; the compiled engine reads a
// patient's record through hundreds of them. The factory makes exactly the same object (same
// prototype, the same non-enumerable _json/_typeInfo/_modelInfo, the same enumerable getters
// `get() { return this.get(name) }` in the same order, none configurable), with the element
// names found once per type and the property definitions unrolled into one function per type:
// ~4 us. The model's lookups (`modelInfo.findClass(name)`, `typeInfo.findElement(name, ...)`,
// pure functions of a loaded model: string edits and map probes on every property read) are
// remembered. Nothing else in the file changes: the edits are `new FHIRObject(` -> the factory
// and `X.findClass(` / `X.findElement(` -> their remembered versions, each counted.
//
// The reference engine keeps the original module (and its patches); this copy is independent
// of them. Like sync-elm.mjs, the copy is made only from the reviewed text: the package version
// and the file's SHA-256 must be the pinned ones, else loading throws and the worker runs
// every library on the reference engine.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import vm from "node:vm";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const PINNED_VERSION = "2.2.0";
export const PINNED_SHA256 = "3c9b1f87850f266689e087cceece89b5d90e8926123e541ec8fe4b89c9921a5c";

const PACKAGE_DIR = path.dirname(require.resolve("cql-exec-fhir/package.json"));
const FILE = path.join(PACKAGE_DIR, "lib", "fhir.js");

let loaded = null;

/** `{ PatientSource, FHIRObject }` of the copy. */
export function loadFhirModel() {
  if (loaded) return loaded;
  const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, "package.json"), "utf8"));
  if (pkg.version !== PINNED_VERSION) {
    throw new Error(`cql-exec-fhir ${pkg.version} is installed; the compiled engine was verified against ${PINNED_VERSION}`);
  }
  const original = fs.readFileSync(FILE, "utf8");
  const sha = crypto.createHash("sha256").update(original).digest("hex");
  if (sha !== PINNED_SHA256) throw new Error(`cql-exec-fhir ${pkg.version} lib/fhir.js is not the reviewed text (sha256 ${sha})`);
  const counts = { construct: 0, findClass: 0, findElement: 0 };
  const text = original
    .replace(/\bnew FHIRObject\(/g, () => {
      counts.construct++;
      return "__newFHIRObject(FHIRObject, ";
    })
    .replace(/([\w$.]+)\.findClass\(/g, (_, target) => {
      counts.findClass++;
      return `__findClass(${target}, `;
    })
    .replace(/([\w$.]+)\.findElement\(/g, (_, target) => {
      counts.findElement++;
      return `__findElement(${target}, `;
    }) + "\nmodule.exports.FHIRObject = FHIRObject;\n";
  const expected = { construct: 3, findClass: 7, findElement: 2 };
  for (const [kind, n] of Object.entries(expected)) {
    if (counts[kind] !== n) throw new Error(`fhir-model: expected ${n} ${kind} edits in lib/fhir.js, made ${counts[kind]}`);
  }
  const mod = { exports: {} };
  const dir = path.dirname(FILE);
  const localRequire = (spec) => require(spec.startsWith(".") ? path.resolve(dir, spec) : spec);
  const fn = vm.compileFunction(text,
    ["exports", "require", "module", "__filename", "__dirname", "__newFHIRObject", "__findClass", "__findElement"],
    { filename: "fhir-model:cql-exec-fhir/lib/fhir.js" });
  fn(mod.exports, localRequire, mod, FILE, dir, newFHIRObject, findClass, findElement);
  loaded = { PatientSource: mod.exports.PatientSource, FHIRObject: mod.exports.FHIRObject };
  return loaded;
}

const classes = new WeakMap();
const elements = new WeakMap();

/** modelInfo.findClass(name), remembered per model (a model never changes once loaded). */
function findClass(modelInfo, name) {
  let byName = classes.get(modelInfo);
  if (byName === undefined) {
    byName = new Map();
    classes.set(modelInfo, byName);
  }
  let found = byName.get(name);
  if (found === undefined && !byName.has(name)) {
    found = modelInfo.findClass(name);
    byName.set(name, found);
  }
  return found;
}

/** typeInfo.findElement(name, explicitChoice), remembered per type. */
function findElement(typeInfo, name, explicitChoice = false) {
  let byName = elements.get(typeInfo);
  if (byName === undefined) {
    byName = new Map();
    elements.set(typeInfo, byName);
  }
  const key = explicitChoice ? `+${name}` : `-${name}`;
  let found = byName.get(key);
  if (found === undefined && !byName.has(key)) {
    found = typeInfo.findElement(name, explicitChoice);
    byName.set(key, found);
  }
  return found;
}

const constructors = new WeakMap();

/** `new FHIRObject(json, typeInfo, modelInfo)`, made by a constructor built once per type. */
function newFHIRObject(FHIRObject, json, typeInfo, modelInfo) {
  if (typeInfo == null) return new FHIRObject(json, typeInfo, modelInfo); // logs, as the original does
  let Make = constructors.get(typeInfo);
  if (Make === undefined) {
    Make = constructorFor(FHIRObject, typeInfo, modelInfo);
    constructors.set(typeInfo, Make);
  }
  return new Make(json, typeInfo, modelInfo);
}

function constructorFor(FHIRObject, typeInfo, modelInfo) {
  // The element names, in the order the original constructor defines them.
  const names = new Set();
  for (let info = typeInfo; info != null;) {
    info.elements.forEach((e) => names.add(e.name));
    info = info.baseTypeSpecifier != null ? modelInfo.findClass(info.baseTypeSpecifier.fqn) : null;
  }
  const getters = {};
  for (const name of names) {
    getters[name] = { get: function get() { return this.get(name); }, enumerable: true };
  }
  const body = [
    "Object.defineProperties(this, { _json: { value: json, enumerable: false },",
    "  _typeInfo: { value: typeInfo, enumerable: false }, _modelInfo: { value: modelInfo, enumerable: false } });",
    ...[...names].map((name) => `Object.defineProperty(this, ${JSON.stringify(name)}, G[${JSON.stringify(name)}]);`),
  ].join("\n");
  const Make = new Function("G", `return function FHIRObject(json, typeInfo, modelInfo) {\n${body}\n};`)(getters);
  Make.prototype = FHIRObject.prototype;
  return Make;
}
