// A response's body, read in chunks: `onProgress(received, total)` after each (total 0 when
// unknown); returning false from it cancels the read (the result is then null). The page's
// dashboard download and the inference worker's model download share it.
export async function readBody(response, onProgress) {
  const total = Number(response.headers.get('content-length')) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    if (onProgress(received, total) === false) {
      reader.cancel();
      return null;
    }
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.length; }
  return bytes;
}
