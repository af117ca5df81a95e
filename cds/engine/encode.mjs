// CQL values -> the tagged JSON both engines answer with (decoded by cds/engine/values.py).
// Shared by the reference and the compiled engine, so a difference between them can only come
// from the values themselves.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");

export function toJson(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return Number.isFinite(value) ? value : null;
  if (typeof value === "boolean" || typeof value === "string") return value;
  if (Array.isArray(value)) return value.map(toJson);
  if (value instanceof cql.Code) {
    return { "@type": "Code", code: value.code ?? null, system: value.system ?? null, version: value.version ?? null, display: value.display ?? null };
  }
  if (value instanceof cql.Concept) {
    return { "@type": "Concept", codes: (value.codes || []).map(toJson), display: value.display ?? null };
  }
  if (value instanceof cql.Quantity) return { "@type": "Quantity", value: toJson(value.value), unit: value.unit ?? null };
  if (value instanceof cql.Ratio) return { "@type": "Ratio", numerator: toJson(value.numerator), denominator: toJson(value.denominator) };
  if (value instanceof cql.Interval) {
    return { "@type": "Interval", low: toJson(value.low), high: toJson(value.high), lowClosed: value.lowClosed, highClosed: value.highClosed };
  }
  if (value instanceof cql.DateTime) {
    return value.isTime() ? { "@type": "Time", value: value.toStringTime().replace(/^T/, "") } : { "@type": "DateTime", value: value.toString() };
  }
  if (value instanceof cql.Date) return { "@type": "Date", value: value.toString() };
  if (value && value.constructor && value.constructor.name === "Uncertainty") {
    return { "@type": "Uncertainty", low: toJson(value.low), high: toJson(value.high) };
  }
  if (value && value._typeInfo && Object.prototype.hasOwnProperty.call(value, "_json")) {
    // A FHIR object from cql-exec-fhir: serialise the resource or element as it came in.
    return { "@type": `FHIR.${value._typeInfo.name}`, value: value._json ?? null };
  }
  if (value instanceof cql.ValueSet || value instanceof cql.CodeSystem) {
    return { "@type": value.constructor.name, id: value.oid ?? value.id ?? null, version: value.version ?? null };
  }
  if (typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = toJson(v);
    return out;
  }
  return String(value);
}

/**
 * One library's results as the worker returns them: only the defines asked for (all are
 * evaluated: criteria need their parts; serialising every retrieve's resources would cost more
 * than evaluating them), the Patient define only on request.
 */
export function encodeResults(merged, wanted, includePatient) {
  const out = {};
  for (const [k, v] of Object.entries(merged)) {
    if (k === "Patient" && !includePatient) continue;
    if (wanted != null && !wanted.has(k)) continue;
    out[k] = toJson(v);
  }
  return out;
}

/**
 * JSON.stringify(toJson(a)) === JSON.stringify(toJson(b)), without building either text (the
 * differential test compares ~750 defines of every record). Follows toJson branch by branch;
 * a FHIR object is compared by its JSON, the same JSON object (both engines read the same
 * bundle) being equal at once.
 */
export function sameEncoding(a, b) {
  const na = a === null || a === undefined || (typeof a === "number" && !Number.isFinite(a));
  const nb = b === null || b === undefined || (typeof b === "number" && !Number.isFinite(b));
  if (na || nb) return na && nb;
  const ta = typeof a;
  if (ta === "number" || ta === "boolean" || ta === "string") return ta === typeof b && a === b;
  if (typeof b !== "object" || ta !== "object") return JSON.stringify(toJson(a)) === JSON.stringify(toJson(b));
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameEncoding(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  if (a._typeInfo && Object.prototype.hasOwnProperty.call(a, "_json") && !(a instanceof cql.Code)
      && !(a instanceof cql.Concept) && !(a instanceof cql.Quantity) && !(a instanceof cql.Ratio)
      && !(a instanceof cql.Interval) && !(a instanceof cql.DateTime) && !(a instanceof cql.Date)) {
    if (!(b._typeInfo && Object.prototype.hasOwnProperty.call(b, "_json"))) return false;
    if (a._typeInfo.name !== b._typeInfo.name) return false;
    return a._json === b._json || JSON.stringify(a._json ?? null) === JSON.stringify(b._json ?? null);
  }
  if (Object.getPrototypeOf(a) === Object.prototype && Object.getPrototypeOf(b) === Object.prototype) {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    if (ka.length !== kb.length) return false;
    for (let i = 0; i < ka.length; i++) {
      if (ka[i] !== kb[i] || !sameEncoding(a[ka[i]], b[kb[i]])) return false;
    }
    return true;
  }
  // datatypes: small, encode them
  return JSON.stringify(toJson(a)) === JSON.stringify(toJson(b));
}
