// Load ONNX graphs in onnxruntime-web's browser build (ort-wasm-simd-threaded.asyncify, the one
// transformers.js picks in browsers), run in Node; print {path: "ok" | the error} as JSON.
//
//   node tests/web/ort_web_probe.mjs GRAPH.onnx ...
import * as ort from "onnxruntime-web";

const dist = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
const build = "ort-wasm-simd-threaded.asyncify";
ort.env.wasm.wasmPaths = { mjs: `${dist}${build}.mjs`, wasm: `${dist}${build}.wasm` };
ort.env.wasm.numThreads = 1;
ort.env.logLevel = "error";
const answer = {};
for (const path of process.argv.slice(2)) {
  try {
    const session = await ort.InferenceSession.create(path);
    await session.release();
    answer[path] = "ok";
  } catch (error) {
    answer[path] = String(error.message ?? error);
  }
}
console.log(JSON.stringify(answer));
