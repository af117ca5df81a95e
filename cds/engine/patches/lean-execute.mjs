// Engine patch (performance): no per-node result bookkeeping.
// Replaces: cql-execution 3.3.2, lib/elm/expression.js, Expression.prototype.execute (every node
// but ExpressionDef, which keeps the original and so still annotates runtime errors with the
// library, define and locator).
//
// Every ELM node's execute() awaited its exec() inside a try/catch and recorded its result by
// localId (for annotated-source views, which the service never reads). Per node that is an
// extra promise and map write; over ~10^4-10^5 nodes per patient it was ~13% of the time.
// `prepareElm` drops the localIds at load, as the original records nothing without them.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const name = "lean-execute";
export const kind = "performance";
export const targets = [{
  package: "cql-execution", version: "3.3.2", file: "lib/elm/expression.js",
  sha256: "8b7a96724fdfc22be51433509b160e835573587f4cc8d1591fb607acf6f333f2",
}];

export function apply() {
  const { Expression } = require("cql-execution/lib/elm/expression");
  const { ExpressionDef } = require("cql-execution/lib/elm/reusable");
  const annotated = Expression.prototype.execute;
  Expression.prototype.execute = function execute(ctx) {
    return this.exec(ctx);
  };
  ExpressionDef.prototype.execute = annotated;
}

/** Remove localIds from ELM; returns the same object. */
export function prepareElm(node) {
  if (Array.isArray(node)) {
    for (const item of node) prepareElm(item);
  } else if (node !== null && typeof node === "object") {
    delete node.localId;
    for (const value of Object.values(node)) {
      if (value !== null && typeof value === "object") prepareElm(value);
    }
  }
  return node;
}
