// Start-up check shared by the engine patches: a patch replaces private internals of one
// pinned package version, so it refuses to apply to anything else.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

function packageDir(name) {
  return path.dirname(require.resolve(`${name}/package.json`));
}

/**
 * Throws unless `target.package` is installed at `target.version` and `target.file` (relative
 * to the package) has SHA-256 `target.sha256`: the upstream text the patch was written against.
 */
export function checkTarget(patchName, target) {
  const dir = packageDir(target.package);
  const { version } = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  if (version !== target.version) {
    throw new Error(`engine patch ${patchName} replaces ${target.package} ${target.version} ${target.file}, `
      + `but ${target.package} ${version} is installed: update or switch off the patch (TRIAL_CDS_ENGINE_PATCHES)`);
  }
  const text = fs.readFileSync(path.join(dir, target.file));
  const sha = crypto.createHash("sha256").update(text).digest("hex");
  if (sha !== target.sha256) {
    throw new Error(`engine patch ${patchName}: ${target.package} ${version} ${target.file} is not the reviewed `
      + `text (sha256 ${sha}): update or switch off the patch (TRIAL_CDS_ENGINE_PATCHES)`);
  }
}
