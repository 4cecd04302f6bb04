// Validate one .glb with the Khronos glTF validator; print its JSON report; exit 1 when it has errors.
// Usage: node tools/gltf-validator/validate.cjs FILE.glb
const fs = require("node:fs");
const validator = require("gltf-validator");

const path = process.argv[2];
const data = new Uint8Array(fs.readFileSync(path));
validator
  .validateBytes(data, { uri: path, maxIssues: 200 })
  .then((report) => {
    console.log(JSON.stringify(report));
    process.exit(report.issues.numErrors > 0 ? 1 : 0);
  })
  .catch((err) => {
    console.error(String(err));
    process.exit(2);
  });
