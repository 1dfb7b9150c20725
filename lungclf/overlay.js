// The heatmap drawn in the visitor's browser: the map's grid (what /classify returns,
// 0..1 rows) over the image, as lungclf.heatmap.overlay draws it in Python, so the server
// never makes, encodes or stores a picture for the page. app.py runs this as the `js` of
// the page's events, with JET (OpenCV's colour map, 256 RGB triples) filled in.
//
// Same steps as Python: the image at display size (its own size, shrunk to 384 px on the
// long side); the grid upsampled bilinearly with OpenCV's half-pixel centres; each value
// v -> JET[floor(clip(v * 255, 0, 255))]; blended as round(heat * opacity + pixel * (1 - opacity)).
// A format the browser cannot show (TIFF) gets the map on grey. The canvas keeps what it
// shows in data-state ("empty", "drawn") for the tests.
(grid, image, opacity) => {
  const JET = __JET__;
  const canvas = document.querySelector("#heatmap-canvas");
  if (!canvas) return;
  const url = image && (image.url || (image.path && "/gradio_api/file=" + image.path));
  if (!grid || !grid.length || !url) {
    canvas.width = canvas.height = 0;
    canvas.dataset.state = "empty";
    return;
  }
  const draw = (img) => {
    const longest = 384;
    const iw = img ? img.naturalWidth : 256, ih = img ? img.naturalHeight : 256;
    const scale = Math.min(1, longest / Math.max(iw, ih));
    const w = Math.max(1, Math.round(iw * scale)), h = Math.max(1, Math.round(ih * scale));
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "rgb(128,128,128)";
    ctx.fillRect(0, 0, w, h);
    if (img) ctx.drawImage(img, 0, 0, w, h);
    const pixels = ctx.getImageData(0, 0, w, h);
    const d = pixels.data, gh = grid.length, gw = grid[0].length;
    const a = Math.min(1, Math.max(0, Number(opacity)));
    for (let y = 0; y < h; y++) {
      const sy = Math.min(gh - 1, Math.max(0, (y + 0.5) * gh / h - 0.5));
      const y0 = Math.floor(sy), y1 = Math.min(gh - 1, y0 + 1), fy = sy - y0;
      for (let x = 0; x < w; x++) {
        const sx = Math.min(gw - 1, Math.max(0, (x + 0.5) * gw / w - 0.5));
        const x0 = Math.floor(sx), x1 = Math.min(gw - 1, x0 + 1), fx = sx - x0;
        const v = (grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx) * (1 - fy)
                + (grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx) * fy;
        const c = JET[Math.floor(Math.min(255, Math.max(0, v * 255)))];
        const i = 4 * (y * w + x);
        for (let k = 0; k < 3; k++) d[i + k] = Math.round(c[k] * a + d[i + k] * (1 - a));
        d[i + 3] = 255;
      }
    }
    ctx.putImageData(pixels, 0, 0);
    canvas.dataset.state = "drawn";
  };
  const img = new Image();
  img.onload = () => draw(img);
  img.onerror = () => draw(null);
  img.src = url;
}
