// Engine patch (performance): FHIR objects built once.
// Replaces: cql-exec-fhir 2.2.0, lib/fhir.js, FHIRObject.prototype.get,
// FHIRObject.prototype._typeHierarchy and Patient.prototype.findRecords.
//
// Profiling a trial library on a 40-resource record showed most time in building FHIR wrapper
// objects (FHIRObject: a property per element of the type hierarchy, per instance) and in the
// garbage they leave: cql-exec-fhir builds a fresh wrapper on every retrieve and on every
// property read (`O.value`, `O.effective` ... read dozens of times by shared functions).
// Memoised here, per wrapper, FHIRObject.get(path) (a pure function of the wrapped JSON); per
// type, the type hierarchy; per loaded bundle, Patient.findRecords(type), so every retrieve of
// a type in every library evaluated for the same request shares the same wrappers.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const name = "fhir-object-cache";
export const kind = "performance";
export const targets = [{
  package: "cql-exec-fhir", version: "2.2.0", file: "lib/fhir.js",
  sha256: "3c9b1f87850f266689e087cceece89b5d90e8926123e541ec8fe4b89c9921a5c",
}];

const CACHE = Symbol("trial-cds.cache");

function cacheOf(obj) {
  let cache = obj[CACHE];
  if (cache === undefined) {
    cache = new Map();
    Object.defineProperty(obj, CACHE, { value: cache, enumerable: false });
  }
  return cache;
}

export function apply() {
  const cqlfhir = require("cql-exec-fhir");
  const source = cqlfhir.PatientSource.FHIRv401();
  source.loadBundles([{ resourceType: "Bundle", entry: [{ resource: { resourceType: "Patient", id: "probe" } }] }]);
  const PatientProto = Object.getPrototypeOf(source.currentPatient());
  const FHIRObjectProto = Object.getPrototypeOf(PatientProto);

  const originalGet = FHIRObjectProto.get;
  FHIRObjectProto.get = function get(field) {
    const cache = cacheOf(this);
    if (cache.has(field)) return cache.get(field);
    const value = originalGet.call(this, field);
    cache.set(field, value);
    return value;
  };

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
