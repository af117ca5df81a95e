// Self-check of the compiled engine's distinct-list fast path (distinct.mjs) against
// cql-execution's own toDistinctList (and of the differential test's comparison, encode.mjs
// sameEncoding, against comparing the encoded texts), on random lists made to contain equal-but-different
// values: the same instant in several offsets, Date vs DateTime, equal quantities in
// convertible units, tuples with fields in another order or undefined for null, codes differing
// only in display, FHIR objects of equal JSON, nested lists.
//
//   node cds/engine/compiler/selfcheck.mjs [N]   prints {"lists": N, "duplicates": d, "different": [...]}
//
// TRIAL_CDS_ENGINE_PATCHES applies as in the worker (the fhir-distinct-keys patch changes the
// key of FHIR objects for both functions alike). Used by tests/compiled/test_compiler.py.
import { createRequire } from "node:module";

import { applyPatches, selectPatches } from "../patches/index.mjs";
import { makeToDistinctList } from "./distinct.mjs";
import { sameEncoding, toJson } from "../encode.mjs";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");
const cqlfhir = require("cql-exec-fhir");
const { toDistinctList } = require("cql-execution/lib/elm/list");

applyPatches(selectPatches(process.env.TRIAL_CDS_ENGINE_PATCHES));
const fast = makeToDistinctList(toDistinctList);

let seed = 1407;
function rand() {
  // xorshift32: the same lists on every run
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return ((seed >>> 0) % 1_000_000) / 1_000_000;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];

const source = cqlfhir.PatientSource.FHIRv401();
const obsJson = [
  { resourceType: "Observation", id: "a", status: "final", code: { coding: [{ system: "http://loinc.org", code: "2160-0" }] } },
  { resourceType: "Observation", id: "b", status: "final", code: { coding: [{ system: "http://loinc.org", code: "2160-0" }] } },
];
source.loadBundles([{ resourceType: "Bundle", entry: [{ resource: { resourceType: "Patient", id: "p" } },
  ...obsJson.map((resource) => ({ resource })), { resource: JSON.parse(JSON.stringify(obsJson[0])) }] }]);
const patient = source.currentPatient();
const fhirObjects = () => patient.findRecords("{http://hl7.org/fhir}Observation", { datatype: "{http://hl7.org/fhir}Observation" });

const instants = ["2026-01-01T08:00:00.000+08:00", "2026-01-01T00:00:00.000+00:00", "2025-12-31T19:00:00.000-05:00",
  "2026-01-01T00:00:00.000+00:00", "2026-01-01T00:00:00+00:00", "2026-01-01", "2026-01-02"];
const leaves = [
  () => null, () => undefined, () => pick([0, -0, 1, 1.0, 2.5, NaN]), () => pick(["a", "b", "", "1"]),
  () => pick([true, false]),
  () => new cql.Code(pick(["1", "2"]), pick(["http://loinc.org", "http://snomed.info/sct", undefined]), undefined,
    pick([undefined, "one", "One"])),
  () => cql.DateTime.parse(pick(instants)),
  () => cql.DateTime.parse(pick(instants)).getDate(),
  () => new cql.Quantity(pick([1, 1000, 0.001]), pick(["g", "mg", "kg", "mg/dL", "{score}", "1"])),
  () => new cql.Interval(pick([1, 2, null]), pick([3, 4, null]), pick([true, false]), pick([true, false])),
  () => new cql.Interval(cql.DateTime.parse(pick(instants)), cql.DateTime.parse(pick(instants)), true, pick([true, false])),
  () => pick(fhirObjects()),
];

function value(depth) {
  const r = rand();
  if (depth < 2 && r < 0.25) {
    // a tuple, fields in a random order, sometimes undefined where another has null
    const names = ["status", "date", "value", "code"].filter(() => rand() < 0.7);
    if (rand() < 0.5) names.reverse();
    const t = {};
    for (const n of names) t[n] = value(depth + 1);
    return t;
  }
  if (depth < 2 && r < 0.35) return Array.from({ length: Math.floor(rand() * 3) }, () => value(depth + 1));
  return pick(leaves)();
}

function describe(v) {
  if (v === null || v === undefined || typeof v !== "object") return String(v);
  if (Array.isArray(v)) return `[${v.map(describe).join(", ")}]`;
  if (v._typeInfo !== undefined) return `FHIR:${JSON.stringify(v._json)}`;
  if (Object.getPrototypeOf(v) === Object.prototype) return `{${Object.entries(v).map(([k, x]) => `${k}: ${describe(x)}`).join(", ")}}`;
  if (v.isInterval) return `${v.constructor.name}(${describe(v.low)}, ${describe(v.high)}, ${v.lowClosed}, ${v.highClosed})`;
  try {
    return `${v.constructor.name}(${JSON.stringify(v)})`;
  } catch (err) {
    return v.constructor.name;
  }
}

const same = (a, b) => a.length === b.length && a.every((x, i) => Object.is(x, b[i]));
const n = Number(process.argv[2] || 1000);
const different = [];
let duplicates = 0;
for (let i = 0; i < n; i++) {
  const pool = Array.from({ length: 1 + Math.floor(rand() * 4) }, () => value(0));
  const list = Array.from({ length: Math.floor(rand() * 7) }, () => pick(pool));
  let expected;
  let expectedError = null;
  try {
    expected = toDistinctList(list);
  } catch (err) {
    expectedError = String(err.message);
  }
  let actual;
  let actualError = null;
  try {
    actual = fast(list);
  } catch (err) {
    actualError = String(err.message);
  }
  if (expectedError !== null || actualError !== null) {
    if (expectedError !== actualError) different.push({ i, expectedError, actualError });
    continue;
  }
  if (expected.length < list.length) duplicates++;
  for (let k = 0; k + 1 < list.length; k++) {
    const same = JSON.stringify(toJson(list[k])) === JSON.stringify(toJson(list[k + 1]));
    if (sameEncoding(list[k], list[k + 1]) !== same) different.push({ i, sameEncoding: list.map(describe) });
  }
  if (!same(expected, actual)) different.push({ i, list: list.map(describe), expected: expected.length, actual: actual.length });
}
process.stdout.write(JSON.stringify({ lists: n, duplicates, different: different.slice(0, 10) }) + "\n");
