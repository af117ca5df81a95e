// The reference engine: cql-execution's Executor over cql-exec-fhir's patient source, exactly as
// published (plus the patches in patches/, each switchable). The compiled engine is measured
// against it, and it answers whatever the compiled engine does not (see worker.mjs).
import { createRequire } from "node:module";

import { aroundEvaluation, prepareElm } from "./patches/index.mjs";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");
const cqlfhir = require("cql-exec-fhir");

export class ReferenceEngine {
  constructor() {
    this.repository = null;
    this.elm = {};
    this.codeService = null;
    this.executors = new Map();
    // Built once per worker: building it is most of the cost of a small evaluation.
    this.patientSource = cqlfhir.PatientSource.FHIRv401();
  }

  load(libraries, codeService) {
    // prepareElm only drops localIds, which the compiled engine (reading the same JSON) ignores.
    for (const elm of Object.values(libraries)) prepareElm(elm);
    this.elm = libraries;
    this.repository = new cql.Repository(libraries);
    this.codeService = codeService;
    this.executors = new Map();
  }

  executorFor(name) {
    let ex = this.executors.get(name);
    if (ex) return ex;
    const elm = this.elm[name];
    if (!elm) throw new Error(`library ${name} is not loaded`);
    const version = elm.library && elm.library.identifier && elm.library.identifier.version;
    const lib = this.repository.resolve(name, version);
    if (!lib) throw new Error(`library ${name} could not be resolved (missing include?)`);
    ex = new cql.Executor(lib, this.codeService);
    this.executors.set(name, ex);
    return ex;
  }

  /** Raw results `{library: {define: value}}` for `libraries` (unfiltered first, as merged). */
  async evaluate(req, libraries, at) {
    return aroundEvaluation(async () => {
      const results = {};
      for (const name of libraries) {
        const ex = this.executorFor(name);
        ex.withParameters((req.parameters && req.parameters[name]) || {});
        const ps = this.patientSource;
        ps.reset();
        if (req.bundle) ps.loadBundles([req.bundle]);
        const r = await ex.exec(ps, at || undefined);
        const patientIds = Object.keys(r.patientResults || {});
        const merged = { ...(r.unfilteredResults || {}) };
        if (patientIds.length) Object.assign(merged, r.patientResults[patientIds[0]]);
        results[name] = merged;
      }
      return results;
    });
  }
}
