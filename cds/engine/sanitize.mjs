// Record preparation shared by both engines (worker.mjs applies it before either runs).
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { checkUnit } = require("cql-execution/lib/util/units");

const UCUM = "http://unitsofmeasure.org";

function validUnit(unit) {
  try {
    return checkUnit(unit).valid;
  } catch (err) {
    return false;
  }
}

/**
 * cql-execution throws when it builds a Quantity whose unit is not valid UCUM, which would
 * fail a whole library over one odd unit an EHR sent ("tablets", "mg/24hr"). Before a record
 * reaches the engine, every FHIR Quantity whose effective unit (the UCUM code, else the unit
 * text, as FHIRHelpers.ToQuantity picks it) is not valid UCUM gets a UCUM annotation instead,
 * e.g. {tablets}: a valid, dimensionless unit that no rule accepts, so the value reads as
 * "unit not recognised" (unknown) and the lab's text stays in `unit` for the evidence.
 * "µ" (micro sign) written for UCUM's "u" is mapped, being the same unit.
 */
export function sanitizeQuantities(node) {
  if (Array.isArray(node)) {
    for (const item of node) sanitizeQuantities(item);
    return;
  }
  if (!node || typeof node !== "object") return;
  const isQuantity = typeof node.value === "number" && !("resourceType" in node)
    && ("unit" in node || "code" in node || "system" in node || "comparator" in node);
  if (isQuantity) {
    const ucum = node.system === UCUM;
    const picked = ucum && typeof node.code === "string" ? node.code : node.unit;
    if (typeof picked === "string" && !validUnit(picked)) {
      const micro = picked.replace(/[\u00b5\u03bc]/g, "u");
      const fixed = validUnit(micro)
        ? micro
        : "{" + picked.replace(/[^\x21-\x7e]|[{}]/g, "_") + "}";
      node.system = UCUM;
      node.code = fixed;
      if (node.unit == null) node.unit = picked;
    }
  }
  for (const value of Object.values(node)) {
    if (value && typeof value === "object") sanitizeQuantities(value);
  }
}
