// Run a zoo translator's web export with transformers.js in Node (onnxruntime-node), as a user would.
//
//   node tests/web/node_translator.mjs FOLDER REQUEST.json
//
// Run by tests/test_web.py; imports nothing of zoo. The request holds `sources` (English
// sentences, or token-id lists), `new_tokens` (one limit per source) and `dtypes`
// (transformers.js names). Prints, per dtype and source, the greedy `tokens` of model.generate
// (the decoder start token first) and the `logits` of the first target position; for the first
// dtype it also runs pipeline("translation") on the sentences and prints `texts`.
import { readFileSync } from "node:fs";
import path from "node:path";
import { env, pipeline, AutoModelForSeq2SeqLM, AutoTokenizer, Tensor } from "@huggingface/transformers";

const [folder, requestPath] = process.argv.slice(2);
const request = JSON.parse(readFileSync(requestPath, "utf8"));
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + "/";
const id = path.basename(path.resolve(folder));

const texts = request.sources.filter((s) => typeof s === "string");
const tokenizer = texts.length ? await AutoTokenizer.from_pretrained(id) : null;
const rows = request.sources.map((s) => typeof s === "string" ? Array.from(tokenizer(s).input_ids.data, Number) : s);
const tensor = (row, fill) => new Tensor("int64", BigInt64Array.from(row.map(fill)), [1, row.length]);

const answer = { ids: rows, dtypes: {} };
for (const dtype of request.dtypes) {
  const model = await AutoModelForSeq2SeqLM.from_pretrained(id, { dtype });
  const start = BigInt(model.generation_config.decoder_start_token_id);
  const results = [];
  for (const [n, row] of rows.entries()) {
    const inputs = { input_ids: tensor(row, BigInt), attention_mask: tensor(row, () => 1n) };
    const out = await model.generate({ ...inputs, max_new_tokens: request.new_tokens[n], do_sample: false });
    const first = (await model({ ...inputs, decoder_input_ids: new Tensor("int64", [start], [1, 1]) })).logits;
    const logits = first.type === "float32" ? first : first.to("float32");
    results.push({ tokens: out.tolist()[0].map(Number), logits: Array.from(logits.data, Number) });
  }
  answer.dtypes[dtype] = results;
  if (dtype === request.dtypes[0] && texts.length) {
    const translator = await pipeline("translation", id, { dtype });
    answer.texts = [];
    for (const [n, source] of request.sources.entries()) {
      if (typeof source !== "string") continue;
      const [result] = await translator(source, { max_new_tokens: request.new_tokens[n] });
      answer.texts.push(result.translation_text);
    }
    await translator.dispose();
  }
  await model.dispose();
}
console.log(JSON.stringify(answer));
