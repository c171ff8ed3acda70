// Verifying a signed souverain document (a residency report) in the browser, with the
// browser's own Ed25519 (WebCrypto), against the platform's public key.
//
// The signature covers the document's canonical JSON as the platform writes it: keys
// sorted by code point, no whitespace, strings escaped as Python's json does with
// ensure_ascii=False, numbers exactly as written. JavaScript would rewrite numbers
// (1.0 becomes 1), so the file is parsed here into a tree that keeps each number's text.

class Num {
  constructor(text) {
    this.text = text;
  }
}

export function parseKeepingNumbers(text) {
  let i = 0;
  const fail = (what) => {
    throw new Error(`Not a JSON document (${what} at character ${i}).`);
  };
  const space = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i += 1;
  };
  const value = () => {
    space();
    const c = text[i];
    if (c === "{") return object();
    if (c === "[") return array();
    if (c === '"') return string();
    if (c === "t" && text.startsWith("true", i)) return (i += 4), true;
    if (c === "f" && text.startsWith("false", i)) return (i += 5), false;
    if (c === "n" && text.startsWith("null", i)) return (i += 4), null;
    const match = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 64));
    if (!match) fail("unexpected character");
    i += match[0].length;
    return new Num(match[0]);
  };
  const object = () => {
    i += 1;
    const out = new Map();
    space();
    if (text[i] === "}") return (i += 1), out;
    for (;;) {
      space();
      if (text[i] !== '"') fail("expected a key");
      const key = string();
      space();
      if (text[i] !== ":") fail("expected ':'");
      i += 1;
      out.set(key, value());
      space();
      if (text[i] === ",") i += 1;
      else if (text[i] === "}") return (i += 1), out;
      else fail("expected ',' or '}'");
    }
  };
  const array = () => {
    i += 1;
    const out = [];
    space();
    if (text[i] === "]") return (i += 1), out;
    for (;;) {
      out.push(value());
      space();
      if (text[i] === ",") i += 1;
      else if (text[i] === "]") return (i += 1), out;
      else fail("expected ',' or ']'");
    }
  };
  const string = () => {
    const start = i;
    i += 1;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    if (i >= text.length) fail("unterminated string");
    i += 1;
    return JSON.parse(text.slice(start, i));
  };
  const result = value();
  space();
  if (i !== text.length) fail("trailing characters");
  return result;
}

const SHORT = { '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t" };

function quote(text) {
  // eslint-disable-next-line no-control-regex
  return `"${text.replace(/[\u0000-\u001f"\\]/g, (c) => SHORT[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)}"`;
}

function byCodePoint(a, b) {
  const [x, y] = [Array.from(a), Array.from(b)];
  for (let k = 0; k < Math.min(x.length, y.length); k += 1) {
    const d = x[k].codePointAt(0) - y[k].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

export function canonical(node) {
  if (node === null) return "null";
  if (node === true) return "true";
  if (node === false) return "false";
  if (node instanceof Num) return node.text;
  if (typeof node === "string") return quote(node);
  if (Array.isArray(node)) return `[${node.map(canonical).join(",")}]`;
  const keys = [...node.keys()].sort(byCodePoint);
  return `{${keys.map((k) => `${quote(k)}:${canonical(node.get(k))}`).join(",")}}`;
}

function bytesOf(base64) {
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function pemToDer(pem) {
  return bytesOf(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""));
}

async function keyIdOf(raw) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", raw));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("").slice(0, 32);
}

// { ok, reason, keyId }: the verdict on a signed file's text, against a trusted PEM key.
export async function verifySigned(text, trustedPem) {
  if (!globalThis.crypto?.subtle) return { ok: false, reason: "This browser offers no WebCrypto here: open the console over HTTPS (or on localhost)." };
  let tree;
  try {
    tree = parseKeepingNumbers(text);
  } catch (error) {
    return { ok: false, reason: error.message };
  }
  const signature = tree instanceof Map ? tree.get("signature") : null;
  const documentNode = tree instanceof Map ? tree.get("document") : null;
  if (!(signature instanceof Map) || documentNode === undefined || documentNode === null) return { ok: false, reason: "The file holds no signed document (no 'document' and 'signature')." };
  if (signature.get("algorithm") !== "Ed25519") return { ok: false, reason: "The signature is not Ed25519." };
  const trusted = await crypto.subtle.importKey("spki", pemToDer(trustedPem), { name: "Ed25519" }, true, ["verify"]);
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", trusted));
  const keyId = await keyIdOf(raw);
  if (signature.get("key_id") !== keyId) return { ok: false, keyId, reason: `Signed by key ${signature.get("key_id")}, not by the platform's key ${keyId}.` };
  let value;
  try {
    value = bytesOf(signature.get("value"));
  } catch {
    return { ok: false, keyId, reason: "The signature value is not base64." };
  }
  const data = new TextEncoder().encode(canonical(documentNode));
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, trusted, value, data);
  return { ok, keyId, reason: ok ? "The signature is valid: the document is exactly what the platform signed." : "The signature does not match: the document was changed after it was signed." };
}
