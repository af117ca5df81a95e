// The patient's record as the compiled engine reads it: cql-exec-fhir's own FHIR objects (the
// reference engine's data model: choice types, primitives with extensions, System conversions;
// see fhir-model.mjs), made once per call and shared by every retrieve of every library, and
// their properties read once per object. FHIRObject.get(path) is a pure function of the wrapped
// JSON, so caching it changes nothing but the time spent building wrappers.
import { createRequire } from "node:module";

import { loadFhirModel } from "./fhir-model.mjs";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");

let FHIR_PROTO = null; // FHIRObject.prototype of the model copy, once a FhirModel exists
const hasOwn = Object.prototype.hasOwnProperty;
const dt = require("cql-execution/lib/datatypes/datatypes");
const { Code } = dt;

/** Per worker: the FHIR 4.0.1 patient source, and the type hierarchies of FHIR types (see
 * Scope.matchesNamedTypeSpecifier). Throws when cql-exec-fhir is not the verified version. */
export class FhirModel {
  constructor() {
    const { PatientSource, FHIRObject } = loadFhirModel();
    FHIR_PROTO = FHIRObject.prototype;
    this.source = PatientSource.FHIRv401();
    this.hierarchies = new WeakMap();
  }

  hierarchy(obj) {
    const info = obj.getTypeInfo();
    if (info == null) return obj._typeHierarchy();
    let h = this.hierarchies.get(info);
    if (h === undefined) {
      h = obj._typeHierarchy();
      this.hierarchies.set(info, h);
    }
    return h;
  }

  /** The patient (cql-exec-fhir's Patient object) of a bundle, as the reference executor makes it. */
  patientOf(bundle) {
    this.source.reset();
    this.source.loadBundles([bundle]);
    const patient = this.source.currentPatient();
    this.source.reset();
    return patient;
  }
}

/** What one evaluate call shares across libraries: record index, property cache, time, codes. */
export class CallData {
  constructor(model, bundle, executionDateTime, codeService) {
    this.model = model;
    this.patient = bundle ? model.patientOf(bundle) : null;
    this.executionDateTime = executionDateTime ?? cql.DateTime.fromJSDate(new Date());
    this.codeService = codeService;
    this.byType = new Map();
    this.props = new Map();
    this.codes = new Map();
    this.indexes = new Map();
  }

  /** Every resource of a FHIR data type (`{http://hl7.org/fhir}Observation`), wrapped once. */
  records(datatype) {
    let list = this.byType.get(datatype);
    if (list === undefined) {
      list = this.patient.findRecords(datatype, { datatype });
      this.byType.set(datatype, list);
    }
    return list;
  }

  /** `obj.get(path)`, once per object and path. */
  get(obj, path) {
    let cache = this.props.get(obj);
    if (cache === undefined) {
      cache = new Map();
      this.props.set(obj, cache);
    }
    let value = cache.get(path);
    if (value === undefined && !cache.has(path)) {
      value = obj.get(path);
      cache.set(path, value);
    }
    return value;
  }

  /** `record.getCode(property)`, once per record and property. */
  code(record, property) {
    let cache = this.codes.get(record);
    if (cache === undefined) {
      cache = new Map();
      this.codes.set(record, cache);
    }
    let value = cache.get(property);
    if (value === undefined && !cache.has(property)) {
      value = this.getCode(record, property);
      cache.set(property, value);
    }
    return value;
  }

  /**
   * cql-exec-fhir's FHIRObject.getCode and toCode (lib/fhir.js), step for step, with every
   * element read through this call's cache (`f.coding` is `f.get("coding")`): the codings a
   * retrieve filters on are then the very objects the rules navigate, made once.
   */
  getCode(record, field) {
    let code = this.get(record, field);
    if (!(code instanceof cql.Code)) code = this.toCode(code);
    return code;
  }

  toCode(f) {
    if (f == null) return f;
    if (Array.isArray(f)) return f.map((c) => this.toCode(c));
    const typeName = f.getTypeInfo().name.replace(/^FHIR\./, "");
    if (typeName === "CodeableConcept") {
      const coding = this.get(f, "coding");
      if (coding == null) return coding;
      const codings = coding.map((c) => this.toCode(c));
      return codings.length === 1 ? codings[0] : codings;
    }
    if (typeName === "Coding") {
      const part = (name) => {
        const v = this.get(f, name);
        if (!v) return v;
        return FHIR_PROTO.isPrototypeOf(v) ? this.get(v, "value") : v.value;
      };
      return new cql.Code(part("code"), part("system"), part("version"), part("display"));
    }
    if (typeName === "code") return this.get(f, "value"); // f is a FHIR object here (it has a type info)
    return undefined;
  }

  /**
   * Does `recordCode` match any code of `codes` (Retrieve's code filter)? A list of plain codes
   * is indexed once per call by code and system: the same answer as testing each code's
   * hasMatch (equal code and system, or a string equal to the code), in one lookup per coding.
   */
  matchesAny(codes, recordCode) {
    // `[Observation: "Some Codes"]` arrives as ToList("Some Codes"): a new one-element list
    // around the define's (cached) list at each retrieve; index the define's list.
    const key = codes.length === 1 && Array.isArray(codes[0]) ? codes[0] : codes;
    let index = this.indexes.get(key);
    if (index === undefined) {
      index = CodeIndex.of(codes.flat(Infinity));
      this.indexes.set(key, index);
    }
    if (index === null) return codes.flat(Infinity).some((c) => c.hasMatch(recordCode));
    return index.matches(recordCode);
  }

  fhirIs(val, spec) {
    // FHIRObject._is, with the hierarchy built once per type.
    return this.model.hierarchy(val).some((t) => t.type === spec.type && t.name == spec.name); // eslint-disable-line eqeqeq
  }
}

/** Codes by code then system; null from `of` when some element is not a plain Code. */
export class CodeIndex {
  static of(list) {
    const bySystem = new Map();
    for (const c of list) {
      if (c === null || typeof c !== "object" || c.constructor !== Code || hasOwn.call(c, "hasMatch")) return null;
      if (typeof c.code !== "string" || !(c.system == null || typeof c.system === "string")) return null;
      let systems = bySystem.get(c.code);
      if (systems === undefined) {
        systems = new Set();
        bySystem.set(c.code, systems);
      }
      systems.add(c.system);
    }
    return new CodeIndex(bySystem);
  }

  constructor(bySystem) {
    this.bySystem = bySystem;
  }

  /** clinical.js codesInList(toCodeList(code), codes), for the indexed codes. */
  matches(code) {
    for (const c1 of toCodeList(code)) {
      if (typeof c1 === "string") {
        if (this.bySystem.has(c1)) return true;
      } else if (c1 != null) {
        const systems = this.bySystem.get(c1.code);
        if (systems !== undefined && (typeof c1.system === "string" || c1.system == null) && systems.has(c1.system)) {
          return true;
        }
      }
    }
    return false;
  }
}

/** clinical.js toCodeList. */
function toCodeList(c) {
  if (c == null) return [];
  if (Array.isArray(c)) {
    let list = [];
    for (const c2 of c) list = list.concat(toCodeList(c2));
    return list;
  }
  if (Array.isArray(c.codes)) return c.codes;
  return [c];
}

/**
 * The reference engine's Property semantics (cql-execution elm/structured.js Property.exec and
 * getPropertyFromObject), with FHIR objects read through the call's cache.
 */
export function propertyOf(call, obj, path, dotted) {
  let val = readProperty(call, obj, path);
  if (val == null) {
    if (!dotted) return null;
    let curr = obj;
    for (const part of path.split(".")) {
      const o = readProperty(call, curr, part);
      curr = o instanceof Function ? o.call(curr) : o;
    }
    val = curr != null ? curr : null;
  }
  return val instanceof Function ? val.call(obj) : val;
}

function readProperty(call, obj, path) {
  if (obj == null) return undefined;
  if (FHIR_PROTO.isPrototypeOf(obj)) {
    // A FHIR object answers its element names through getters that call this.get(name), and
    // anything else (explicit choice names, dotted paths) through obj.get(path) as well.
    if (hasOwn.call(obj, path) || !(path in obj)) return call.get(obj, path);
  }
  let val = obj[path];
  if (val === undefined && typeof obj.get === "function") val = obj.get(path);
  return val;
}
