// The reference engine's patches, one file each (the header of each names the upstream file and
// version it replaces and says why). They apply to the reference engine only; the compiled
// engine (cds/engine/compiler/) needs none of them, and shares with the reference engine only
// the datatypes and the distinct-list helper (see fhir-distinct-keys.mjs).
//
// Switch: TRIAL_CDS_ENGINE_PATCHES = "all" (default) | "none" | a comma-separated list of the
// patch names to apply, e.g. "retrieve-code-lists". Every patch applied is checked first against
// the installed package version and the exact text of the file it replaces; a mismatch refuses
// to start the worker (a patch of private internals must never run on code it was not written
// for).
import * as fhirDistinctKeys from "./fhir-distinct-keys.mjs";
import * as fhirObjectCache from "./fhir-object-cache.mjs";
import * as leanExecute from "./lean-execute.mjs";
import * as overloadMemo from "./overload-memo.mjs";
import * as retrieveCodeLists from "./retrieve-code-lists.mjs";
import * as sharedLibraryContexts from "./shared-library-contexts.mjs";
import { checkTarget } from "./check.mjs";

export const PATCHES = [retrieveCodeLists, leanExecute, sharedLibraryContexts, fhirDistinctKeys, overloadMemo,
  fhirObjectCache];

const applied = new Set();

/** The patch names a setting asks for ("all", "none", or "a,b"); throws on an unknown name. */
export function selectPatches(setting) {
  const text = (setting ?? "all").trim().toLowerCase();
  if (text === "" || text === "all") return PATCHES.map((p) => p.name);
  if (text === "none") return [];
  const names = text.split(",").map((s) => s.trim()).filter(Boolean);
  const known = new Set(PATCHES.map((p) => p.name));
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length) {
    throw new Error(`TRIAL_CDS_ENGINE_PATCHES names unknown patches: ${unknown.join(", ")} `
      + `(known: ${[...known].join(", ")}; or "all" / "none")`);
  }
  return names;
}

/** Check, then apply, the named patches (once per process). Returns the names applied. */
export function applyPatches(names) {
  const wanted = PATCHES.filter((p) => names.includes(p.name));
  for (const p of wanted) for (const t of p.targets) checkTarget(p.name, t);
  for (const p of wanted) {
    if (applied.has(p.name)) continue;
    p.apply();
    applied.add(p.name);
  }
  return wanted.map((p) => p.name);
}

/** ELM as the applied patches want it at load (lean-execute drops localIds). */
export function prepareElm(elm) {
  return applied.has(leanExecute.name) ? leanExecute.prepareElm(elm) : elm;
}

/** Run one request's reference evaluation (shared-library-contexts shares included contexts). */
export function aroundEvaluation(fn) {
  return applied.has(sharedLibraryContexts.name) ? sharedLibraryContexts.around(fn) : fn();
}

export function appliedPatches() {
  return [...applied];
}
