// Engine patch (performance): remembered overload choice and function results.
// Replaces: cql-execution 3.3.2, lib/elm/reusable.js, FunctionRef.prototype.exec.
//
// cql-execution picks among same-arity overloads at run time by testing each argument against
// each overload's operand types. FHIRHelpers has 251 ToString overloads, so every implicit
// FHIR-to-String conversion ran ~251 type checks. The choice depends only on the arguments'
// runtime types, so it is remembered per call site and per argument types, when every
// argument is a FHIR object, a primitive or null (lists and tuples are always re-checked).
// Numbers are keyed as integral or not, since Integer and Decimal operands test differently.
//
// CQL functions are pure and Now() is fixed for an evaluation, so within one patient's
// evaluation the same function on the same arguments (by identity: results of defines are
// cached objects) gives the same value: shared functions such as "Latest"(obs), called by many
// criteria with the same list, are computed once.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const name = "overload-memo";
export const kind = "performance";
export const targets = [{
  package: "cql-execution", version: "3.3.2", file: "lib/elm/reusable.js",
  sha256: "8299f7912751ba972c98e78ceb59f30d502ae0cbc375f8905608c1a0245c540c",
}];

const MEMO = Symbol("trial-cds.overloads");
const RESULTS = Symbol("trial-cds.function-results");

function typeKey(v) {
  if (v === null) return "null";
  if (v === undefined) return "undefined";
  const t = typeof v;
  if (t === "number") return Math.floor(v) === v ? "integral" : "fractional";
  if (t === "string" || t === "boolean") return t;
  if (t === "object" && v._typeInfo !== undefined && Object.prototype.hasOwnProperty.call(v, "_json")) {
    return `F:${v._typeInfo.name}`;
  }
  return undefined;
}

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
    if (a === null) key += "|n";
    else if (a === undefined) key += "|u";
    else if (typeof a === "object") key += `|o${identity(a)}`;
    else if (typeof a === "string") key += `|s${a.length}:${a}`;
    else if (typeof a === "number" || typeof a === "boolean") key += `|${typeof a === "number" ? "d" : "b"}${a}`;
    else return null;
  }
  return key;
}

export function apply() {
  const { FunctionRef } = require("cql-execution/lib/elm/reusable");
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
