// Run-time state of the compiled engine: the scope a compiled closure reads its variables from,
// and the evaluation (one patient, one execution time) whose define results it caches.
//
// A compiled closure has the shape `(scope) => value`. The same scope object is handed to the
// reference engine's operator code (the synchronous copy, see sync-elm.mjs) as its `ctx`, so a
// Scope also answers the few context methods those operators call: the execution time, its
// time-zone offset, the type test used by As/Is and overload choice, the code service and the
// message listener. Everything else a cql-execution Context does (name lookup through a chain
// of contexts, library contexts, retrieves) is resolved at compile time instead.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { Context } = require("cql-execution/lib/runtime/context");
const { NullMessageListener } = require("cql-execution/lib/runtime/messageListeners");
const { Exception } = require("cql-execution/lib/datatypes/exception");

/**
 * Raised where the reference engine's behaviour depends on something the compiled engine does
 * not model (a name looked up through its dynamic chain of contexts, a parameter passed in, ...).
 * The worker then answers that request with the reference engine: never a guess.
 */
export class Divergence extends Error {
  constructor(reason) {
    super(`compiled engine cannot decide this exactly: ${reason}`);
    this.name = "Divergence";
  }
}

/** A construct the compiler does not translate: the library runs on the reference engine. */
export class Unsupported extends Error {
  constructor(reason) {
    super(reason);
    this.name = "Unsupported";
  }
}

export const UNSET = Symbol("unset");
const EMPTY = Object.freeze([]);
const SYSTEM = "{urn:hl7-org:elm-types:r1}";
// The names matchesNamedTypeSpecifier decides itself, without asking the value's `_is`.
const SYSTEM_SWITCH = new Set(["Boolean", "Decimal", "Integer", "String", "Concept", "Code", "DateTime", "Date",
  "Quantity", "Time"].map((n) => SYSTEM + n));

export class Scope {
  constructor(ev, parent, vars) {
    this.ev = ev;
    this.p = parent;
    this.v = vars;
  }

  getExecutionDateTime() {
    return this.ev.executionDateTime;
  }

  getTimezoneOffset() {
    const at = this.ev.executionDateTime;
    if (at == null) throw new Exception("No Timezone Offset has been set");
    return at.timezoneOffset;
  }

  getMessageListener() {
    return this.ev.messageListener;
  }

  get codeService() {
    return this.ev.codeService;
  }

  // A FHIR object's `_is(spec)` rebuilds its type hierarchy on every call; the hierarchy is a
  // function of its type info alone, so it is built once per type. Same answer by construction.
  matchesNamedTypeSpecifier(val, spec) {
    if (val != null && typeof val._is === "function" && val._typeInfo !== undefined && !SYSTEM_SWITCH.has(spec.name)) {
      return this.ev.call.fhirIs(val, spec);
    }
    return Context.prototype.matchesNamedTypeSpecifier.call(this, val, spec);
  }
}
// The reference engine's type tests, unchanged: they only call each other through `this`.
for (const name of ["matchesTypeSpecifier", "matchesListTypeSpecifier", "matchesTupleTypeSpecifier",
  "matchesIntervalTypeSpecifier", "matchesChoiceTypeSpecifier", "matchesInstanceType",
  "matchesListInstanceType", "matchesTupleInstanceType", "matchesIntervalInstanceType"]) {
  Scope.prototype[name] = Context.prototype[name];
}

/**
 * One root context's worth of state: the define results of every library evaluated for one
 * patient (or, `unfiltered`, for the Unfiltered context), the memo of function results, the
 * per-call data (record index, FHIR property cache).
 */
export class Evaluation {
  constructor(program, call, { unfiltered = false, patientResults = [] } = {}) {
    this.program = program;
    this.call = call;
    this.unfiltered = unfiltered;
    this.patientResults = patientResults;
    this.executionDateTime = call.executionDateTime;
    this.codeService = call.codeService;
    this.messageListener = new NullMessageListener();
    this.values = program.libraries.map((lib) => new Array(lib.defineCount).fill(UNSET));
    this.memo = new Array(program.functionCount);
    this.root = new Scope(this, null, EMPTY);
  }
}

export { EMPTY };
