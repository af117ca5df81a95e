// Engine patch (correctness): retrieves over code-list defines.
// Replaces: cql-execution 3.3.2, lib/elm/external.js, Retrieve.prototype.recordMatchesCodesOrVS.
//
// `[Observation: "Some Codes"]` where "Some Codes" is a List<Code> define: the translator cannot
// resolve a membership operator for it and emits `ToList(<the list>)`, so the engine gets a
// list of lists and fails with "c.hasMatch is not a function". The meaning is "any of these
// codes": flatten before matching. The record's code is read once per record, not once per
// code of the list (each read builds new FHIR wrappers). The compiled engine's Retrieve has
// the same meaning (cds/engine/compiler/compile.mjs, cRetrieve). Needed while rules retrieve
// over List<Code> defines; value-set retrieves do not need it.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const name = "retrieve-code-lists";
export const kind = "correctness";
export const targets = [{
  package: "cql-execution", version: "3.3.2", file: "lib/elm/external.js",
  sha256: "fe4e16681b89069860d463457c5048c97f7c3857a59954722fa8672019ca8776",
}];

export function apply() {
  const { Retrieve } = require("cql-execution/lib/elm/external");
  Retrieve.prototype.recordMatchesCodesOrVS = function recordMatchesCodesOrVS(record, codes) {
    const recordCode = record.getCode(this.codeProperty);
    if (Array.isArray(codes)) return codes.flat(Infinity).some((c) => c.hasMatch(recordCode));
    return codes.hasMatch(recordCode);
  };
}
