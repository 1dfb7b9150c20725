// Classify images with the running app through @gradio/client: a local URL or a Space id.
//
//     npm ci                                    # once: installs @gradio/client from package-lock.json
//     node scripts/client.mjs http://127.0.0.1:7860/ tile.jpeg
//     node scripts/client.mjs owner/space-name tile1.jpeg tile2.png --model lc25000
//     node scripts/client.mjs http://127.0.0.1:7860/ tiles/        # a folder: one /predict_batch
//     node scripts/client.mjs http://127.0.0.1:7860/ scan/ --series --model chest_ct
//
// A folder (its images, DICOM slices and .zip files) goes to /predict_batch as one request;
// with --series everything given goes to /predict_series as the slices of one scan, and the
// last object is {file: "SCAN", label, confidence, confidences} (or {file: "SCAN", error}).
//
// Prints a JSON array with one object per image: {file, label, confidence, confidences,
// wrong_input, heatmap}, or {file, error} for an image the app refused (the exit code is then
// 1). wrong_input is the app's check: wrong_input.wrong_input true means the image does not look
// like the model's training images and the label is not reliable (wrong_input.message says why,
// also printed on stderr); heatmap is the URL of the heatmap image. /predict's outputs are
// documented in docs/api.md. Set HF_TOKEN to call a private Space. For research and education
// only, not for diagnosis.

import { basename } from "node:path";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Client, handle_file } from "@gradio/client";

const USAGE =
  "usage: node scripts/client.mjs URL_OR_SPACE_ID IMAGE_OR_FOLDER [...] [--model NAME] [--series]";

function parse() {
  try {
    const { values, positionals } = parseArgs({
      allowPositionals: true,
      options: {
        model: { type: "string" },
        series: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) {
      console.log(`${USAGE}\n\nClassify lung images with the app (a URL or a Hugging Face Space id)` +
        `\nand print the results as JSON. --model NAME picks a served model (default: the first).` +
        `\nA folder is sent as one /predict_batch request; --series sends everything as the` +
        `\nslices of one CT scan to /predict_series.`);
      process.exit(0);
    }
    if (positionals.length < 2) throw new Error("give the app and at least one image");
    return { src: positionals[0], images: positionals.slice(1), model: values.model,
      series: values.series };
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

const isDir = (p) => existsSync(p) && statSync(p).isDirectory();
// A folder's files (not its subfolders; hidden ones skipped), sorted.
const folderFiles = (dir) => readdirSync(dir).filter((n) => !n.startsWith(".")).sort()
  .map((n) => join(dir, n)).filter((p) => statSync(p).isFile());

// Rows of a /predict_batch or /predict_series table -> result objects.
const tableRows = (table) => table.data.map(([file, label, confidence, warning, score, error]) =>
  (error ? { file, error }
    : { file, label, confidence, wrong_input: { wrong_input: Boolean(warning), message: warning, score } }));

async function classifyMany(client, paths, model, series) {
  try {
    const { data } = await client.predict(series ? "/predict_series" : "/predict_batch", {
      // Files with their names: the app tells .zip and .dcm files, and names the rows, by them.
      files: paths.map((p) => new File([readFileSync(p)], basename(p))),
      ...(model ? { model } : {}),
    });
    if (!series) return tableRows(data[0]);
    const [scan, text, table] = data;
    if (!scan?.label) return [...tableRows(table), { file: "SCAN", error: text }];
    const { label, confidences } = scan;
    const confidence = confidences.find((c) => c.label === label).confidence;
    const answer = { file: "SCAN", label, confidence, confidences };
    return [...tableRows(table), answer];
  } catch (e) {
    return [{ file: "(request)", error: message(e) }];
  }
}

const { src, images, model, series } = parse();
let client;
try {
  const token = process.env.HF_TOKEN || undefined;
  client = await Client.connect(src, { token, events: ["data", "status"] });
} catch (e) {
  console.error(`error: cannot connect to ${src}: ${message(e)}`);
  process.exit(2);
}
const results = [];
if (series) {
  const paths = images.flatMap((p) => (isDir(p) ? folderFiles(p) : [p]));
  results.push(...(await classifyMany(client, paths, model, true)));
} else {
  for (const path of images) {
    if (isDir(path)) results.push(...(await classifyMany(client, folderFiles(path), model, false)));
    else results.push(await classify(client, path, model));
  }
}
console.log(JSON.stringify(results, null, 2));
client.close?.();
process.exit(results.some((r) => r.error) ? 1 : 0);
