// Engine patch (performance): included libraries evaluated once per patient.
// Replaces: cql-execution 3.3.2, lib/runtime/context.js, PatientContext.prototype.getLibraryContext.
//
// One patient's evaluation runs several trial libraries, each with its own root context, and
// each would evaluate the shared libraries they include (SLECommon, FHIRHelpers) again. Inside
// `around(fn)`, the context of an included library is shared by every library evaluated (keyed
// by the included library's name and version): its defines are computed once per patient.
// Safe because all libraries of one call see the same patient, the same evaluation time and no
// per-library parameters for the included library (with parameters, nothing is shared).
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const name = "shared-library-contexts";
export const kind = "performance";
export const targets = [{
  package: "cql-execution", version: "3.3.2", file: "lib/runtime/context.js",
  sha256: "83ee8d39676696ce1c9251af1eced102e35b2e0e38a529742d574f4254b69aba",
}];

let shared = null;

/** Run `fn` (one request's evaluation) with included library contexts shared. */
export async function around(fn) {
  const previous = shared;
  shared = new Map();
  try {
    return await fn();
  } finally {
    shared = previous;
  }
}

export function apply() {
  const { PatientContext } = require("cql-execution/lib/runtime/context");
  PatientContext.prototype.getLibraryContext = function getLibraryContext(alias) {
    let ctx = this.library_context[alias];
    if (ctx == null) {
      const library = this.get(alias);
      const id = library && library.source && library.source.library && library.source.library.identifier;
      const key = id ? `${id.id}|${id.version || ""}` : null;
      const params = this.parameters && Object.keys(this.parameters).length ? this.parameters : null;
      if (shared !== null && key !== null && params === null) {
        ctx = shared.get(key);
        if (ctx === undefined) {
          ctx = new PatientContext(library, this.patient, this.codeService, this.parameters, this.executionDateTime, this.messageListener);
          shared.set(key, ctx);
        }
      } else {
        ctx = new PatientContext(library, this.patient, this.codeService, this.parameters, this.executionDateTime, this.messageListener);
      }
      this.library_context[alias] = ctx;
    }
    return ctx;
  };
}
