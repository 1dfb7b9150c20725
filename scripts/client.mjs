// Classify images with the running app through @gradio/client: a local URL or a Space id.
//
//     npm ci                                    # once: installs @gradio/client from package-lock.json
//     node scripts/client.mjs http://127.0.0.1:7860/ tile.jpeg
//     node scripts/client.mjs owner/space-name tile1.jpeg tile2.png --model lc25000
//
// Prints a JSON array with one object per image: {file, label, confidence, confidences,
// wrong_input, heatmap}, or {file, error} for an image the app refused (the exit code is then
// 1). wrong_input is the app's check: wrong_input.wrong_input true means the image does not look
// like the model's training images and the label is not reliable (wrong_input.message says why,
// also printed on stderr); heatmap is the URL of the heatmap image. /predict's outputs are
// documented in docs/api.md. Set HF_TOKEN to call a private Space. For research and education
// only, not for diagnosis.

import { basename } from "node:path";
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { Client, handle_file } from "@gradio/client";

const USAGE = "usage: node scripts/client.mjs URL_OR_SPACE_ID IMAGE [IMAGE ...] [--model NAME]";

function parse() {
  try {
    const { values, positionals } = parseArgs({
      allowPositionals: true,
      options: { model: { type: "string" }, help: { type: "boolean", short: "h" } },
    });
    if (values.help) {
      console.log(`${USAGE}\n\nClassify lung images with the app (a URL or a Hugging Face Space id)` +
        `\nand print the results as JSON. --model NAME picks a served model (default: the first).`);
      process.exit(0);
    }
    if (positionals.length < 2) throw new Error("give the app and at least one image");
    return { src: positionals[0], images: positionals.slice(1), model: values.model };
  } catch (e) {
    console.error(`${USAGE}\nerror: ${e.message}`);
    process.exit(2);
  }
}

// A gradio error reaches us as a status object, an Error or a string; keep only its message.
const message = (e) => (typeof e === "string" ? e : e?.message ?? JSON.stringify(e));

async function classify(client, path, model) {
  const file = basename(path);
  if (!existsSync(path)) return { file, error: `no such file: ${path}` };
  try {
    const { data } = await client.predict("/predict", {
      image: handle_file(path),
      ...(model ? { model } : {}),
    });
    const { label, confidences } = data[0];
    const confidence = confidences.find((c) => c.label === label).confidence;
    const wrong_input = data[1];
    if (wrong_input?.wrong_input) console.error(`${file}: NOT RELIABLE: ${wrong_input.message}`);
    return { file, label, confidence, confidences, wrong_input, heatmap: data[2]?.url ?? null };
  } catch (e) {
    return { file, error: message(e) };
  }
}

const { src, images, model } = parse();
let client;
try {
  const token = process.env.HF_TOKEN || undefined;
  client = await Client.connect(src, { token, events: ["data", "status"] });
} catch (e) {
  console.error(`error: cannot connect to ${src}: ${message(e)}`);
  process.exit(2);
}
const results = [];
for (const path of images) results.push(await classify(client, path, model));
console.log(JSON.stringify(results, null, 2));
client.close?.();
process.exit(results.some((r) => r.error) ? 1 : 0);
