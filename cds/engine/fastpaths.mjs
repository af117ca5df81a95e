// Patches to cql-execution / cql-exec-fhir, applied once per worker: one correctness fix
// (retrieves over code-list defines, see retrieveCodeLists) and performance patches that keep
// the engine's results identical and only avoid repeated work. The conformance suite and every
// rule test run with them in place.
//
// Why: profiling a trial library on a 40-resource record showed most time in building FHIR
// wrapper objects (FHIRObject: a property per element of the type hierarchy, per instance) and
// in the garbage they leave. cql-exec-fhir builds a fresh wrapper on every retrieve and on
// every property read (`O.value`, `O.effective` ... read dozens of times by shared functions).
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const cqlfhir = require("cql-exec-fhir");

const CACHE = Symbol("trial-cds.cache");

function cacheOf(obj) {
  let cache = obj[CACHE];
  if (cache === undefined) {
    cache = new Map();
    Object.defineProperty(obj, CACHE, { value: cache, enumerable: false });
  }
  return cache;
}

let applied = false;

/**
 * Memoise, per wrapper instance, FHIRObject.get(path) (a pure function of the wrapped JSON),
 * and, per loaded bundle, Patient.findRecords(type) (so every retrieve of a type, in every
 * library evaluated for the same request, shares the same wrappers and their caches).
 */
export function applyFastPaths() {
  if (applied) return;
  applied = true;
  retrieveCodeLists();
  leanExecute();
  sharedLibraryContexts();
  distinctKeysForFhirObjects();
  memoisedOverloads();
  const source = cqlfhir.PatientSource.FHIRv401();
  source.loadBundles([{ resourceType: "Bundle", entry: [{ resource: { resourceType: "Patient", id: "probe" } }] }]);
  const patient = source.currentPatient();
  const PatientProto = Object.getPrototypeOf(patient);
  const FHIRObjectProto = Object.getPrototypeOf(PatientProto);

  const originalGet = FHIRObjectProto.get;
  FHIRObjectProto.get = function get(field) {
    const cache = cacheOf(this);
    if (cache.has(field)) return cache.get(field);
    const value = originalGet.call(this, field);
    cache.set(field, value);
    return value;
  };

  // The type hierarchy of a FHIR type never changes: build it once per type, not per check.
  const hierarchies = new WeakMap();
  const originalHierarchy = FHIRObjectProto._typeHierarchy;
  FHIRObjectProto._typeHierarchy = function _typeHierarchy() {
    const info = this.getTypeInfo();
    if (info == null) return originalHierarchy.call(this);
    let h = hierarchies.get(info);
    if (h === undefined) {
      h = originalHierarchy.call(this);
      hierarchies.set(info, h);
    }
    return h;
  };

  const byBundle = new WeakMap();
  const originalFind = PatientProto.findRecords;
  PatientProto.findRecords = function findRecords(profile, retrieveDetails) {
    if (this._patientSourceOptions && this._patientSourceOptions.requireProfileTagging) {
      return originalFind.call(this, profile, retrieveDetails);
    }
    let perType = byBundle.get(this._bundle);
    if (perType === undefined) {
      perType = new Map();
      byBundle.set(this._bundle, perType);
    }
    const key = retrieveDetails && retrieveDetails.datatype ? retrieveDetails.datatype : profile;
    let records = perType.get(key);
    if (records === undefined) {
      records = originalFind.call(this, profile, retrieveDetails);
      perType.set(key, records);
    }
    return records.slice();
  };
}

/**
 * CQL queries with `return` and list `union` are distinct by default, and cql-execution finds
 * duplicates by building an Immutable.js key of every element, walking every enumerable
 * property. For a FHIR wrapper that means walking (and wrapping) the whole resource, element by
 * element, for every element of every such list: the largest cost left after the patches
 * above. A FHIR object's value is its JSON, so its key is its type and its serialised JSON
 * (two wrappers of equal JSON stay equal, as CQL requires).
 */
function distinctKeysForFhirObjects() {
  const immutableUtil = require("cql-execution/lib/util/immutableUtil");
  const original = immutableUtil.toNormalizedKey;
  const texts = new WeakMap();
  immutableUtil.toNormalizedKey = function toNormalizedKey(js) {
    if (js !== null && typeof js === "object" && js._typeInfo !== undefined
        && Object.prototype.hasOwnProperty.call(js, "_json")) {
      const json = js._json;
      let text;
      if (json !== null && typeof json === "object") {
        text = texts.get(json);
        if (text === undefined) {
          text = JSON.stringify(json);
          texts.set(json, text);
        }
      } else {
        text = JSON.stringify(json);
      }
      return `FHIR.${js._typeInfo.name}:${text}`;
    }
    return original(js);
  };
}

/**
 * cql-execution picks among same-arity overloads at run time by testing each argument against
 * each overload's operand types. FHIRHelpers has 251 ToString overloads, so every implicit
 * FHIR-to-String conversion ran ~251 type checks. The choice depends only on the arguments'
 * runtime types, so it is remembered per call site and per argument types, when every
 * argument is a FHIR object, a primitive or null (lists and tuples are always re-checked).
 */
function memoisedOverloads() {
  const { FunctionRef } = require("cql-execution/lib/elm/reusable");
  const MEMO = Symbol("trial-cds.overloads");
  const typeKey = (v) => {
    if (v === null || v === undefined) return "null";
    const t = typeof v;
    if (t === "string" || t === "boolean" || t === "number") return t;
    if (t === "object" && v._typeInfo !== undefined && Object.prototype.hasOwnProperty.call(v, "_json")) {
      return `F:${v._typeInfo.name}`;
    }
    return undefined;
  };
  FunctionRef.prototype.exec = async function exec(ctx) {
    let functionDefs, childCtx;
    if (this.library) {
      const lib = ctx.get(this.library);
      functionDefs = lib ? lib.getFunction(this.name) : undefined;
      const libCtx = ctx.getLibraryContext(this.library);
      childCtx = libCtx ? libCtx.childContext() : undefined;
    } else {
      functionDefs = ctx.getFunction(this.name);
      childCtx = ctx.childContext();
    }
    const args = await this.execArgs(ctx);
    functionDefs = functionDefs.filter((f) => f.parameters.length === args.length);
    if (functionDefs.length > 1) {
      const keys = args.map(typeKey);
      const memoKey = keys.every((k) => k !== undefined) ? keys.join("|") : null;
      let memo = this[MEMO];
      const cached = memoKey !== null && memo !== undefined ? memo.get(memoKey) : undefined;
      if (cached !== undefined) {
        functionDefs = cached;
      } else {
        functionDefs = functionDefs.filter((f) => {
          for (let i = 0; i < args.length; i++) {
            if (args[i] === null) continue;
            let spec = f.parameters[i].operandTypeSpecifier;
            if (spec == null && f.parameters[i].operandType != null) {
              spec = { name: f.parameters[i].operandType, type: "NamedTypeSpecifier" };
            }
            if (!ctx.matchesTypeSpecifier(args[i], spec)) return false;
          }
          return true;
        });
        if (memoKey !== null) {
          if (memo === undefined) {
            memo = new Map();
            Object.defineProperty(this, MEMO, { value: memo, enumerable: false });
          }
          memo.set(memoKey, functionDefs);
        }
      }
    }
    if (functionDefs.length === 0) throw new Error("no function with matching signature could be found");
    const functionDef = functionDefs[functionDefs.length - 1];
    // CQL functions are pure and Now() is fixed for an evaluation, so within one patient's
    // evaluation the same function on the same arguments (by identity: results of defines are
    // cached objects) gives the same value. Shared functions such as "Latest"(obs) are called
    // by many criteria with the same list; compute each once.
    const root = ctx.rootContext();
    let results = root[RESULTS];
    if (results === undefined) {
      results = new Map();
      Object.defineProperty(root, RESULTS, { value: results, enumerable: false });
    }
    const key = callKey(functionDef, args);
    if (key !== null && results.has(key)) return results.get(key);
    for (let i = 0; i < functionDef.parameters.length; i++) childCtx.set(functionDef.parameters[i].name, args[i]);
    const value = await functionDef.expression.execute(childCtx);
    if (key !== null) results.set(key, value);
    return value;
  };
}

const RESULTS = Symbol("trial-cds.function-results");
const ids = new WeakMap();
let nextId = 1;
function identity(obj) {
  let id = ids.get(obj);
  if (id === undefined) {
    id = nextId++;
    ids.set(obj, id);
  }
  return id;
}

/** A key for (function, arguments): primitives by value, objects by identity. */
function callKey(functionDef, args) {
  let key = `f${identity(functionDef)}`;
  for (const a of args) {
    if (a === null || a === undefined) key += "|n";
    else if (typeof a === "object") key += `|o${identity(a)}`;
    else if (typeof a === "string") key += `|s${a.length}:${a}`;
    else if (typeof a === "number" || typeof a === "boolean") key += `|${typeof a === "number" ? "d" : "b"}${a}`;
    else return null;
  }
  return key;
}

// Code filter of a retrieve, replacing cql-execution's Retrieve.recordMatchesCodesOrVS:
// - `[Observation: "Some Codes"]` where "Some Codes" is a List<Code> define: the translator
//   cannot resolve a membership operator for it and emits `ToList(<the list>)`, so the engine
//   gets a list of lists and fails with "c.hasMatch is not a function". The meaning is "any of
//   these codes": flatten before matching.
// - The original reads the record's code once per code of the list (`codes.some(c =>
//   c.hasMatch(record.getCode(...)))`), and in cql-exec-fhir each read builds new FHIR wrapper
//   objects: with code lists that was most of the evaluation time. Read it once per record.
function retrieveCodeLists() {
  const { Retrieve } = require("cql-execution/lib/elm/external");
  Retrieve.prototype.recordMatchesCodesOrVS = function (record, codes) {
    const recordCode = record.getCode(this.codeProperty);
    if (Array.isArray(codes)) return codes.flat(Infinity).some((c) => c.hasMatch(recordCode));
    return codes.hasMatch(recordCode);
  };
}

/**
 * Every ELM node's execute() awaited its exec() inside a try/catch and recorded its result by
 * localId (for annotated-source views, which the service never reads). Per node that is an
 * extra promise and map write; over ~10^4-10^5 nodes per patient it was ~13% of the time.
 * Nodes now return exec() directly; a runtime error is still annotated (library, define and
 * locator) where the define that failed is executed. The worker also drops localIds at load.
 */
function leanExecute() {
  const { Expression } = require("cql-execution/lib/elm/expression");
  const { ExpressionDef } = require("cql-execution/lib/elm/reusable");
  const annotated = Expression.prototype.execute;
  Expression.prototype.execute = function execute(ctx) {
    return this.exec(ctx);
  };
  ExpressionDef.prototype.execute = annotated;
}

/** Remove localIds from ELM (see leanExecute); returns the same object. */
export function dropLocalIds(node) {
  if (Array.isArray(node)) {
    for (const item of node) dropLocalIds(item);
  } else if (node !== null && typeof node === "object") {
    delete node.localId;
    for (const value of Object.values(node)) {
      if (value !== null && typeof value === "object") dropLocalIds(value);
    }
  }
  return node;
}

/**
 * One patient's evaluation runs several trial libraries, each with its own root context, and
 * each would evaluate the shared libraries they include (SLECommon, FHIRHelpers) again. Inside
 * `shareIncludedLibraries(fn)`, the context of an included library is shared by every library
 * evaluated (keyed by the included library's name and version): its defines are computed once
 * per patient. Safe because all libraries of one call see the same patient, the same
 * evaluation time and no per-library parameters for the included library.
 */
let sharedContexts = null;

export async function shareIncludedLibraries(fn) {
  const previous = sharedContexts;
  sharedContexts = new Map();
  try {
    return await fn();
  } finally {
    sharedContexts = previous;
  }
}

function sharedLibraryContexts() {
  const contextModule = require("cql-execution/lib/runtime/context");
  const { PatientContext } = contextModule;
  PatientContext.prototype.getLibraryContext = function getLibraryContext(alias) {
    let ctx = this.library_context[alias];
    if (ctx == null) {
      const library = this.get(alias);
      const id = library && library.source && library.source.library && library.source.library.identifier;
      const key = id ? `${id.id}|${id.version || ""}` : null;
      const params = this.parameters && Object.keys(this.parameters).length ? this.parameters : null;
      if (sharedContexts !== null && key !== null && params === null) {
        ctx = sharedContexts.get(key);
        if (ctx === undefined) {
          ctx = new PatientContext(library, this.patient, this.codeService, this.parameters, this.executionDateTime, this.messageListener);
          sharedContexts.set(key, ctx);
        }
      } else {
        ctx = new PatientContext(library, this.patient, this.codeService, this.parameters, this.executionDateTime, this.messageListener);
      }
      this.library_context[alias] = ctx;
    }
    return ctx;
  };
}
