// ELM -> synchronous JavaScript closures, once per library at load.
//
// Every ELM expression becomes a closure `(scope) => value`. What the reference engine decides
// at run time by walking its tree — which define or function a name means, which variable slot
// an alias lives in, which library a qualified name points to, which code system a code is in —
// is decided here, once. What an operator *computes* is not re-implemented: an operator node
// becomes an instance of the reference engine's own class (from the synchronous copy of
// cql-execution's lib/elm, see sync-elm.mjs) whose child nodes are replaced by the compiled
// closures of the children, so Add, Overlaps, DurationBetween, ToQuantity, Round ... run the
// reference engine's code on the reference engine's datatypes.
//
// Compiled here (the nodes that talk to the reference engine's Context): references to
// defines, functions, operands, aliases, lets, parameters, code systems, codes, concepts and
// value sets; Property, Query (with/without, let, where, return, aggregate, sort), Retrieve;
// the DateTime/Date selectors and the conversions that rebuild nodes at run time.
//
// Where the reference engine's answer depends on its dynamic chain of contexts (a define
// whose name is also an alias or operand name in the library, an alias bound to `undefined`),
// the compiler refuses the library (`Unsupported`) or the closure raises `Divergence` at run
// time; either way the reference engine answers instead. Never a guess.
import { createRequire } from "node:module";

import { loadSyncElm } from "./sync-elm.mjs";
import { Divergence, EMPTY, Scope, UNSET, Unsupported } from "./runtime.mjs";
import { propertyOf } from "./fhir.mjs";
import { makeToDistinctList } from "./distinct.mjs";

const require = createRequire(import.meta.url);
const dt = require("cql-execution/lib/datatypes/datatypes");
const { Exception } = require("cql-execution/lib/datatypes/exception");

const SYSTEM = "{urn:hl7-org:elm-types:r1}";

// Context members the reference engine's operator code may call on the scope it is given.
const SCOPE_MEMBERS = new Set(["getExecutionDateTime", "getTimezoneOffset", "matchesTypeSpecifier",
  "getMessageListener", "codeService"]);

// ELM node types compiled by this module (everything else is an operator run by the reference
// engine's own class, when that class only asks its context for SCOPE_MEMBERS).
const CONVERTS_TO = {
  ConvertsToBoolean: "ToBoolean", ConvertsToDate: "ToDate", ConvertsToDateTime: "ToDateTime",
  ConvertsToDecimal: "ToDecimal", ConvertsToInteger: "ToInteger", ConvertsToQuantity: "ToQuantity",
  ConvertsToRatio: "ToRatio", ConvertsToString: "ToString", ConvertsToTime: "ToTime",
};
const CONVERT_TO = {
  Boolean: "ToBoolean", Concept: "ToConcept", Decimal: "ToDecimal", Integer: "ToInteger", String: "ToString",
  Quantity: "ToQuantity", DateTime: "ToDateTime", Date: "ToDate", Time: "ToTime",
};

let sync = null;
let operatorSafety = null;

/**
 * An ELM node the reference engine has no class for (HighBoundary, ProperIn, Descendents ...):
 * its builder makes `null` of it, and what that null then does depends on where it sits (a
 * define of it is undefined, a Property of it is null, a where clause of it filters nothing, an
 * operand of it fails when executed). The compiler reproduces each of those, not the meaning
 * the ELM node has in CQL: the reference engine is the oracle.
 */
function isNullNode(json) {
  return json != null && json.type !== "FunctionRef" && json.type !== "Literal" && typeof sync.E[json.type] !== "function";
}

const EXECUTE_NULL = new TypeError("Cannot read properties of null (reading 'execute')");

/** Which operator classes may run with a Scope as their context (see SCOPE_MEMBERS). */
function operatorIsSafe(type) {
  if (operatorSafety === null) operatorSafety = new Map();
  let safe = operatorSafety.get(type);
  if (safe !== undefined) return safe;
  const cls = sync.E[type];
  safe = typeof cls === "function";
  if (safe) {
    const sources = [];
    // The base class's execute() (error annotation, localId results) is never called on a
    // compiled operator: its exec() is, and its children are compiled closures.
    for (let proto = cls.prototype; proto && proto !== sync.Expression.prototype; proto = Object.getPrototypeOf(proto)) {
      for (const key of Object.getOwnPropertyNames(proto)) {
        const d = Object.getOwnPropertyDescriptor(proto, key);
        if (typeof d.value === "function" && key !== "constructor") sources.push(d.value.toString());
      }
    }
    const used = new Set();
    for (const src of sources) for (const m of src.matchAll(/\bctx\.([A-Za-z_$][\w$]*)/g)) used.add(m[1]);
    safe = [...used].every((m) => SCOPE_MEMBERS.has(m));
  }
  operatorSafety.set(type, safe);
  return safe;
}

// -- library structure ------------------------------------------------------------------------

function defs(lib, section) {
  return (lib.library[section] && lib.library[section].def) || [];
}

/** Static facts about one library, as the reference engine's Library object holds them. */
class LibraryInfo {
  constructor(elm, index) {
    const id = elm.library.identifier || {};
    this.elm = elm;
    this.index = index;
    this.name = id.id;
    this.version = id.version;
    this.includes = new Map(defs(elm, "includes").map((d) => [d.localIdentifier, { path: d.path, version: d.version }]));
    this.codesystems = new Map(defs(elm, "codeSystems").map((d) => [d.name, d]));
    this.valuesets = new Map(defs(elm, "valueSets").map((d) => [d.name, d]));
    this.codes = new Map(defs(elm, "codes").map((d) => [d.name, d]));
    this.concepts = new Map(defs(elm, "concepts").map((d) => [d.name, d]));
    this.parameters = new Map(defs(elm, "parameters").map((d) => [d.name, d]));
    this.defines = new Map();
    this.functions = new Map();
    for (const d of defs(elm, "statements")) {
      if (d.type === "FunctionDef") {
        if (!this.functions.has(d.name)) this.functions.set(d.name, []);
        this.functions.get(d.name).push({ json: d, lib: this, body: null, compiling: false, id: -1, memo: true });
      } else {
        this.defines.set(d.name, { json: d, lib: this, index: this.defines.size, fn: null, compiling: false });
      }
    }
    this.defineCount = this.defines.size;
    this.include = new Map(); // alias -> LibraryInfo, filled by the program
  }

  /** Names the reference engine may find in its chain of contexts before a define's. */
  localNames() {
    if (this._local) return this._local;
    const names = new Set();
    const walk = (node) => {
      if (Array.isArray(node)) {
        for (const n of node) walk(n);
      } else if (node && typeof node === "object") {
        if (node.alias && (node.expression || node.suchThat)) names.add(node.alias);
        if (node.identifier && node.expression && !node.type) names.add(node.identifier);
        if (node.type === "FunctionDef") for (const op of node.operand || []) names.add(op.name);
        for (const v of Object.values(node)) if (v && typeof v === "object") walk(v);
      }
    };
    walk(this.elm.library.statements);
    this._local = names;
    return names;
  }
}

// -- compile-time environment -----------------------------------------------------------------

/** Lexical frames; each matches one Scope object at run time. */
class Env {
  constructor(parent, names, { barrier = false } = {}) {
    this.parent = parent;
    this.names = names;
    this.barrier = barrier; // a function body: nothing outside is visible
  }

  lookup(name) {
    let hops = 0;
    for (let env = this; env; env = env.parent) {
      const i = env.names.lastIndexOf(name);
      if (i >= 0) return { hops, index: i };
      if (env.barrier) break;
      hops++;
    }
    return null;
  }
}

function slotReader(hops, index, what) {
  const diverge = () => {
    throw new Divergence(`${what} is bound to undefined (the reference engine would look further up)`);
  };
  switch (hops) {
    case 0:
      return (s) => {
        const v = s.v[index];
        return v === undefined ? diverge() : v;
      };
    case 1:
      return (s) => {
        const v = s.p.v[index];
        return v === undefined ? diverge() : v;
      };
    default:
      return (s) => {
        let x = s;
        for (let i = 0; i < hops; i++) x = x.p;
        const v = x.v[index];
        return v === undefined ? diverge() : v;
      };
  }
}

// -- the program ------------------------------------------------------------------------------

/**
 * Every loaded library, compiled. `libraries[name]` is a CompiledLibrary or absent when that
 * library (or one it includes) runs on the reference engine; `problems[name]` says why.
 */
export class Program {
  constructor(elmByName) {
    if (sync === null) {
      sync = loadSyncElm();
      // Query, Union, Except, Intersect and Distinct of the copy all call this export.
      sync.list.toDistinctList = makeToDistinctList(sync.list.toDistinctList);
    }
    this.libraries = [];
    this.byName = new Map();
    for (const [name, elm] of Object.entries(elmByName)) {
      const info = new LibraryInfo(elm, this.libraries.length);
      this.libraries.push(info);
      this.byName.set(name, info);
    }
    for (const info of this.libraries) {
      for (const [alias, inc] of info.includes) {
        const target = this.byName.get(inc.path);
        if (target) info.include.set(alias, target);
      }
    }
    this.problems = new Map();
    this.compiled = new Map();
    // Each CQL function gets a number: an evaluation keeps its results in an array by it.
    this.functionCount = 0;
    for (const info of this.libraries) {
      for (const overloads of info.functions.values()) for (const f of overloads) f.id = this.functionCount++;
    }
    this.jsonOf = sync.jsonOf;
    this.instOf = sync.instOf;
    this.build = sync.build;
    this.prepared = new WeakSet();
    const started = process.hrtime.bigint();
    for (const info of this.libraries) this._compileLibrary(info);
    this.compileMs = Number(process.hrtime.bigint() - started) / 1e6;
    // A library runs compiled only when everything it includes does.
    let changed = true;
    while (changed) {
      changed = false;
      for (const info of this.libraries) {
        if (this.problems.has(info.name)) continue;
        for (const [alias, inc] of info.includes) {
          const target = info.include.get(alias);
          const why = !target ? `includes ${inc.path}, which is not loaded`
            : this.problems.has(target.name) ? `includes ${target.name}, which runs on the reference engine` : null;
          if (why) {
            this.problems.set(info.name, [why]);
            changed = true;
            break;
          }
        }
      }
    }
  }

  isCompiled(name) {
    return this.byName.has(name) && !this.problems.has(name);
  }

  _compileLibrary(info) {
    const problems = [];
    try {
      for (const def of info.defines.values()) this.defineFn(def);
      for (const overloads of info.functions.values()) for (const f of overloads) this.functionBody(f);
    } catch (err) {
      if (!(err instanceof Unsupported)) throw err;
      problems.push(err.message);
    }
    if (problems.length) this.problems.set(info.name, problems);
  }

  defineFn(def) {
    if (def.fn) return def.fn;
    if (def.compiling) return null; // a cycle: resolved lazily through def.fn at run time
    def.compiling = true;
    const expr = def.json.expression;
    const c = new Compiler(this, def.lib);
    def.fn = expr == null || isNullNode(expr) ? () => undefined : c.compile(expr, new Env(null, []));
    def.compiling = false;
    return def.fn;
  }

  functionBody(f) {
    if (f.body) return f.body;
    if (f.compiling) return null;
    f.compiling = true;
    const names = (f.json.operand || []).map((op) => op.name);
    const c = new Compiler(this, f.lib);
    const expr = f.json.expression;
    if (f.json.external) throw new Unsupported(`function ${f.json.name} is external`);
    f.body = expr == null ? () => undefined : c.compile(expr, new Env(null, names, { barrier: true }));
    // Remembering a result costs a map entry; for a small body with no query, call or
    // reference in it (FHIRHelpers' conversions: `value.value`), computing it again is cheaper.
    f.memo = expr != null && !isSmall(expr);
    f.compiling = false;
    return f.body;
  }
}

// -- the compiler -----------------------------------------------------------------------------

/**
 * What an operator sees in place of a child node: `execute(ctx)` / `exec(ctx)` run the compiled
 * closure. One shape for every child (the operators' calls to it stay monomorphic); the only
 * other field the reference's operators read from a child node (Interval, and the Start/End
 * of an interval, read `asTypeSpecifier`) is forwarded to the node it replaces.
 */
class Thunk {
  constructor(node, fn) {
    this.execute = fn;
    this.exec = fn;
    this.node = node;
  }

  get asTypeSpecifier() {
    return this.node.asTypeSpecifier;
  }
}

function thunkOf(inst, fn) {
  return new Thunk(inst, fn);
}

function constant(value) {
  return () => value;
}

function failing(error) {
  return () => {
    throw error;
  };
}

class Compiler {
  constructor(program, lib) {
    this.program = program;
    this.lib = lib;
  }

  /** `inst`: the node the parent operator already built from `json`, if any. */
  compile(json, env, inst = null) {
    if (json == null) throw new Unsupported("an expression is missing");
    const type = json.type;
    const method = this[`c${type}`];
    if (method) return method.call(this, json, env);
    if (CONVERTS_TO[type]) return this.convertsTo(json, env, CONVERTS_TO[type]);
    if (isNullNode(json)) return failing(EXECUTE_NULL); // see isNullNode
    return this.operator(json, env, inst);
  }

  /** A child the reference engine reads as absent when its builder makes null of it. */
  optional(json, env) {
    return json == null || isNullNode(json) ? null : this.compile(json, env);
  }

  /** An operator: the reference engine's class, its children replaced by compiled closures. */
  operator(json, env, inst = null) {
    const type = json.type;
    if (!sync.E[type] || !operatorIsSafe(type)) {
      throw new Unsupported(`ELM ${type} is not supported by the compiled engine`);
    }
    const prepared = this.program.prepared;
    if (!inst || prepared.has(inst)) {
      inst = this.program.instOf.get(json);
      if (!inst || prepared.has(inst)) inst = this.program.build(json);
    }
    if (!inst) throw new Unsupported(`ELM ${type} could not be built`);
    prepared.add(inst);
    this.replaceChildren(inst, json, env, new Set());
    return inst.exec.bind(inst);
  }

  replaceChildren(holder, json, env, seen) {
    if (seen.has(holder)) return;
    seen.add(holder);
    for (const key of Object.keys(holder)) {
      const value = holder[key];
      if (value === null || typeof value !== "object") continue;
      if (value instanceof Thunk) continue;
      if (value instanceof sync.Expression) {
        holder[key] = this.childThunk(value, key, json, env);
      } else if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          const item = value[i];
          if (item instanceof Thunk) continue;
          if (item instanceof sync.Expression) value[i] = this.childThunk(item, key, json, env);
          else if (item && typeof item === "object" && isHolder(item)) this.replaceChildren(item, json, env, seen);
        }
      } else if (isHolder(value)) {
        this.replaceChildren(value, json, env, seen);
      }
    }
  }

  childThunk(inst, key, parentJson, env) {
    let json = this.program.jsonOf.get(inst);
    if (json === undefined && key === "valueset" && parentJson.valueset) {
      json = { ...parentJson.valueset, type: "ValueSetRef" }; // InValueSet / AnyInValueSet
    }
    if (json === undefined) throw new Unsupported(`ELM ${parentJson.type}.${key} is built in a way the compiler does not follow`);
    return thunkOf(inst, this.compile(json, env, inst));
  }

  // -- literals and selectors ---------------------------------------------------------------

  cLiteral(json) {
    const inst = sync.E.Literal.from(json);
    return constant(inst.exec(null));
  }

  cNull() {
    return constant(null);
  }

  // A Quantity literal (`90 days`) makes a new Quantity at each evaluation in the reference;
  // made once here, the same object keeps every call of a function on it one memo entry.
  // Quantity values are never modified in place by the engine's operators.
  cQuantity(json) {
    const inst = sync.E.Quantity ? new sync.E.Quantity(json) : null;
    if (!inst) throw new Unsupported("Quantity literal");
    return constant(inst.exec(null));
  }

  cList(json, env) {
    const fns = (json.element || []).map((e) => this.compile(e, env));
    const n = fns.length;
    if (n === 0) return () => [];
    return (s) => {
      const out = new Array(n);
      for (let i = 0; i < n; i++) out[i] = fns[i](s);
      return out;
    };
  }

  cTuple(json, env) {
    const els = (json.element || []).map((el) => ({ name: el.name, fn: this.optional(el.value, env) }));
    return (s) => {
      const val = {};
      for (const el of els) val[el.name] = el.fn !== null ? el.fn(s) : undefined;
      return val;
    };
  }

  // DateTime and Date selectors build their children from JSON at every execution in the
  // reference engine (elm/datetime.js); compiled once here, same arguments in the same order.
  cDateTime(json, env) {
    const props = ["year", "month", "day", "hour", "minute", "second", "millisecond", "timezoneOffset"];
    const fns = props.map((p) => this.optional(json[p], env));
    const tzGiven = json.timezoneOffset != null; // a node of it, even one built as null
    return (s) => {
      const args = new Array(8);
      for (let i = 0; i < 7; i++) args[i] = fns[i] !== null ? fns[i](s) : undefined;
      if (tzGiven) {
        args[7] = fns[7] !== null ? fns[7](s) : undefined;
      } else {
        const offset = s.getTimezoneOffset();
        if (offset == null) throw new Divergence("DateTime selector without an offset and no execution offset");
        args[7] = parseInt(offset, 10); // as the reference's Integer literal of the offset
      }
      return new dt.DateTime(...args);
    };
  }

  cDate(json, env) {
    const fns = ["year", "month", "day"].map((p) => this.optional(json[p], env));
    return (s) => new dt.Date(...fns.map((f) => (f !== null ? f(s) : undefined)));
  }

  cConvert(json, env) {
    const to = json.toType && json.toType.startsWith(SYSTEM) ? CONVERT_TO[json.toType.slice(SYSTEM.length)] : undefined;
    if (to) return this.operator({ type: to, operand: json.operand }, env);
    if (json.operand == null) return () => null;
    return this.compile(json.operand, env);
  }

  // Date and time arithmetic: the reference's operators, each result remembered by the values
  // of its two operands. DurationBetween / DifferenceBetween (two points) and Add / Subtract of
  // a quantity to a point go through Luxon (15-60 us each), and the same operands recur
  // (`Now() - 90 days` for every observation of every criterion, the same course dates in
  // several trials). The key is every field of both operands (a DateTime, a Date or a Quantity
  // holds nothing else), and the operators are pure functions of those fields, so a remembered
  // result is the result they would compute.
  cDurationBetween(json, env) {
    return this.rememberedBinary(json, env, pointKey, pointKey);
  }

  cDifferenceBetween(json, env) {
    return this.rememberedBinary(json, env, pointKey, pointKey);
  }

  cAdd(json, env) {
    return this.rememberedBinary(json, env, pointKey, quantityKey);
  }

  cSubtract(json, env) {
    return this.rememberedBinary(json, env, pointKey, quantityKey);
  }

  rememberedBinary(json, env, leftKey, rightKey) {
    if (!Array.isArray(json.operand) || json.operand.length !== 2 || json.operand.some(isNullNode)) {
      return this.operator(json, env);
    }
    const [left, right] = json.operand.map((o) => this.compile(o, env));
    const slot = [undefined, undefined];
    const inst = this.program.build({ ...json, operand: [{ type: "Null" }, { type: "Null" }] });
    this.program.prepared.add(inst);
    inst.args = [new Thunk(inst.args[0], () => slot[0]), new Thunk(inst.args[1], () => slot[1])];
    const tag = `${json.type}|${json.precision}|`;
    const run = (s, a, b) => {
      slot[0] = a;
      slot[1] = b;
      return inst.exec(s);
    };
    return (s) => {
      const a = left(s);
      const b = right(s);
      const ka = leftKey(a);
      const kb = ka === null ? null : rightKey(b);
      if (kb === null) return run(s, a, b);
      const key = tag + ka + "|" + kb;
      let v = REMEMBERED.get(key);
      if (v === undefined && !REMEMBERED.has(key)) {
        v = run(s, a, b);
        if (REMEMBERED.size >= 50000) REMEMBERED.clear();
        REMEMBERED.set(key, v);
      }
      return v;
    };
  }

  /** ConvertsToX evaluates its operand, then converts a second evaluation of it, catching errors. */
  convertsTo(json, env, to) {
    const operand = this.compile(json.operand, env);
    const conversion = this.operator({ type: to, operand: json.operand }, env);
    return (s) => {
      if (operand(s) === null) return null;
      try {
        return conversion(s) != null;
      } catch (err) {
        if (err instanceof Divergence) throw err;
        return false;
      }
    };
  }

  // -- references ---------------------------------------------------------------------------

  /** The library a qualified name points to (`libraryName` is a local include alias). */
  target(libraryName, what) {
    if (!libraryName) return this.lib;
    const local = this.lib.localNames();
    if (local.has(libraryName) || this.lib.defines.has(libraryName)) {
      throw new Unsupported(`${this.lib.name}: the include alias ${libraryName} is also a local name`);
    }
    const t = this.lib.include.get(libraryName);
    if (!t) throw new Unsupported(`${this.lib.name}: ${what} in unknown library ${libraryName}`);
    return t;
  }

  cExpressionRef(json) {
    const qualified = Boolean(json.libraryName);
    const lib = this.target(json.libraryName, `define ${json.name}`);
    if (!qualified && this.lib.localNames().has(json.name)) {
      throw new Unsupported(`${this.lib.name}: define "${json.name}" shares its name with an alias or operand`);
    }
    const def = lib.defines.get(json.name);
    if (!def) throw new Unsupported(`${this.lib.name}: no define ${json.name} in ${lib.name}`);
    this.program.defineFn(def);
    const libIndex = lib.index;
    const defIndex = def.index;
    const name = def.json.name;
    const patientLevel = def.json.context !== "Unfiltered";
    return (s) => {
      const ev = s.ev;
      if (ev.unfiltered) {
        if (qualified) throw new Exception("Library expressions are not currently supported in Unfiltered Context");
        if (patientLevel) return ev.patientResults.map((pr) => pr[name]);
      }
      const values = ev.values[libIndex];
      let v = values[defIndex];
      if (v === UNSET) {
        v = def.fn(ev.root);
        values[defIndex] = v;
      }
      return v;
    };
  }

  cFunctionRef(json, env) {
    const lib = this.target(json.libraryName, `function ${json.name}`);
    const qualified = Boolean(json.libraryName);
    const args = (json.operand || []).map((o) => this.compile(o, env));
    const n = args.length;
    const overloads = (lib.functions.get(json.name) || []).filter((f) => (f.json.operand || []).length === n);
    for (const f of overloads) this.program.functionBody(f);
    const program = this.program;
    const evalArgs = (s) => {
      const out = new Array(n);
      for (let i = 0; i < n; i++) out[i] = args[i](s);
      return out;
    };
    const guard = (s) => {
      if (qualified && s.ev.unfiltered) {
        // the reference engine looks the library up as a define of the Unfiltered context
        throw new Exception("Library functions are not currently supported in Unfiltered Context");
      }
    };
    if (overloads.length === 0) {
      return (s) => {
        guard(s);
        evalArgs(s);
        throw new Error("no function with matching signature could be found");
      };
    }
    const call = (s, f, values) => invoke(s.ev, f, values);
    if (overloads.length === 1) {
      const f = overloads[0];
      return (s) => {
        guard(s);
        return call(s, f, evalArgs(s));
      };
    }
    const specs = overloads.map((f) => (f.json.operand || []).map((op) => {
      if (op.operandTypeSpecifier != null) return op.operandTypeSpecifier;
      return op.operandType != null ? { name: op.operandType, type: "NamedTypeSpecifier" } : undefined;
    }));
    const memoable = specs.every((ps) => ps.every((p) => p && p.type === "NamedTypeSpecifier"));
    const chosen = new Map();
    return (s) => {
      guard(s);
      const values = evalArgs(s);
      // The reference engine's choice (FunctionRef.exec): the overloads whose operand types
      // match every non-null argument, and of those the last. It depends only on the
      // arguments' runtime types, so it is remembered per combination of types.
      const key = !memoable ? null : n === 1 ? typeToken(values[0]) : typeKey(values);
      let f = key !== null ? chosen.get(key) : undefined;
      if (f === undefined) {
        const matching = overloads.filter((_, k) => {
          for (let i = 0; i < n; i++) {
            if (values[i] !== null && !s.matchesTypeSpecifier(values[i], specs[k][i])) return false;
          }
          return true;
        });
        if (matching.length === 0) throw new Error("no function with matching signature could be found");
        f = matching[matching.length - 1];
        if (key !== null) chosen.set(key, f);
      }
      return call(s, f, values);
    };
  }

  cOperandRef(json, env) {
    const at = env.lookup(json.name);
    if (!at) throw new Unsupported(`${this.lib.name}: operand ${json.name} is not in scope`);
    return slotReader(at.hops, at.index, `operand ${json.name}`);
  }

  cAliasRef(json, env) {
    const at = env.lookup(json.name);
    if (!at) throw new Unsupported(`${this.lib.name}: alias ${json.name} is not in scope`);
    return slotReader(at.hops, at.index, `alias ${json.name}`);
  }

  cQueryLetRef(json, env) {
    const at = env.lookup(json.name);
    if (!at) throw new Unsupported(`${this.lib.name}: let ${json.name} is not in scope`);
    return slotReader(at.hops, at.index, `let ${json.name}`);
  }

  cParameterRef(json, env) {
    const lib = this.target(json.libraryName, `parameter ${json.name}`);
    const qualified = Boolean(json.libraryName);
    const def = lib.parameters.get(json.name);
    if (!def) return constant(undefined);
    if (def.default == null) {
      return () => {
        throw new Divergence(`parameter ${json.name} has no default`);
      };
    }
    const fn = new Compiler(this.program, lib).compile(def.default, new Env(null, []));
    return (s) => {
      if (qualified && s.ev.unfiltered) throw new Exception("Library expressions are not currently supported in Unfiltered Context");
      return fn(s.ev.root);
    };
  }

  // -- terminology --------------------------------------------------------------------------
  // The reference engine builds these values afresh at each evaluation from the library's
  // definitions; they depend on nothing else, so they are made once here, following the same
  // lookups (including where it ignores a `libraryName`).

  codeSystemOf(lib, name, libraryName) {
    // Library.getCodeSystem(name, libraryName)
    if (libraryName && lib.includes.has(libraryName)) {
      const t = lib.include.get(libraryName);
      return t ? t.codesystems.get(name) : undefined;
    }
    if (libraryName == null || libraryName === lib.name) return lib.codesystems.get(name);
    return undefined;
  }

  codeDefValue(lib, codeDef) {
    // CodeDef.exec: the code system named in the current library, its libraryName unused
    const cs = lib.codesystems.get(codeDef.codeSystem.name);
    if (!cs) throw new TypeError(`Cannot read properties of undefined (reading 'execute')`);
    const system = new dt.CodeSystem(cs.id, cs.version, cs.name);
    return new dt.Code(codeDef.id, system.id, system.version, codeDef.display);
  }

  cCodeSystemRef(json) {
    const cs = this.codeSystemOf(this.lib, json.name, json.libraryName);
    if (!cs) return failing(new TypeError(`Cannot read properties of undefined (reading 'execute')`));
    return constant(new dt.CodeSystem(cs.id, cs.version, cs.name));
  }

  cCodeRef(json) {
    const qualified = Boolean(json.libraryName);
    const lib = this.target(json.libraryName, `code ${json.name}`);
    const codeDef = lib.codes.get(json.name);
    let value;
    let error = null;
    if (codeDef) {
      try {
        value = this.codeDefValue(lib, codeDef);
      } catch (err) {
        error = err;
      }
    }
    return (s) => {
      if (qualified && s.ev.unfiltered) throw new Exception("Library expressions are not currently supported in Unfiltered Context");
      if (error) throw error;
      return value;
    };
  }

  cCode(json) {
    // Code.exec: ctx.getCodeSystem(system name) in the current library, or no system
    const cs = this.lib.codesystems.get(json.system && json.system.name);
    return constant(new dt.Code(json.code, cs ? cs.id : undefined, json.version, json.display));
  }

  cConcept(json) {
    const codes = (json.code || []).map((code) => {
      const cs = this.lib.codesystems.get(code.system && code.system.name);
      return new dt.Code(code.code, cs ? cs.id : undefined, code.version, code.display);
    });
    return () => new dt.Concept(codes.slice(), json.display);
  }

  cConceptRef(json) {
    // ConceptRef.exec: ctx.getConcept(name) in the current library (libraryName unused), then
    // ConceptDef.exec: each code looked up by name in the current library.
    const def = this.lib.concepts.get(json.name);
    if (!def) return constant(undefined);
    let codes;
    try {
      codes = (def.code || []).map((ref) => {
        const codeDef = this.lib.codes.get(ref.name);
        return codeDef ? this.codeDefValue(this.lib, codeDef) : undefined;
      });
    } catch (err) {
      return failing(err);
    }
    return () => new dt.Concept(codes.slice(), def.display);
  }

  cValueSetRef(json) {
    // ValueSetRef.exec -> Library.getValueSet(name, libraryName) -> ValueSetDef.exec, whose
    // code system references resolve in the library of the calling context.
    let vsDef;
    if (json.libraryName && this.lib.includes.has(json.libraryName)) {
      const t = this.lib.include.get(json.libraryName);
      vsDef = t ? t.valuesets.get(json.name) : undefined;
    } else if (json.libraryName == null || json.libraryName === this.lib.name) {
      vsDef = this.lib.valuesets.get(json.name);
    }
    if (!vsDef) return constant(undefined);
    let systems;
    if (vsDef.codeSystem) {
      systems = [];
      for (const ref of vsDef.codeSystem) {
        const cs = this.codeSystemOf(this.lib, ref.name, ref.libraryName);
        if (!cs) return failing(new TypeError(`Cannot read properties of undefined (reading 'execute')`));
        systems.push(new dt.CodeSystem(cs.id, cs.version, cs.name));
      }
    }
    return () => new dt.CQLValueSet(vsDef.id, vsDef.version, vsDef.name, systems && systems.slice());
  }

  // -- data -----------------------------------------------------------------------------------

  cProperty(json, env) {
    let source;
    if (json.scope != null) {
      const at = env.lookup(json.scope);
      if (!at) throw new Unsupported(`${this.lib.name}: property scope ${json.scope} is not in scope`);
      source = slotReader(at.hops, at.index, `alias ${json.scope}`);
    } else if (json.source != null && !isNullNode(json.source)) {
      source = this.compile(json.source, env);
    } else {
      source = constant(undefined);
    }
    const path = json.path;
    const dotted = path.includes(".");
    return (s) => propertyOf(s.ev.call, source(s), path, dotted);
  }

  cRetrieve(json, env) {
    if (json.context != null || json.contextProperty != null || json.includedIn != null) {
      throw new Unsupported("Retrieve with a context or includedIn");
    }
    const datatype = json.dataType;
    const codeProperty = json.codeProperty;
    const dateProperty = json.dateProperty;
    const codes = this.optional(json.codes, env);
    const dateRange = this.optional(json.dateRange, env);
    return (s) => {
      const ev = s.ev;
      if (ev.unfiltered) throw new Exception("Retrieves are not currently supported in Unfiltered Context");
      let wanted = null;
      if (codes !== null) {
        const executed = codes(s);
        if (executed == null) return [];
        if (Array.isArray(executed)) {
          wanted = executed;
        } else {
          // util.resolveValueSet: the code service's expansion, or an error
          const vs = ev.codeService.findValueSet(executed.id, executed.version);
          if (!vs) throw new Error(`Unable to resolve expected valueset with id ${executed.id} and version ${executed.version}`);
          wanted = vs;
        }
      }
      const range = dateRange !== null ? dateRange(s) : null;
      const call = ev.call;
      let records = call.records(datatype);
      if (wanted !== null) {
        // Retrieve.recordMatchesCodesOrVS with the project's fix for code-list defines (a
        // list of lists: any of these codes), as cds/engine/patches/retrieve-code-lists.mjs.
        if (Array.isArray(wanted)) {
          records = records.filter((r) => call.matchesAny(wanted, call.code(r, codeProperty)));
        } else {
          records = records.filter((r) => wanted.hasMatch(call.code(r, codeProperty)));
        }
      } else {
        records = records.slice();
      }
      if (range && dateProperty) records = records.filter((r) => range.includes(r.getDateOrInterval(dateProperty)));
      return records;
    };
  }

  // -- queries --------------------------------------------------------------------------------

  cQuery(json, env) {
    const sources = json.source.map((src) => ({ alias: src.alias, fn: this.compile(src.expression, env) }));
    const aliases = sources.map((src) => src.alias);
    const lets = (json.let || []).map((l) => l.identifier);
    const names = [...aliases, ...lets];
    const frame = new Env(env, names);
    const letFns = (json.let || []).map((l) => this.compile(l.expression, frame));
    const relFns = (json.relationship || []).map((r) => this.relationship(r, frame));
    const where = this.optional(json.where, frame);
    const ret = json.return != null ? this.compile(json.return.expression, frame) : null;
    const aggregate = json.aggregate != null ? this.aggregate(json.aggregate, names, env) : null;
    const sort = json.sort != null ? this.sort(json.sort, env) : null;
    let distinct = true;
    if (json.aggregate != null) distinct = json.aggregate.distinct != null ? json.aggregate.distinct : false;
    else if (json.return != null) distinct = json.return.distinct != null ? json.return.distinct : true;
    const nAliases = aliases.length;
    const nLets = lets.length;
    const single = nAliases === 1 && aggregate === null;
    const toDistinctList = sync.list.toDistinctList;
    return (s) => {
      const results = sources.map((src) => src.fn(s));
      if (results.every((r) => r == null)) return null;
      const isList = results.some((r) => Array.isArray(r));
      const lists = results.map((r) => (r == null ? [] : Array.isArray(r) ? r : [r]));
      let returned = [];
      const visit = (scope) => {
        for (let j = 0; j < nLets; j++) scope.v[nAliases + j] = letFns[j](scope);
        let passed = true;
        if (relFns.length) {
          const relations = relFns.map((rel) => rel(scope));
          passed = relations.every((x) => x);
        }
        if (passed && where !== null) passed = where(scope);
        if (!passed) return;
        if (ret !== null) {
          returned.push(ret(scope));
        } else if (single) {
          const v = scope.v[0];
          if (v === undefined) throw new Divergence(`alias ${aliases[0]} is bound to undefined`);
          returned.push(v);
        } else {
          const cv = {};
          for (let k = 0; k < names.length; k++) cv[names[k]] = scope.v[k];
          returned.push(cv);
        }
      };
      if (nAliases === 1) {
        for (const item of lists[0]) {
          const vars = new Array(names.length);
          vars[0] = item;
          visit(new Scope(s.ev, s, vars));
        }
      } else {
        for (const combo of cartesian(lists)) {
          const vars = new Array(names.length);
          for (let k = 0; k < nAliases; k++) vars[k] = combo[k];
          visit(new Scope(s.ev, s, vars));
        }
      }
      if (distinct) returned = toDistinctList(returned);
      if (aggregate !== null) returned = aggregate(returned, s);
      if (sort !== null) returned = sort(returned, s);
      return isList || aggregate !== null ? returned : returned[0];
    };
  }

  relationship(json, frame) {
    if (json.type !== "With" && json.type !== "Without") throw new Unsupported(`query relationship ${json.type}`);
    const source = this.compile(json.expression, frame);
    const inner = new Env(frame, [json.alias]);
    const suchThat = this.compile(json.suchThat, inner);
    const without = json.type === "Without";
    return (scope) => {
      let records = source(scope);
      if (!Array.isArray(records)) records = [records];
      const returns = [];
      for (const rec of records) returns.push(suchThat(new Scope(scope.ev, scope, [rec])));
      const found = returns.some((x) => x);
      return without ? !found : found;
    };
  }

  aggregate(json, names, env) {
    const starting = json.starting != null ? this.compile(json.starting, env) : null;
    const all = [...names, json.identifier];
    const frame = new Env(env, all);
    const expr = this.compile(json.expression, frame);
    const n = names.length;
    return (values, s) => {
      let acc = starting !== null ? starting(s) : null;
      for (const cv of values) {
        // the reference engine evaluates in a context whose values are `cv` itself
        const src = cv ?? {};
        const vars = new Array(n + 1);
        for (let k = 0; k < n; k++) vars[k] = src[names[k]];
        vars[n] = acc;
        acc = expr(new Scope(s.ev, s, vars));
      }
      return acc;
    };
  }

  sort(json, env) {
    const items = (json.by || []).map((by) => {
      const inst = this.program.build(by);
      if (by.type === "ByDirection") return { inst, ctx: null };
      if (by.type === "ByColumn") {
        inst.expression = thunkOf(inst.expression, (sctx) => columnValue(sctx.values, by.path));
        return { inst, ctx: SORT_CONTEXT };
      }
      throw new Unsupported(`sort ${by.type}`);
    });
    const mergeSort = sync.util.asyncMergeSort; // synchronous in the copy
    return (values) => mergeSort(values, (a, b) => {
      let order = 0;
      for (const item of items) {
        order = item.inst.exec(item.ctx, a, b);
        if (order !== 0) break;
      }
      return order;
    });
  }
}

// ByExpression.exec asks its context for a child context holding the element being sorted.
const SORT_CONTEXT = { childContext: (values) => ({ values: values ?? {} }) };

/** IdentifierRef.exec in a sort context (the element's own field, else the chain: diverge). */
function columnValue(values, name) {
  const get = (id) => {
    if (typeof values[id] !== "undefined") return values[id];
    if (id === "$this") return values;
    throw new Divergence(`sort column ${name} is looked up outside the sorted element`);
  };
  let val = get(name);
  if (val == null) {
    const parts = name.split(".");
    val = get(parts[0]);
    if (val != null && parts.length > 1) {
      let curr = val;
      for (const part of parts.slice(1)) {
        let o;
        if (curr != null) {
          o = curr[part];
          if (o === undefined && typeof curr.get === "function") o = curr.get(part);
        }
        curr = o instanceof Function ? o.call(curr) : o;
      }
      val = curr;
    }
  }
  return val instanceof Function ? val.call(values) : val;
}

const REMEMBERED = new Map();

/** A key made of every field of a DateTime or Date (null for any other value). */
function pointKey(v) {
  if (v === null || typeof v !== "object") return null;
  if (v.constructor === dt.DateTime) {
    return `T${v.year},${v.month},${v.day},${v.hour},${v.minute},${v.second},${v.millisecond},${v.timezoneOffset}`;
  }
  if (v.constructor === dt.Date) return `D${v.year},${v.month},${v.day}`;
  return null;
}

/** A key made of the fields of a Quantity (null for any other value). */
function quantityKey(v) {
  if (v === null || typeof v !== "object" || v.constructor !== dt.Quantity) return null;
  if (typeof v.value !== "number" || (v.unit != null && typeof v.unit !== "string")) return null;
  return `Q${v.value}|${v.unit}`;
}

function cartesian(lists) {
  return lists.reduce((acc, list) => {
    const out = [];
    for (const a of acc) for (const b of list) out.push(a.concat([b]));
    return out;
  }, [[]]);
}

function isHolder(value) {
  // Node fields hold primitives, ELM JSON fragments, child nodes, arrays of them, and holder
  // objects (Case's CaseItem, Instance's Element, Tuple's {name, value}); never datatypes.
  return !(value instanceof sync.Expression);
}

/** typeKey of one argument, without building a string (a FHIR object's type info itself). */
function typeToken(v) {
  if (v === null) return "n";
  if (v === undefined) return "u";
  const t = typeof v;
  if (t === "string") return "s";
  if (t === "boolean") return "b";
  if (t === "number") return Math.floor(v) === v ? "i" : "d";
  if (t === "object" && v._typeInfo !== undefined && typeof v._is === "function") return v._typeInfo;
  return null;
}

/** Keys of argument types for which an overload choice can be remembered (see cFunctionRef). */
function typeKey(values) {
  let key = "";
  for (const v of values) {
    if (v === null) key += "n|";
    else if (v === undefined) key += "u|";
    else {
      const t = typeof v;
      if (t === "string") key += "s|";
      else if (t === "boolean") key += "b|";
      else if (t === "number") key += Math.floor(v) === v ? "i|" : "d|";
      else if (t === "object" && v._typeInfo !== undefined && typeof v._is === "function") key += `F:${v._typeInfo.name}|`;
      else return null;
    }
  }
  return key;
}

/** Is this expression a few nodes with no query, retrieve, call or reference in it? */
function isSmall(expr) {
  let nodes = 0;
  const stack = [expr];
  while (stack.length) {
    const node = stack.pop();
    if (Array.isArray(node)) {
      stack.push(...node);
    } else if (node && typeof node === "object") {
      if (node.type) {
        if (++nodes > 12) return false;
        if (["Query", "Retrieve", "FunctionRef", "ExpressionRef", "ParameterRef"].includes(node.type)) return false;
      }
      for (const [k, v] of Object.entries(node)) if (k !== "annotation" && v && typeof v === "object") stack.push(v);
    }
  }
  return true;
}

/** Call a compiled CQL function: each result is kept for the evaluation (CQL functions are pure). */
function invoke(ev, f, args) {
  if (!f.memo) return f.body(new Scope(ev, null, args));
  const n = args.length;
  let memo = ev.memo[f.id];
  if (n === 0) {
    if (memo !== undefined) return memo.value;
    const value = f.body(new Scope(ev, null, args));
    ev.memo[f.id] = { value };
    return value;
  }
  if (memo === undefined) {
    memo = new Map();
    ev.memo[f.id] = memo;
  }
  let node = memo;
  for (let i = 0; i < n - 1; i++) {
    let next = node.get(args[i]);
    if (next === undefined) {
      next = new Map();
      node.set(args[i], next);
    }
    node = next;
  }
  const last = args[n - 1];
  const found = node.get(last);
  if (found !== undefined || node.has(last)) return found;
  const value = f.body(new Scope(ev, null, args));
  node.set(last, value);
  return value;
}
