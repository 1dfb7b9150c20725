/**
 * The static page's one module: a model bundle (model.onnx + wrong_input.npz + metadata.json)
 * run in the visitor's browser with onnxruntime-web, so the image never leaves the computer.
 *
 * Open web/index.html through any static server, e.g. from the repository root:
 *     python -m http.server 8000 --bind 127.0.0.1
 *     http://127.0.0.1:8000/web/?model=../models/lc25000/
 *     http://127.0.0.1:8000/web/?model=https://huggingface.co/OWNER/NAME/resolve/COMMIT/
 * (docs/web.md). It does what lungclf does for one image, step for step:
 *   decode      the browser's decoders (EXIF rotation applied, colour profiles ignored, alpha over
 *               black, as lungclf.preprocess.to_rgb); a JPEG Pillow would decode at 1/2, 1/4 or 1/8
 *               scale (draft) is reduced by the same factor here (a box mean: see `draftReduce`)
 *   resize      lungclf.preprocess.resize: OpenCV's INTER_AREA / INTER_LINEAR ported below, bit
 *               for bit on uint8 (tests/test_web.py)
 *   forward     model.onnx: logits, features, maps (training/export.py)
 *   answer      softmax(logits / temperature); the wrong-input check (lungclf.wrong_input: colour,
 *               pixel statistics, feature distance); the top class's map, normalised as
 *               lungclf.heatmap.normalise, drawn by lungclf/overlay.js (the app's own code)
 * The pure functions are exported for Node (tests); the page starts itself in a browser.
 */

// The messages lungclf.preprocess gives for a file it cannot use, word for word.
export const MAX_PIXELS = 40_000_000;
export const MIN_SIDE = 16;
export const NOT_AN_IMAGE = "This file is not an image we can read. Use JPEG, PNG, BMP, WebP, TIFF, GIF or DICOM.";
export const TOO_LARGE = `The image is too large (more than ${MAX_PIXELS.toLocaleString("en-US")} pixels).`;
export const DAMAGED = "The image file is damaged or truncated and cannot be decoded.";
export const NOT_IN_BROWSER = (kind) => `This browser cannot read ${kind} files. Save it as PNG or JPEG, or use the app (it reads ${kind}).`;
const KINDS = { histopathology: "histopathology tiles", CT: "CT slices" };
export const kindOf = (modality) => KINDS[modality] || `${modality} images`;

export class ImageError extends Error {}

// ---------------------------------------------------------------- resize: OpenCV's, ported

const f32 = Math.fround;

/** OpenCV's cvRound for a float: round half to even, clamped to 0..255 (saturate_cast<uchar>). */
function roundByte(v) {
  let r = Math.round(v);
  if (r - v === 0.5 && r % 2 !== 0) r -= 1; // a tie: to even, as lrint does
  return r < 0 ? 0 : r > 255 ? 255 : r;
}

/** computeResizeAreaTab: [source index, destination index, weight (float32)] per contribution. */
function areaTable(ssize, dsize, scale) {
  const tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push([sx1 - 1, dx, f32((sx1 - fsx1) / cellWidth)]);
    for (let sx = sx1; sx < sx2; sx++) tab.push([sx, dx, f32(1.0 / cellWidth)]);
    if (fsx2 - sx2 > 1e-3) tab.push([sx2, dx, f32(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth)]);
  }
  return tab;
}

/** INTER_AREA shrinking by a non-integer factor (ResizeArea_Invoker<uchar, float>): float32 sums. */
function resizeAreaGeneral(src, w, h, dw, dh) {
  const xtab = areaTable(w, dw, w / dw), ytab = areaTable(h, dh, h / dh);
  const out = new Uint8Array(dw * dh * 3);
  const buf = new Float64Array(dw * 3), sum = new Float64Array(dw * 3);
  let prev = ytab[0][1];
  const flush = (dy) => {
    for (let i = 0; i < dw * 3; i++) out[dy * dw * 3 + i] = roundByte(sum[i]);
  };
  for (const [sy, dy, beta] of ytab) {
    buf.fill(0);
    const row = sy * w * 3;
    for (const [sx, dx, alpha] of xtab) {
      const s = row + sx * 3, d = dx * 3;
      buf[d] = f32(buf[d] + f32(src[s] * alpha));
      buf[d + 1] = f32(buf[d + 1] + f32(src[s + 1] * alpha));
      buf[d + 2] = f32(buf[d + 2] + f32(src[s + 2] * alpha));
    }
    if (dy !== prev) {
      flush(prev);
      for (let i = 0; i < dw * 3; i++) sum[i] = f32(beta * buf[i]);
      prev = dy;
    } else {
      for (let i = 0; i < dw * 3; i++) sum[i] = f32(sum[i] + f32(beta * buf[i]));
    }
  }
  flush(prev);
  return out;
}

/** INTER_AREA shrinking by whole factors (ResizeAreaFast): the block's mean, rounded; 2 x 2
 * blocks as OpenCV's SIMD code does them, (a + b + c + d + 2) >> 2. */
function resizeAreaFast(src, w, h, dw, dh) {
  const sx = w / dw, sy = h / dh, area = sx * sy, scale = f32(1 / area);
  const out = new Uint8Array(dw * dh * 3);
  for (let dy = 0; dy < dh; dy++) {
    for (let dx = 0; dx < dw; dx++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let j = 0; j < sy; j++) {
          const row = ((dy * sy + j) * w + dx * sx) * 3 + c;
          for (let i = 0; i < sx; i++) s += src[row + i * 3];
        }
        out[(dy * dw + dx) * 3 + c] = area === 4 && sx === 2 ? (s + 2) >> 2 : roundByte(f32(s * scale));
      }
    }
  }
  return out;
}

/** The fixed-point (11-bit) coefficients of INTER_LINEAR, or of INTER_AREA when enlarging
 * along this axis: [source index, weight of it, weight of the next] per destination index. */
function linearTable(ssize, dsize, areaMode, clamp) {
  const scale = ssize / dsize, tab = [];
  for (let d = 0; d < dsize; d++) {
    let s, f;
    if (areaMode) {
      s = Math.floor(d * scale);
      f = f32((d + 1) - (s + 1) * (dsize / ssize));
      f = f <= 0 ? 0 : f32(f - Math.floor(f));
    } else {
      f = f32((d + 0.5) * scale - 0.5);
      s = Math.floor(f);
      f = f32(f - s);
    }
    if (clamp && s < 0) { s = 0; f = 0; } // columns only: rows are clipped when read, below
    if (clamp && s >= ssize - 1) { s = ssize - 1; f = 0; }
    const a1 = Math.round(f32(f * 2048)), a0 = Math.round(f32(f32(1 - f) * 2048));
    tab.push([s, a0, a1]);
  }
  return tab;
}

/** INTER_LINEAR for uint8 (and INTER_AREA when an axis grows): fixed point, rows then columns,
 * rounded as OpenCV's SIMD code rounds: ((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2 >> 2. */
function resizeLinear(src, w, h, dw, dh, areaMode) {
  const xt = linearTable(w, dw, areaMode, true), yt = linearTable(h, dh, areaMode, false);
  const clip = (y) => Math.min(Math.max(y, 0), h - 1);
  const rows = new Map();
  const hrow = (sy) => {
    if (!rows.has(sy)) {
      const r = new Int32Array(dw * 3), base = sy * w * 3;
      for (let dx = 0; dx < dw; dx++) {
        const [sx, a0, a1] = xt[dx], s0 = base + sx * 3, s1 = sx + 1 < w ? s0 + 3 : s0;
        for (let c = 0; c < 3; c++) r[dx * 3 + c] = src[s0 + c] * a0 + src[s1 + c] * a1;
      }
      rows.set(sy, r);
    }
    return rows.get(sy);
  };
  const out = new Uint8Array(dw * dh * 3);
  for (let dy = 0; dy < dh; dy++) {
    const [sy, b0, b1] = yt[dy];
    const r0 = hrow(clip(sy)), r1 = hrow(clip(sy + 1));
    for (let i = 0; i < dw * 3; i++) {
      const v = (((b0 * (r0[i] >> 4)) >> 16) + ((b1 * (r1[i] >> 4)) >> 16) + 2) >> 2;
      out[dy * dw * 3 + i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return out;
}

/** lungclf.preprocess.resize: RGB uint8 (w x h) -> (size x size); area when the image has more
 * pixels than size x size, linear otherwise, the way OpenCV's cv2.resize does each. */
export function resize(src, w, h, size) {
  if (w === size && h === size) return src;
  if (w * h > size * size) {
    if (w >= size && h >= size) {
      if (Number.isInteger(w / size) && Number.isInteger(h / size)) return resizeAreaFast(src, w, h, size, size);
      return resizeAreaGeneral(src, w, h, size, size);
    }
    return resizeLinear(src, w, h, size, size, true);
  }
  return resizeLinear(src, w, h, size, size, false);
}

// ---------------------------------------------------------------- decoding (lungclf.preprocess)

/** The format from a file's first 132 bytes, as Pillow's header check knows it; null: not ours. */
export function sniff(b) {
  const at = (i, text) => [...text].every((c, k) => b[i + k] === c.charCodeAt(0));
  if (b.length >= 132 && at(128, "DICM")) return "DICOM";
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if (at(0, "\x89PNG")) return "PNG";
  if (at(0, "GIF8")) return "GIF";
  if (at(0, "BM")) return "BMP";
  if (at(0, "RIFF") && at(8, "WEBP")) return "WEBP";
  if (at(0, "II*\x00") || at(0, "MM\x00*")) return "TIFF";
  return null;
}

/** Pillow's JPEG draft scale for a model input of `size`: 8, 4, 2 or 1 (ImageFile.draft). */
export function draftScale(width, height, size) {
  const scale = Math.min(Math.floor(width / size), Math.floor(height / size));
  return [8, 4, 2, 1].find((s) => scale >= s) || 1;
}

/** What a 1/s-scale JPEG decode gives, approximated by the mean of each s x s block (libjpeg's
 * scaled inverse DCT is exactly the block mean at 1/8 before colour conversion, close to it at
 * 1/2 and 1/4); the size is Pillow's, ceil(w / s) x ceil(h / s). */
export function draftReduce(rgb, w, h, s) {
  const dw = Math.ceil(w / s), dh = Math.ceil(h / s), out = new Uint8Array(dw * dh * 3);
  for (let dy = 0; dy < dh; dy++) {
    const y1 = Math.min(h, dy * s + s);
    for (let dx = 0; dx < dw; dx++) {
      const x1 = Math.min(w, dx * s + s), n = (y1 - dy * s) * (x1 - dx * s);
      for (let c = 0; c < 3; c++) {
        let sum = 0;
        for (let y = dy * s; y < y1; y++) for (let x = dx * s; x < x1; x++) sum += rgb[(y * w + x) * 3 + c];
        out[(dy * dw + dx) * 3 + c] = roundByte(sum / n);
      }
    }
  }
  return { rgb: out, width: dw, height: dh };
}

/** A file that ends before its end marker (Pillow: "damaged or truncated"). */
function truncated(format, tail) {
  const has = (seq) => tail.some((_, i) => seq.every((v, k) => tail[i + k] === v));
  if (format === "JPEG") return !has([0xff, 0xd9]);
  if (format === "PNG") return !has([0x49, 0x45, 0x4e, 0x44]); // IEND
  return false;
}

/** The image's size from its header, before any pixel is decoded (an <img> decodes lazily). */
function headerSize(blob) {
  return new Promise((resolve, reject) => {
    const img = new Image(), url = URL.createObjectURL(blob);
    img.onload = () => { URL.revokeObjectURL(url); resolve([img.naturalWidth, img.naturalHeight]); };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new ImageError(NOT_AN_IMAGE)); };
    img.src = url;
  });
}

/** A File or Blob -> {rgb (H x W x 3 uint8), width, height, format}, as lungclf.preprocess.read_rgb
 * decodes it for a model input of `size`; ImageError with the app's message for a file it refuses. */
export async function readRGB(blob, size) {
  if (!blob.size) throw new ImageError("The file is empty.");
  const format = sniff(new Uint8Array(await blob.slice(0, 132).arrayBuffer()));
  if (format === "DICOM" || format === "TIFF") throw new ImageError(NOT_IN_BROWSER(format));
  if (!format) throw new ImageError(NOT_AN_IMAGE);
  const [width, height] = await headerSize(blob);
  if (width * height > MAX_PIXELS) {
    const n = (v) => v.toLocaleString("en-US");
    throw new ImageError(`The image is too large (${n(width)} x ${n(height)} pixels; at most ${n(MAX_PIXELS)} pixels).`);
  }
  if (Math.min(width, height) < MIN_SIDE) {
    throw new ImageError(`The image is too small (${width} x ${height} pixels; at least ${MIN_SIDE} pixels a side).`);
  }
  if (truncated(format, [...new Uint8Array(await blob.slice(Math.max(0, blob.size - 1024)).arrayBuffer())])) {
    throw new ImageError(DAMAGED);
  }
  let bitmap;
  try { // EXIF rotation applied, colour profiles ignored (Pillow ignores them too)
    bitmap = await createImageBitmap(blob, { imageOrientation: "from-image", colorSpaceConversion: "none",
                                             premultiplyAlpha: "premultiply" });
  } catch {
    throw new ImageError(DAMAGED);
  }
  const w = bitmap.width, h = bitmap.height;
  const ctx = new OffscreenCanvas(w, h).getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000"; // alpha over black, as to_rgb composites it
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  const s = format === "JPEG" && size ? draftScale(w, h, size) : 1;
  return s > 1 ? { ...draftReduce(rgb, w, h, s), format } : { rgb, width: w, height: h, format };
}

// ---------------------------------------------------------------- the answer (lungclf.inference)

/** Calibrated probabilities: softmax(logits / temperature), in float64. */
export function calibrate(logits, temperature) {
  const z = Array.from(logits, (v) => v / temperature), top = Math.max(...z);
  const e = z.map((v) => Math.exp(v - top)), sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** lungclf.wrong_input.pixel_stats of one input x (S*S*3 float32, 0..255): means and standard
 * deviations of R, G, B, colourfulness, edge strength (of (R + G + B) / 3, summed as R + G + B:
 * exact for integer pixels, as Python's). */
export function pixelStats(x, size) {
  const n = size * size, mean = [0, 0, 0], sq = [0, 0, 0], grey = new Float32Array(n);
  let colour = 0;
  for (let p = 0; p < n; p++) {
    const r = x[3 * p], g = x[3 * p + 1], b = x[3 * p + 2];
    mean[0] += r; mean[1] += g; mean[2] += b;
    colour += Math.max(r, g, b) - Math.min(r, g, b);
    grey[p] = r + g + b;
  }
  for (let c = 0; c < 3; c++) mean[c] /= n;
  for (let p = 0; p < n; p++) for (let c = 0; c < 3; c++) sq[c] += (x[3 * p + c] - mean[c]) ** 2;
  let down = 0, across = 0;
  for (let y = 0; y < size; y++) {
    for (let xx = 0; xx < size; xx++) {
      const v = grey[y * size + xx];
      if (y + 1 < size) down += Math.abs(grey[(y + 1) * size + xx] - v);
      if (xx + 1 < size) across += Math.abs(grey[y * size + xx + 1] - v);
    }
  }
  const edges = (down / ((size - 1) * size) + across / (size * (size - 1))) / 3;
  return [...mean, ...sq.map((v) => Math.sqrt(v / n)), colour / n, edges];
}

/** The packed upper triangle of a symmetric matrix times v (float64). */
function packedTimes(packed, d, v) {
  const y = new Float64Array(d);
  for (let i = 0, k = 0; i < d; i++) {
    let acc = packed[k++] * v[i];
    const vi = v[i];
    for (let j = i + 1; j < d; j++, k++) {
      const p = packed[k];
      acc += p * v[j];
      y[j] += p * vi;
    }
    y[i] += acc;
  }
  return y;
}

const dot = (a, b) => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * b[i]; return s; };

/** The arrays of an .npz as numpy.savez writes it (lungclf.wrong_input.Reference.save): a zip of
 * .npy files, stored, not compressed (zip64 sizes in each entry's extra field), little-endian
 * floats in C order (float16 read as Float32Array). Returns {name: {data: Float64Array | Float32Array, shape}}; throws
 * BundleError for anything else, as numpy.load(allow_pickle=False) refuses object arrays. */
export function readNpz(buffer) {
  const view = new DataView(buffer), bytes = new Uint8Array(buffer), text = new TextDecoder();
  const bad = (why) => new BundleError(`wrong_input.npz: ${why}`);
  const out = {};
  let at = 0;
  while (at + 30 <= buffer.byteLength && view.getUint32(at, true) === 0x04034b50) {
    const flags = view.getUint16(at + 6, true), method = view.getUint16(at + 8, true);
    let size = view.getUint32(at + 18, true);
    const nameLength = view.getUint16(at + 26, true), extraLength = view.getUint16(at + 28, true);
    const name = text.decode(bytes.subarray(at + 30, at + 30 + nameLength));
    if (method !== 0 || flags & 8) throw bad(`${name} is compressed or streamed; numpy.savez writes neither`);
    for (let e = at + 30 + nameLength; size === 0xffffffff && e + 4 <= at + 30 + nameLength + extraLength;) {
      const id = view.getUint16(e, true), length = view.getUint16(e + 2, true);
      if (id === 1) size = Number(view.getBigUint64(e + 4 + 8, true)); // zip64: original size, then compressed
      e += 4 + length;
    }
    const start = at + 30 + nameLength + extraLength;
    if (size === 0xffffffff || start + size > buffer.byteLength) throw bad(`${name} is cut short`);
    const npy = bytes.subarray(start, start + size);
    if (npy[0] !== 0x93 || text.decode(npy.subarray(1, 6)) !== "NUMPY") throw bad(`${name} is not an .npy array`);
    const headerLength = npy[6] === 1 ? view.getUint16(start + 8, true) : view.getUint32(start + 8, true);
    const headerStart = npy[6] === 1 ? 10 : 12, header = text.decode(npy.subarray(headerStart, headerStart + headerLength));
    const descr = /'descr': '([^']*)'/.exec(header), fortran = /'fortran_order': (True|False)/.exec(header);
    const shape = /'shape': \(([^)]*)\)/.exec(header);
    const Type = { "<f8": Float64Array, "<f4": Float32Array, "<f2": Uint16Array }[descr && descr[1]];
    if (!Type || !fortran || fortran[1] !== "False" || !shape) throw bad(`${name} is not a little-endian float array in C order`);
    const dims = shape[1].split(",").map((v) => v.trim()).filter(Boolean).map(Number);
    const n = dims.reduce((a, b) => a * b, 1), offset = start + headerStart + headerLength;
    if (offset + n * Type.BYTES_PER_ELEMENT > start + size) throw bad(`${name} is shorter than its shape`);
    const data = new Type(buffer.slice(offset, offset + n * Type.BYTES_PER_ELEMENT));
    out[name.replace(/\.npy$/, "")] = { data: descr[1] === "<f2" ? Float32Array.from(data, halfToFloat) : data, shape: dims };
    at = start + size;
  }
  return out;
}

/** A float16's bits (numpy's '<f2', IEEE 754 half) as a number. */
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // zero and subnormals
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** The upper triangle, row after row, of a full symmetric (d, d) matrix: how bundles written
 * before 2026-12-03 store the precision (lungclf.wrong_input.Reference.load reads both). */
function packUpper(full, d) {
  const packed = new Float64Array((d * (d + 1)) / 2);
  for (let i = 0, k = 0; i < d; i++) for (let j = i; j < d; j++) packed[k++] = full[i * d + j];
  return packed;
}

/** The bundle's wrong_input.npz (readNpz's arrays; the app's own file) ready to measure, checked
 * as lungclf.wrong_input.Reference.load checks it: the distance of f to class mean m is
 * (f - m)' P (f - m) = f'Pf - 2 f'(Pm) + m'Pm, so one product with P per image (Pm and m'Pm are
 * computed here, once). */
export function reference(arrays, spec, modality, classes) {
  const d = spec.feature_dim, otherNames = spec.known_wrong || [];
  // each array's shape, the first the one written now (the precision: its upper triangle, or full)
  const shapes = { means: [[classes, d]], precision: [[(d * (d + 1)) / 2], [d, d]], stats_mean: [[8]],
                   stats_precision: [[8, 8]] };
  if (otherNames.length) shapes.others = [[otherNames.length, d]];
  for (const [name, allowed] of Object.entries(shapes)) {
    if (!arrays[name] || !allowed.some((shape) => arrays[name].shape.join() === shape.join())) {
      throw new BundleError(`wrong_input.npz: ${name} should be a float array of shape [${allowed[0]}]`);
    }
  }
  const p = arrays.precision, packed = p.shape.length === 2 ? packUpper(p.data, d) : p.data;
  const prepared = (all, n) => Array.from({ length: n }, (_, c) => {
    const m = all.subarray(c * d, (c + 1) * d), pm = packedTimes(packed, d, m);
    return { m, pm, mpm: dot(m, pm) };
  });
  return { d, means: prepared(arrays.means.data, classes), others: otherNames.length ? prepared(arrays.others.data, otherNames.length) : [],
           otherNames, packed, statsMean: arrays.stats_mean.data, statsPrecision: arrays.stats_precision.data,
           threshold: spec.threshold, statsThreshold: spec.stats_threshold, colourRange: spec.colour_range,
           quantile: spec.quantile, modality };
}

/** Mahalanobis distance of the features to the nearest class mean, and the index of the nearest
 * known wrong kind when it is nearer still (else -1): lungclf.wrong_input.Reference.nearest. */
export function featureDistance(ref, features) {
  const f = Float64Array.from(features), pf = packedTimes(ref.packed, ref.d, f), fpf = dot(f, pf);
  const sq = ({ pm, mpm }) => fpf - 2 * dot(f, pm) + mpm;
  const q = Math.min(...ref.means.map(sq)), qo = ref.others.map(sq);
  const o = qo.length && Math.min(...qo) < q ? qo.indexOf(Math.min(...qo)) : -1;
  return { distance: Math.sqrt(Math.max(q, 0)), other: o };
}

function statsDistance(ref, stats) {
  const v = stats.map((s, i) => s - ref.statsMean[i]);
  let q = 0;
  for (let i = 0; i < 8; i++) for (let j = 0; j < 8; j++) q += v[i] * ref.statsPrecision[i * 8 + j] * v[j];
  return Math.sqrt(Math.max(q, 0));
}

/** lungclf.wrong_input.Reference.check for one image: the same checks, order and words. */
export function verdict(ref, stats, features) {
  const kind = kindOf(ref.modality), [lo, hi] = ref.colourRange, col = stats[6];
  const { distance: score, other } = featureDistance(ref, features);
  let check = "features", why = "";
  if (!(col >= lo && col <= hi)) {
    check = "colour";
    why = `It is ${col < lo ? "a grey" : "a coloured"} image; the ${kind} it was trained on are ${col < lo ? "coloured" : "grey"}.`;
  } else if (statsDistance(ref, stats) > ref.statsThreshold) {
    check = "pixels";
    why = `Its brightness, colours and edges are unlike those of any ${kind.slice(0, -1)} the model was trained on.`;
  } else if (other >= 0) {
    why = `What the network sees in it is nearer to the ${ref.otherNames[other]} images it was shown as wrong input than to anything it learned.`;
  } else if (score > ref.threshold) {
    why = `What the network sees in it is far from everything it learned: distance ${score.toFixed(1)}, where ` +
          `${ref.threshold.toFixed(1)} is the limit (set so that ${Math.round((1 - ref.quantile) * 100)}% of the validation images pass).`;
  }
  const message = why ? `This does not look like the ${kind} this model was trained on; its answer is not reliable. ${why}` : "";
  return { wrong_input: Boolean(why), check, score, threshold: ref.threshold, colourfulness: col, message };
}

export const NO_CHECK = "This model has no wrong-input check: it answers for any image, so its label means " +
  "nothing for an image unlike its training images.";

/** The top class's map (h x w of maps (1, h, w, C)) as lungclf.heatmap.normalise and app.grid
 * give it: positive evidence over its maximum, rounded to 4 decimals, as rows. */
export function grid(maps, dims, top) {
  const [, h, w, classes] = dims, rows = [];
  let max = 0;
  for (let i = 0; i < h * w; i++) max = Math.max(max, maps[i * classes + top]);
  for (let y = 0; y < h; y++) {
    const row = [];
    for (let x = 0; x < w; x++) {
      const v = Math.max(0, maps[(y * w + x) * classes + top]);
      row.push(Math.round((max > 0 ? f32(f32(v) / f32(max)) : v) * 1e4) / 1e4);
    }
    rows.push(row);
  }
  return rows;
}

// ---------------------------------------------------------------- the bundle

export class BundleError extends Error {}

const HUB = /^https:\/\/huggingface\.co\/([^/]+\/[^/]+)\/resolve\/([^/]+)\//;

/** Where the bundle is: ?model=URL (a folder beside the page, or a Hub model repo at a commit:
 * https://huggingface.co/OWNER/NAME/resolve/COMMIT/), else config.json's "model" (a Space's
 * page, scripts/push_to_hub.py --web), else the committed lc25000 bundle. */
export async function bundleURL(search, page) {
  let spec = new URLSearchParams(search).get("model");
  if (!spec) {
    const r = await fetch(new URL("config.json", page)).catch(() => null);
    spec = r && r.ok ? (await r.json()).model : "../models/lc25000/";
  }
  const url = new URL(spec.endsWith("/") ? spec : spec + "/", page);
  const hub = HUB.exec(url.href);
  if (hub && !/^[0-9a-f]{40}$/.test(hub[2])) {
    throw new BundleError(`${hub[1]} at "${decodeURIComponent(hub[2])}" is not pinned: give the commit (40 hex digits), so the model cannot change under the page.`);
  }
  return url;
}

async function sha256(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Fetch the bundle's files and check each one the way lungclf.bundle.verify does (sha256 of
 * model.onnx and of the reference, the ONNX export made from this bundle's model.keras). */
async function loadBundle(base, ort) {
  const get = async (name, as) => {
    const r = await fetch(new URL(name, base));
    if (!r.ok) throw new BundleError(`${name}: HTTP ${r.status} from ${new URL(name, base).href}`);
    return as === "json" ? r.json() : as === "blob" ? r.blob() : r.arrayBuffer();
  };
  const [meta, classes] = await Promise.all([get("metadata.json", "json"), get("classes.json", "json")]);
  const onnx = meta.onnx;
  if (!onnx) throw new BundleError("metadata.json has no onnx block: export the bundle first (python -m training.export BUNDLE).");
  if (onnx.source_sha256 !== meta.model.sha256) throw new BundleError("model.onnx was not exported from this bundle's model.keras.");
  const ref = meta.wrong_input; // the app's own reference file, read as the app reads it
  const examples = (meta.examples || []).map((e) => ({ ...e, blob: get(e.file, "blob") }));
  const [model, refData] = await Promise.all([get(onnx.file), ref ? get(ref.file) : null]);
  if (await sha256(model) !== onnx.sha256) throw new BundleError(`sha256 of ${onnx.file} does not match metadata.json; refusing to load it.`);
  let check = null;
  if (ref) {
    if (await sha256(refData) !== ref.sha256) throw new BundleError(`sha256 of ${ref.file} does not match metadata.json; refusing to load it.`);
    check = reference(readNpz(refData), ref, meta.task.modality, meta.classes.length);
  }
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  for (const e of examples) e.blob = await e.blob; // all here now: nothing is fetched after this
  const size = meta.preprocessing.input_size[0];
  const texts = classes.labels.map((l) => (classes.names || {})[l] || l);
  return { meta, classes, texts, size, session, check, examples, temperature: meta.calibration.temperature,
           bytes: model.byteLength + (refData ? refData.byteLength : 0) };
}

/** One image through the bundle: the app's Answer for it (probabilities, verdict, grid), plus the
 * model input (uint8, for the conformance test) and the time taken. */
async function analyse(bundle, ort, blob) {
  const t0 = performance.now();
  const { rgb, width, height } = await readRGB(blob, bundle.size);
  const input = resize(rgb, width, height, bundle.size);
  const x = Float32Array.from(input);
  const s = bundle.size;
  const out = await bundle.session.run({ image: new ort.Tensor("float32", x, [1, s, s, 3]) });
  const probs = calibrate(out.logits.data, bundle.temperature);
  const top = probs.indexOf(Math.max(...probs));
  const v = bundle.check ? verdict(bundle.check, pixelStats(x, s), out.features.data)
    : { wrong_input: false, check: "none", score: null, threshold: null, colourfulness: pixelStats(x, s)[6], message: NO_CHECK };
  const g = grid(out.maps.data, out.maps.dims, top);
  return { probabilities: Object.fromEntries(bundle.texts.map((t, i) => [t, probs[i]])), top: bundle.texts[top],
           verdict: v, grid: g, input, ms: performance.now() - t0 };
}

// ---------------------------------------------------------------- the page

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const bold = (s) => esc(s).replace(/\*\*(.+?)\*\*/g, "<b>$1</b>");

/** app.py's held_out_text and summary, in HTML. */
function summary(bundle) {
  const m = bundle.meta, test = m.metrics.test, e = (m.cross_validation || {}).estimate;
  const counts = Object.entries(m.split.counts).map(([s, c]) => `${s} ${c.images} images / ${c.groups} groups`).join(", ");
  const held = e
    ? `Cross-validated by group (${e.folds} held-out folds, every image answered by a model that never saw its scan or tile): macro-F1 **${test.macro_f1.toFixed(3)}** (95% ${e.interval95[0].toFixed(3)}-${e.interval95[1].toFixed(3)}), accuracy **${test.accuracy.toFixed(3)}** on ${test.images} images.`
    : `Held-out test (groups never seen in training): accuracy **${test.accuracy.toFixed(3)}**, macro-F1 **${test.macro_f1.toFixed(3)}** on ${test.images} images. Split (${m.split.name}): ${counts}.`;
  return `<h3>${esc(m.name)}</h3><p>${bold(`**${m.task.modality}** images, trained on ${m.data.dataset_name}. Classes: ${bundle.texts.join(", ")}.`)}</p>` +
    `<p>${bold(held)}</p><p>${esc(`Input ${bundle.size}x${bundle.size}, ${m.model.architecture} network, ${m.model.parameters.toLocaleString("en-US")} parameters.`)}</p>`;
}

/** app.py's notice(): the check in words, beside the label. */
function notice(v, modality) {
  if (v.check === "none") return `<small>${esc(v.message)}</small>`;
  const kind = kindOf(modality);
  let numbers = `How far what the network sees in this image is from its training images: <b>${v.score.toFixed(1)}</b>; ` +
    `images farther than ${v.threshold.toFixed(1)} are flagged, a limit that about 1 in 20 real ${esc(kind)} cross (a false warning).`;
  if (v.wrong_input && v.check === "features" && v.score <= v.threshold) {
    numbers += " This image is within that limit: it was flagged for the reason above.";
  }
  if (v.wrong_input) {
    return `<h3>⚠ Not reliable</h3><p><b>${esc(v.message)}</b></p><p><small>Check that failed: ${v.check}. ${numbers} ` +
      "The label below is what the model would say, shown only for teaching.</small></p>";
  }
  return `<small>✓ Looks like the ${esc(kind)} this model was trained on. ${numbers}</small>`;
}

async function start() {
  const t0 = performance.now();
  const body = document.body;
  body.dataset.state = "loading";
  const api = { ready: null, analyse: null, readyMs: null };
  window.lungPage = api;
  const status = $("status");
  try {
    const base = await bundleURL(location.search, location.href);
    $("source").textContent = base.href;
    const ort = await import(new URL("../node_modules/onnxruntime-web/dist/ort.wasm.bundle.min.mjs", import.meta.url).href);
    ort.env.wasm.wasmPaths = new URL("../node_modules/onnxruntime-web/dist/", import.meta.url).href;
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    const [bundle, jet, overlaySource] = await Promise.all([
      loadBundle(base, ort),
      fetch(new URL("jet.json", import.meta.url)).then((r) => r.json()),
      fetch(new URL("../lungclf/overlay.js", import.meta.url)).then((r) => r.text()),
    ]);
    // lungclf/overlay.js, the app's own drawing code, with OpenCV's JET filled in as app.py does
    $("heatmap-key").style.background = "linear-gradient(to right, " + jet.filter((_, i) => i % 32 === 0)
      .map((c, k) => `rgb(${c.join(",")}) ${Math.round(k * 32 / 2.55)}%`).join(", ") + `, rgb(${jet[255].join(",")}) 100%)`;
    const draw = new Function(`return (${overlaySource.replace("__JET__", JSON.stringify(jet))}\n)`)();
    const canvas = $("heatmap-canvas");
    const drawn = () => new Promise((resolve) => {
      const seen = new MutationObserver(() => { seen.disconnect(); resolve(); });
      seen.observe(canvas, { attributes: true, attributeFilter: ["data-state"] });
    });
    $("card").innerHTML = summary(bundle);
    let shown = null, url = null;
    const redraw = () => shown && draw(shown.grid, { url }, $("opacity").value);
    $("opacity").addEventListener("input", redraw);

    const run = async (blob, truth) => {
      const answer = $("answer");
      answer.dataset.state = "working";
      $("error").textContent = "";
      try {
        const a = await analyse(bundle, ort, blob);
        if (url) URL.revokeObjectURL(url);
        url = URL.createObjectURL(blob);
        shown = a;
        $("label").textContent = a.top;
        $("confidences").innerHTML = Object.entries(a.probabilities).sort((p, q) => q[1] - p[1]).map(([t, p]) =>
          `<li><span>${esc(t)}</span><meter min="0" max="1" value="${p}"></meter><span>${(100 * p).toFixed(1)}%</span></li>`).join("");
        $("notice").innerHTML = notice(a.verdict, bundle.meta.task.modality);
        $("truth").innerHTML = truth ? bold(`**This example's true class: ${truth}.** The model's answer is ` +
          `${truth === a.top ? "right" : "**wrong**"}. (Examples come from scans or tiles this model never saw.)`) : "";
        const done = drawn();
        redraw();
        await done;
        answer.dataset.state = "answered";
        return a;
      } catch (e) {
        shown = null;
        for (const id of ["label", "confidences", "notice", "truth"]) $(id).innerHTML = "";
        canvas.width = canvas.height = 0;
        canvas.dataset.state = "empty";
        $("error").textContent = e instanceof ImageError ? e.message : "The image could not be classified. Try another file.";
        answer.dataset.state = "error";
        if (!(e instanceof ImageError)) console.error(e);
        return { error: $("error").textContent };
      }
    };
    api.analyse = async (blob, truth) => {
      const t = performance.now();
      const a = await run(blob, truth);
      if (!a.error) a.totalMs = performance.now() - t; // a.ms: the answer; totalMs: with the heatmap drawn
      return a;
    };
    $("file").addEventListener("change", (e) => e.target.files[0] && api.analyse(e.target.files[0]));
    const zone = $("drop");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      const f = e.dataTransfer.files[0];
      if (f) api.analyse(f);
    });
    document.addEventListener("paste", (e) => {
      const f = [...(e.clipboardData || {}).files || []][0];
      if (f) api.analyse(f);
    });
    const names = bundle.classes.names || {};
    $("examples").innerHTML = "";
    for (const e of bundle.examples) {
      const img = document.createElement("img");
      img.src = URL.createObjectURL(e.blob);
      img.alt = img.title = e.file.split("/").pop();
      img.addEventListener("click", () => api.analyse(e.blob, names[e.label] || e.label));
      $("examples").append(img);
    }
    api.readyMs = performance.now() - t0; // since this module started; readyAt: since the page was requested
    api.readyAt = performance.now();
    api.bytes = bundle.bytes;
    status.textContent = `Model ready in ${(api.readyMs / 1000).toFixed(1)} s.`;
    body.dataset.state = "ready";
  } catch (e) {
    status.textContent = `The model could not be loaded: ${e.message}`;
    body.dataset.state = "failed";
    console.error(e);
  }
}

if (typeof document !== "undefined") start();
