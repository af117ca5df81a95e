// The catalogue's value sets for cql-execution: a CodeService whose ValueSets answer
// membership from an index.
//
// Why: cql-execution's ValueSet.hasMatch compares a code with every code of the expansion, and
// ValueSet.expand() de-duplicates in quadratic time. The catalogue's ICD-10 value sets hold
// thousands of codes (malignancy alone ~2,400 in ICD-10 + ICD-10-CM) and every Condition of a
// record is tested against several of them, so a linear scan would dominate evaluation.
// Membership here is the same as cql-execution's (code and system equal; a string matches a
// code of any system), only looked up in a Map; expand() returns the expansion as loaded
// (already unique: the Python side de-duplicates) with displays kept for evidence and cards.
//
// Input, as the worker's `load` op receives it: {url: {version: [{code, system, display}]}}.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");

function codesOf(x) {
  if (x == null) return [];
  if (Array.isArray(x)) return x.flatMap(codesOf);
  if (typeof x === "string") return [x];
  if (Array.isArray(x.codes)) return x.codes.flatMap(codesOf);
  return [x];
}

class IndexedValueSet extends cql.ValueSet {
  constructor(oid, version, codes) {
    super(oid, version, codes);
    this.bySystem = new Map();
    this.byCode = new Map();
    for (const c of codes) {
      let set = this.bySystem.get(c.system);
      if (!set) this.bySystem.set(c.system, (set = new Set()));
      set.add(c.code);
      this.byCode.set(c.code, (this.byCode.get(c.code) || 0) + 1);
    }
  }

  hasMatch(code) {
    const list = codesOf(code);
    if (list.length === 1 && typeof list[0] === "string") return super.hasMatch(code); // keeps the engine's ambiguity check
    return list.some((c) => {
      if (c == null) return false;
      if (typeof c === "string") return this.byCode.has(c);
      const set = this.bySystem.get(c.system);
      return set !== undefined && set.has(c.code);
    });
  }

  expand() {
    return this.codes.slice();
  }
}

export class IndexedCodeService extends cql.CodeService {
  constructor(valueSetsJson = {}) {
    super({});
    for (const [oid, versions] of Object.entries(valueSetsJson || {})) {
      this.valueSets[oid] = {};
      for (const [version, codes] of Object.entries(versions || {})) {
        const built = (codes || []).map((c) => new cql.Code(c.code, c.system, c.version, c.display));
        this.valueSets[oid][version] = new IndexedValueSet(oid, version, built);
      }
    }
  }
}
