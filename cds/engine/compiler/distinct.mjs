// cql-execution's toDistinctList (elm/list.js) with the same answer in less time.
//
// The reference keeps the first element of every class of equal elements, two elements being
// equal when their `toNormalizedKey` values (util/immutableUtil.js) are equal by Immutable.js
// `is`: primitives by `===` (NaN equal to NaN), an Immutable Map (a tuple, a Code, a DateTime,
// ...: its fields plus `__instance`, the constructor) by its entries regardless of order, an
// Immutable List (a CQL list) by its items in order. Building those Immutable structures for
// every tuple of every distinct query was a quarter of the compiled engine's time.
//
// Here each element gets a string that encodes exactly that structure (a Map as its entries
// sorted, a List as its items in order, a constructor by identity, a string by an interned
// number), so equal strings <=> equal keys. For the shapes it knows (arrays, tuples and other
// plain field objects, Code, DateTime, Interval) it writes the string without building the key;
// for any other value it asks the installed toNormalizedKey (patched or not: the reference's own
// key) and encodes what that returns. A key of a shape it cannot encode (an Immutable Set, a
// symbol field) hands the whole list to the reference's own function.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const immutableUtil = require("cql-execution/lib/util/immutableUtil");
const dt = require("cql-execution/lib/datatypes/datatypes");
// the Immutable.js instance cql-execution itself uses
const Immutable = require(require.resolve("immutable", { paths: [path.dirname(require.resolve("cql-execution"))] }));

const BAIL = Symbol("bail");
const hasOwn = Object.prototype.hasOwnProperty;
const functionIds = new WeakMap();
let nextFunctionId = 0;

function functionId(fn) {
  let id = functionIds.get(fn);
  if (id === undefined) {
    id = nextFunctionId++;
    functionIds.set(fn, id);
  }
  return id;
}

export function makeToDistinctList(upstream) {
  return function toDistinctList(list) {
    const toKey = immutableUtil.toNormalizedKey; // read at call time: it may be patched
    const n = list.length;
    // Most lists are empty or singletons: nothing to compare, but the key is still computed (as
    // the reference does), since computing it can fail for some values.
    if (n === 0) return [];
    if (n === 1) {
      const v = list[0];
      // patches/fhir-distinct-keys.mjs marks its key function: a FHIR object's key is its JSON text
      if (keyCannotFail(v, toKey.fhirKeyIsText === true, toKey)) return [v];
      const k = new Encoder(toKey).value(v);
      return k === BAIL ? upstream(list) : [v];
    }
    const keys = new Array(n);
    // Lists of FHIR objects (patched key: a string), strings, numbers or codes: keys made
    // directly. A primitive key and a code's key can never be equal (the code's is a Map), so
    // codes are told apart in a set of their own (`isCode`).
    const isCode = new Array(n);
    let flat = true;
    for (let i = 0; i < n; i++) {
      const v = list[i];
      if (v !== null && typeof v === "object") {
        if (v.constructor === dt.Code) {
          const k = codeKey(v);
          if (k !== null) {
            keys[i] = k;
            isCode[i] = true;
            continue;
          }
        }
        if (Array.isArray(v) || Object.getPrototypeOf(v) === Object.prototype) {
          flat = false;
          break;
        }
      }
      const k = toKey(v);
      if (k !== null && (typeof k === "object" || typeof k === "function" || typeof k === "symbol")) {
        flat = false;
        break;
      }
      keys[i] = k;
      isCode[i] = false;
    }
    if (!flat) {
      const enc = new Encoder(toKey);
      for (let i = 0; i < n; i++) {
        const k = enc.value(list[i]);
        if (k === BAIL) return upstream(list);
        keys[i] = k;
        isCode[i] = false;
      }
    }
    const seen = new Set();
    const codes = new Set();
    const out = [];
    for (let i = 0; i < n; i++) {
      const set = isCode[i] ? codes : seen;
      const size = set.size;
      set.add(keys[i]);
      if (set.size > size) out.push(list[i]);
    }
    return out;
  };
}

// Map{code, system, version, display}: each field's key is the field itself (null for
// undefined). Codes are mostly the libraries' constants: their key is kept (a Code's fields are
// never changed after it is made).
const codeKeys = new WeakMap();

function codeKey(c) {
  let k = codeKeys.get(c);
  if (k === undefined) {
    k = isPrimitive(c.code) && isPrimitive(c.system) && isPrimitive(c.version) && isPrimitive(c.display)
      ? JSON.stringify([c.code ?? null, c.system ?? null, c.version ?? null, c.display ?? null]) : null;
    codeKeys.set(c, k);
  }
  return k;
}

function isPrimitive(v) {
  // JSON.stringify keeps these apart as toNormalizedKey does (1 and '1' differ; NaN is not one)
  return v === undefined || v === null || typeof v === "string" || typeof v === "boolean"
    || (typeof v === "number" && Number.isFinite(v));
}
/**
 * True when toNormalizedKey(v) certainly returns (so a one-element list needs no key): values
 * made of primitives, codes, tuples and lists of them, DateTimes already at offset 0 (their
 * key reads their fields), quantities whose key was computed before, and FHIR objects when
 * their key is their JSON text. Anything else (an interval: its key closes it, which can fail)
 * is encoded, as a longer list's elements are.
 */
function keyCannotFail(v, fhirKeyIsText, toKey) {
  if (v === null || typeof v !== "object") return typeof v !== "symbol" && typeof v !== "bigint";
  const ctor = v.constructor;
  if (ctor === dt.Code) return true;
  if (ctor === dt.Quantity) return quantityKeyKnown(v, toKey);
  if (ctor === dt.DateTime) return !(typeof v.timezoneOffset === "number" && v.timezoneOffset !== 0);
  if (v._typeInfo !== undefined && hasOwn.call(v, "_json")) return fhirKeyIsText;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) if (!keyCannotFail(v[i], fhirKeyIsText, toKey)) return false;
    return true;
  }
  if (Object.getPrototypeOf(v) === Object.prototype && !hasOwn.call(v, "constructor") && v._typeHierarchy === undefined
      && !hasOwn.call(v, "length") && Object.getOwnPropertySymbols(v).length === 0) {
    for (const k of Object.keys(v)) if (!keyCannotFail(v[k], fhirKeyIsText, toKey)) return false;
    return true;
  }
  return false;
}

// Quantities whose key was computed without failing: the key is a function of value and unit.
const quantityKeys = new Map();

function quantityKeyKnown(q, toKey) {
  if (typeof q.value !== "number" || (q.unit != null && typeof q.unit !== "string")) return false;
  const id = `${q.value}|${q.unit}`;
  if (quantityKeys.has(id)) return true;
  toKey(q); // throws as the reference would
  if (quantityKeys.size > 10000) quantityKeys.clear();
  quantityKeys.set(id, true);
  return true;
}

// Encodings of values whose fields never change once made (datatypes and FHIR objects), per
// key function (the fhir-distinct-keys patch changes a FHIR object's key). An Interval's key
// closes it first, through Luxon for date-times (~0.1 ms): the same intervals recur in many
// lists. A computation that throws is not kept (it throws again, as the reference would).
const encodings = new WeakMap();

function cacheFor(toKey) {
  let cache = encodings.get(toKey);
  if (cache === undefined) {
    cache = new WeakMap();
    encodings.set(toKey, cache);
  }
  return cache;
}

class Encoder {
  constructor(toKey) {
    this.toKey = toKey;
    this.cache = cacheFor(toKey);
  }

  /** The encoded key of a key value (what toNormalizedKey returned). */
  key(k) {
    if (k === null || k === undefined) return "n";
    switch (typeof k) {
      case "string":
        return JSON.stringify(k);
      case "number":
        return Number.isNaN(k) ? "dNaN" : `d${k}`; // String(-0) === "0", as 0 === -0
      case "boolean":
        return k ? "bt" : "bf";
      case "function":
        return `f${functionId(k)}`;
      case "object":
        if (Immutable.Map.isMap(k) && !Immutable.OrderedMap.isOrderedMap(k)) {
          const entries = [];
          let bad = false;
          k.forEach((v, name) => {
            if (typeof name !== "string") bad = true;
            else entries.push([name, this.key(v)]);
          });
          if (bad || entries.some(([, v]) => v === BAIL)) return BAIL;
          return this.map(entries);
        }
        if (Immutable.List.isList(k)) {
          const items = [];
          for (const v of k) {
            const e = this.key(v);
            if (e === BAIL) return BAIL;
            items.push(e);
          }
          return `L[${items.join(",")}]`;
        }
        return BAIL;
      default:
        return BAIL;
    }
  }

  /** A Map from [field name, encoded value] pairs (field names distinct). */
  map(entries, sorted = false) {
    if (!sorted) entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    let out = "M{";
    for (let i = 0; i < entries.length; i++) out += `${i ? "," : ""}${JSON.stringify(entries[i][0])}:${entries[i][1]}`;
    return out + "}";
  }

  /** A Map of `obj`'s own fields (as Immutable's Seq(obj) sees them) plus __instance. */
  fields(obj, instance) {
    if (Object.getOwnPropertySymbols(obj).length) return BAIL;
    const entries = [];
    for (const name of Object.keys(obj)) {
      // __instance is overwritten by the reference; `length` or an iterator makes Seq(obj) a list
      if (name === "__instance" || name === "length" || name === "@@iterator") return BAIL;
      const v = this.value(obj[name]);
      if (v === BAIL) return BAIL;
      entries.push([name, v]);
    }
    entries.push(["__instance", this.key(instance)]);
    return this.map(entries);
  }

  /** The encoded toNormalizedKey(v). */
  value(v) {
    if (v === null || v === undefined) return "n";
    if (typeof v !== "object") return this.key(this.toKey(v));
    const ctor = v.constructor;
    if (ctor === Array) {
      if (Object.getOwnPropertySymbols(v).length) return BAIL;
      let out = "L[";
      for (let i = 0; i < v.length; i++) {
        if (!(i in v)) return BAIL;
        const e = this.value(v[i]);
        if (e === BAIL) return BAIL;
        out += (i ? "," : "") + e;
      }
      return out + "]";
    }
    if (Object.getPrototypeOf(v) === Object.prototype) {
      if (Object.prototype.hasOwnProperty.call(v, "constructor") || v._typeHierarchy !== undefined) return this.key(this.toKey(v));
      return this.fields(v, Object); // a tuple: the reference's default branch
    }
    let e = this.cache.get(v);
    if (e === undefined) {
      e = this.datatype(v, ctor);
      this.cache.set(v, e);
    }
    return e;
  }

  datatype(v, ctor) {
    if (ctor === dt.Code) {
      const fields = [["__instance", this.key(dt.Code)], ["code", this.value(v.code)], ["display", this.value(v.display)],
        ["system", this.value(v.system)], ["version", this.value(v.version)]];
      return fields.some(([, e]) => e === BAIL) ? BAIL : this.map(fields, true);
    }
    if (ctor === dt.DateTime) {
      const d = typeof v.timezoneOffset === "number" && v.timezoneOffset !== 0 ? v.convertToTimezoneOffset(0) : v;
      return this.fields(d, dt.DateTime);
    }
    if (ctor === dt.Interval) return this.fields(v.toClosed(), dt.Interval);
    if (ctor === dt.Date && v._typeHierarchy === undefined) return this.fields(v, dt.Date); // default branch
    return this.key(this.toKey(v));
  }
}
