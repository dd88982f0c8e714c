// The checker, off the page's main thread: loads the playground's .wasm (resetguard-core and the
// CLI's validate/explain, built with wasm-bindgen) and answers one request at a time.
//
// A Rust panic cannot unwind in wasm32-unknown-unknown: it traps. The module's panic hook calls
// resetguardPanic(message) just before the trap; the trap arrives here as an exception, is turned
// into a message, and this worker tells the page it must be replaced (its instance may be in any
// state after a trap).
import init, * as rg from './pkg/resetguard_playground.js';

let panicMessage = null;
self.resetguardPanic = (message) => { panicMessage = message; };

const ready = (async () => {
  const response = await fetch(new URL('./pkg/resetguard_playground_bg.wasm', import.meta.url));
  if (!response.ok) throw new Error(`cannot load the checker: HTTP ${response.status}`);
  const bytes = await response.arrayBuffer();
  await init({ module_or_path: bytes });
  return bytes.byteLength;
})();

ready.then(
  (wasmBytes) => postMessage({
    ready: true,
    wasmBytes,
    about: JSON.parse(rg.about()),
    presets: JSON.parse(rg.presets()),
  }),
  (e) => postMessage({ ready: false, fatal: true, error: String(e && e.message || e) }),
);

function call(msg) {
  switch (msg.op) {
    case 'validate': return rg.validate(msg.name, msg.text);
    case 'validateBytes': return rg.validateBytes(msg.name, new Uint8Array(msg.bytes));
    case 'explain': return rg.explain(msg.name, msg.text, JSON.stringify(msg.request));
    case 'panic': rg.selftestPanic(); return 'null';
    default: throw new Error(`unknown operation ${msg.op}`);
  }
}

self.onmessage = async (event) => {
  const msg = event.data;
  await ready;
  panicMessage = null;
  try {
    postMessage({ id: msg.id, ok: true, result: JSON.parse(call(msg)) });
  } catch (e) {
    const trap = e instanceof WebAssembly.RuntimeError || e instanceof RangeError;
    const what = panicMessage
      ? `the checker panicked (${panicMessage})`
      : `the checker failed (${e && e.name ? `${e.name}: ${e.message}` : e})`;
    postMessage({ id: msg.id, ok: false, fatal: true, trap, error: what });
  }
};
