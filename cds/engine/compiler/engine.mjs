// The compiled engine's evaluate: the same request and the same result shape as the reference
// executor in worker.mjs (cql-execution's Executor.exec: every Patient-context define for the
// patient, then every Unfiltered one; results merged unfiltered first), for the libraries the
// program compiled.
import { Program } from "./compile.mjs";
import { Divergence, Evaluation, UNSET } from "./runtime.mjs";
import { CallData, FhirModel } from "./fhir.mjs";

export { Divergence };

export class CompiledEngine {
  constructor() {
    this.model = null;
    this.program = null;
    this.codeService = null;
  }

  /** Compile every library; returns which run compiled and why the others do not. Throws when
   * the compiled engine cannot run at all (packages other than the verified versions). */
  load(libraries, codeService) {
    this.model = this.model || new FhirModel();
    this.program = new Program(libraries);
    this.codeService = codeService;
    const compiled = Object.keys(libraries).filter((name) => this.program.isCompiled(name));
    const fallback = {};
    for (const [name, why] of this.program.problems) fallback[name] = why;
    return { compiled, fallback, compileMs: Math.round(this.program.compileMs) };
  }

  /** Can this request run here (every library compiled, no parameters passed in)? */
  accepts(req) {
    if (!this.program) return false;
    for (const name of req.libraries || []) {
      if (!this.program.isCompiled(name)) return false;
      const params = req.parameters && req.parameters[name];
      if (params && Object.keys(params).length) return false;
    }
    return true;
  }

  /** Raw results `{library: {define: value}}` (CQL values, encoded by the caller). */
  evaluate(req, at) {
    const program = this.program;
    const call = new CallData(this.model, req.bundle || null, at, this.codeService);
    const patientEv = call.patient ? new Evaluation(program, call) : null;
    const results = {};
    for (const name of req.libraries || []) {
      const lib = program.byName.get(name);
      if (!lib || !program.isCompiled(name)) throw new Divergence(`library ${name} is not compiled`);
      const patient = {};
      const unfilteredDefs = [];
      if (patientEv) {
        for (const def of lib.defines.values()) {
          if (def.json.context === "Patient") patient[def.json.name] = valueOf(patientEv, def);
        }
      }
      for (const def of lib.defines.values()) if (def.json.context === "Unfiltered") unfilteredDefs.push(def);
      const unfiltered = {};
      if (unfilteredDefs.length) {
        const ev = new Evaluation(program, call, { unfiltered: true, patientResults: patientEv ? [patient] : [] });
        for (const def of unfilteredDefs) unfiltered[def.json.name] = valueOf(ev, def);
      }
      results[name] = { ...unfiltered, ...patient };
    }
    return results;
  }
}

function valueOf(ev, def) {
  const values = ev.values[def.lib.index];
  let v = values[def.index];
  if (v === UNSET) {
    v = def.fn(ev.root);
    values[def.index] = v;
  }
  return v;
}
