// Engine patch (performance): distinct over FHIR objects by their JSON.
// Replaces: cql-execution 3.3.2, lib/util/immutableUtil.js, toNormalizedKey (for FHIR objects
// only; every other value keeps the original key).
//
// CQL queries with `return` and list `union` are distinct by default, and cql-execution finds
// duplicates by building an Immutable.js key of every element, walking every enumerable
// property. For a FHIR wrapper that means walking (and wrapping) the whole resource, element by
// element, for every element of every such list. A FHIR object's value is its JSON, so its key
// is its type and its serialised JSON (two wrappers of the same JSON stay equal, as CQL
// requires). This function is shared by both engines (the compiled engine calls the reference
// engine's toDistinctList), so switching the patch changes them alike.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const name = "fhir-distinct-keys";
export const kind = "performance";
export const targets = [{
  package: "cql-execution", version: "3.3.2", file: "lib/util/immutableUtil.js",
  sha256: "5126be18e858927a9bdb4e883f7e6b2fd551611b49b2918bc5e66dbd1753bad9",
}];

export function apply() {
  const immutableUtil = require("cql-execution/lib/util/immutableUtil");
  const original = immutableUtil.toNormalizedKey;
  // The key string itself is kept per JSON object (and type), so the same string object comes
  // back each time: sets of keys then hash it once, not once per lookup.
  const keys = new WeakMap();
  immutableUtil.toNormalizedKey = function toNormalizedKey(js) {
    if (js !== null && typeof js === "object" && js._typeInfo !== undefined
        && Object.prototype.hasOwnProperty.call(js, "_json")) {
      const json = js._json;
      const type = js._typeInfo.name;
      if (json === null || typeof json !== "object") return `FHIR.${type}:${JSON.stringify(json)}`;
      let byType = keys.get(json);
      if (byType === undefined) {
        byType = new Map();
        keys.set(json, byType);
      }
      let key = byType.get(type);
      if (key === undefined) {
        key = `FHIR.${type}:${JSON.stringify(json)}`;
        byType.set(type, key);
      }
      return key;
    }
    return original(js);
  };
  // Read by the compiled engine's distinct (compiler/distinct.mjs): with this key, a FHIR
  // object's key is a string and computing it cannot fail.
  immutableUtil.toNormalizedKey.fhirKeyIsText = true;
}
