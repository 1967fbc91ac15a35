// Run a zoo web export with transformers.js in Node (onnxruntime-node), as a user would.
//
//   node tests/web/node_client.mjs FOLDER REQUEST.json
//
// Run by tests/test_web.py; imports nothing of zoo. The request holds `prompts` (token-id lists,
// or texts encoded by the folder's tokenizer), `new_tokens` and `dtypes` (transformers.js names:
// fp32, fp16, q4, int8). Prints, per dtype and prompt, the greedy `tokens` (prompt included) of
// model.generate and the prompt's last-position `logits`.
import { readFileSync } from "node:fs";
import path from "node:path";
import { env, AutoModelForCausalLM, AutoTokenizer, Tensor } from "@huggingface/transformers";

const [folder, requestPath] = process.argv.slice(2);
const request = JSON.parse(readFileSync(requestPath, "utf8"));
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + "/";
const id = path.basename(path.resolve(folder));

const needsTokenizer = request.prompts.some((p) => typeof p === "string");
const tokenizer = needsTokenizer ? await AutoTokenizer.from_pretrained(id) : null;
const rows = request.prompts.map((p) => typeof p === "string" ? Array.from(tokenizer(p).input_ids.data, Number) : p);
const tensor = (row, fill) => new Tensor("int64", BigInt64Array.from(row.map(fill)), [1, row.length]);

const answer = { ids: rows, dtypes: {} };
for (const dtype of request.dtypes) {
  const model = await AutoModelForCausalLM.from_pretrained(id, { dtype });
  const results = [];
  for (const row of rows) {
    const inputs = { input_ids: tensor(row, BigInt), attention_mask: tensor(row, () => 1n) };
    const out = await model.generate({ ...inputs, max_new_tokens: request.new_tokens, do_sample: false });
    const output = (await model(inputs)).logits;
    const logits = output.type === "float32" ? output : output.to("float32");  // fp16 data is raw halves
    const [, length, vocab] = logits.dims;
    const last = Array.from(logits.data.slice((length - 1) * vocab, length * vocab), Number);
    results.push({ tokens: out.tolist()[0].map(Number), logits: last });
  }
  answer.dtypes[dtype] = results;
  await model.dispose();
}
console.log(JSON.stringify(answer));
