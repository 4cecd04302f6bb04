// The DreamPolish wire format (protocol/README.md, "Frames" and "Arrays and blobs"), in JavaScript:
// one multipart message = a msgpack header map + raw binary frames that the header references.
import { decode, encode } from "@msgpack/msgpack";

export const PROTOCOL_VERSION = "1.0";

// dtype -> [bytes per element, reader of one little-endian element from a DataView].
const DTYPES = {
  "<f2": [2, (view, at) => halfToFloat(view.getUint16(at, true))],
  "<f4": [4, (view, at) => view.getFloat32(at, true)],
  "<f8": [8, (view, at) => view.getFloat64(at, true)],
  "|u1": [1, (view, at) => view.getUint8(at)],
  "<u2": [2, (view, at) => view.getUint16(at, true)],
  "<u4": [4, (view, at) => view.getUint32(at, true)],
  "<i4": [4, (view, at) => view.getInt32(at, true)],
  "<i8": [8, (view, at) => Number(view.getBigInt64(at, true))],
};
const DTYPE_WRITERS = {
  "<f4": (view, at, x) => view.setFloat32(at, x, true),
  "<u4": (view, at, x) => view.setUint32(at, x, true),
};

/** IEEE 754 half precision (binary16) bits -> a number. */
function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** An array as the wire carries it: C order, little-endian; `values` flat, `shape` its dimensions. */
export class WireArray {
  constructor(dtype, shape, values) {
    this.dtype = dtype;
    this.shape = shape;
    this.values = values;
  }
}

/** A blob (a PNG file): raw bytes. */
export class Blob {
  constructor(bytes) {
    this.bytes = bytes;
  }
}

let nextId = 0;
export function messageId(prefix = "node") {
  nextId += 1;
  return `${prefix}-${process.pid}-${nextId}`;
}

/** Frames of a message: the header map first, then one frame per array or blob found in `body`. */
export function encodeMessage({ type, id = messageId(), re = "", job = "", seq = 0, body = {} }) {
  const frames = [];
  const header = { v: PROTOCOL_VERSION, type, id, re, job, seq, body: toWire(body, frames) };
  return { id, frames: [Buffer.from(encode(header)), ...frames] };
}

function toWire(value, frames) {
  if (value instanceof WireArray) {
    const [size] = DTYPES[value.dtype];
    const bytes = new DataView(new ArrayBuffer(value.values.length * size));
    value.values.forEach((x, i) => DTYPE_WRITERS[value.dtype](bytes, i * size, x));
    frames.push(Buffer.from(bytes.buffer));
    return { frame: frames.length, dtype: value.dtype, shape: value.shape };
  }
  if (value instanceof Blob) {
    frames.push(Buffer.from(value.bytes));
    return { frame: frames.length };
  }
  if (Array.isArray(value)) return value.map((x) => toWire(x, frames));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, x]) => [k, toWire(x, frames)]));
  }
  return value;
}

/** The header of a received message, with every frame reference in its body resolved. */
export function decodeMessage(frames) {
  const header = decode(frames[0]);
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new Error("frame 0 is not a msgpack map");
  }
  const used = new Set();
  header.body = fromWire(header.body ?? {}, frames, used);
  if (used.size !== frames.length - 1) {
    throw new Error(`${frames.length - 1} buffer frames, ${used.size} referenced`);
  }
  return header;
}

function isReference(value) {
  const keys = Object.keys(value).sort().join(",");
  return keys === "frame" || keys === "dtype,frame,shape";
}

function fromWire(value, frames, used) {
  if (Array.isArray(value)) return value.map((x) => fromWire(x, frames, used));
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (!isReference(value)) {
    return Object.fromEntries(Object.entries(value).map(([k, x]) => [k, fromWire(x, frames, used)]));
  }
  const frame = frames[value.frame];
  if (!Number.isInteger(value.frame) || value.frame < 1 || frame === undefined) {
    throw new Error(`reference to frame ${value.frame}, which the message does not have`);
  }
  used.add(value.frame);
  if (value.dtype === undefined) return new Blob(frame);
  return readArray(value, frame);
}

function readArray({ dtype, shape }, frame) {
  if (!(dtype in DTYPES)) throw new Error(`dtype ${dtype} is not one the spec allows`);
  if (!Array.isArray(shape) || shape.length > 4 || !shape.every((n) => Number.isInteger(n) && n >= 0)) {
    throw new Error(`shape ${JSON.stringify(shape)} is not at most 4 non-negative integers`);
  }
  const [size, read] = DTYPES[dtype];
  const count = shape.reduce((a, b) => a * b, 1);
  if (frame.length !== count * size) {
    throw new Error(`a ${dtype} array of shape ${JSON.stringify(shape)} needs ${count * size} bytes; its frame has ${frame.length}`);
  }
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const values = new Array(count);
  for (let i = 0; i < count; i += 1) values[i] = read(view, i * size);
  return new WireArray(dtype, shape, values);
}
