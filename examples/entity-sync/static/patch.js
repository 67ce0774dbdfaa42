// Applies an RFC 6902 JSON Patch (the ops Herald's diff produces: add, remove, replace; plus
// move, copy and test) to a document and returns the new document. The input is not modified.
const unescape = (token) => token.replace(/~1/g, '/').replace(/~0/g, '~');

function parent(doc, pointer) {
  const tokens = pointer.split('/').slice(1).map(unescape);
  const last = tokens.pop();
  let target = doc;
  for (const token of tokens) {
    if (target === null || typeof target !== 'object' || !(token in target)) throw new Error(`no path ${pointer}`);
    target = target[token];
  }
  return [target, last];
}

function get(doc, pointer) {
  if (pointer === '') return doc;
  const [target, key] = parent(doc, pointer);
  return target[key];
}

function put(doc, pointer, value, insert) {
  if (pointer === '') return value;
  const [target, key] = parent(doc, pointer);
  if (Array.isArray(target)) {
    const index = key === '-' ? target.length : Number(key);
    target.splice(index, insert ? 0 : 1, value);
  } else {
    target[key] = value;
  }
  return doc;
}

function remove(doc, pointer) {
  const [target, key] = parent(doc, pointer);
  if (Array.isArray(target)) target.splice(Number(key), 1);
  else delete target[key];
  return doc;
}

export function applyPatch(document, patch) {
  let doc = structuredClone(document ?? null);
  for (const op of patch) {
    switch (op.op) {
      case 'add': doc = put(doc, op.path, structuredClone(op.value), true); break;
      case 'replace': doc = put(doc, op.path, structuredClone(op.value), false); break;
      case 'remove': doc = remove(doc, op.path); break;
      case 'copy': doc = put(doc, op.path, structuredClone(get(doc, op.from)), true); break;
      case 'move': { const value = get(doc, op.from); doc = remove(doc, op.from); doc = put(doc, op.path, value, true); break; }
      case 'test':
        if (JSON.stringify(get(doc, op.path)) !== JSON.stringify(op.value)) throw new Error(`test failed at ${op.path}`);
        break;
      default: throw new Error(`unknown patch op ${op.op}`);
    }
  }
  return doc;
}
