// A DreamPolish client in JavaScript, written from protocol/README.md: handshake, a tiny job with every
// event decoded and checked, a queued job cancelled, the first job followed again from a middle seq on a
// second connection, and one malformed message. Prints one JSON report; exits 1 when a check failed.
// Usage: node tools/node-client/client.mjs tcp://127.0.0.1:PORT
import { Session } from "./session.mjs";
import { Blob, WireArray } from "./wire.mjs";

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const EVENT_TYPES = new Set(["progress", "stage_result", "paused", "resumed", "done", "failed", "cancelled"]);
const TEXTURE_ROLES = new Set(["base_color", "normal", "roughness_metallic"]);
const JOB = { prompt: "a ceramic teapot", preset: "tiny", seed: 3, mode: "generate" };

const problems = [];
function check(condition, message) {
  if (!condition) problems.push(message);
  return condition;
}

function isPng(value) {
  return value instanceof Blob && PNG_SIGNATURE.every((b, i) => value.bytes[i] === b);
}

function checkArray(label, value, dtypes, shape) {
  if (!check(value instanceof WireArray, `${label} is not an array`)) return false;
  const sameShape = value.shape.length === shape.length && shape.every((n, i) => n === null || n === value.shape[i]);
  check(dtypes.includes(value.dtype), `${label} has dtype ${value.dtype}, not ${dtypes}`);
  return check(sameShape, `${label} has shape ${JSON.stringify(value.shape)}, not ${JSON.stringify(shape)}`);
}

/** A mesh's arrays agree with each other: faces index existing vertices, per-vertex and per-corner sizes. */
function checkMesh(label, mesh) {
  checkArray(`${label}.vertices`, mesh.vertices, ["<f4"], [null, 3]);
  checkArray(`${label}.faces`, mesh.faces, ["<u4"], [null, 3]);
  const n = mesh.vertices.shape[0];
  const m = mesh.faces.shape[0];
  check(mesh.faces.values.every((i) => i < n), `${label}.faces index a vertex past ${n}`);
  check(mesh.vertices.values.every(Number.isFinite), `${label}.vertices are not all finite`);
  if (mesh.uvs != null) checkArray(`${label}.uvs`, mesh.uvs, ["<f4"], [m, 3, 2]);
  if (mesh.normals != null) checkArray(`${label}.normals`, mesh.normals, ["<f4"], [n, 3]);
  if (mesh.colors != null) checkArray(`${label}.colors`, mesh.colors, ["<f4"], [n, null]);
  if (mesh.transform != null && checkArray(`${label}.transform`, mesh.transform, ["<f4"], [4, 4])) {
    check(mesh.transform.values.slice(12).join() === "0,0,0,1", `${label}.transform's last row is not 0 0 0 1`);
  }
  const textures = (mesh.textures ?? []).map((t) => checkTexture(`${label}.textures`, t));
  return { vertices: n, faces: m, uvs: mesh.uvs != null, normals: mesh.normals != null, textures };
}

function checkTexture(label, texture) {
  check(TEXTURE_ROLES.has(texture.role), `${label}: unknown role ${texture.role}`);
  check((texture.png == null) !== (texture.array == null), `${label}: ${texture.role} needs one of png, array`);
  if (texture.png != null) {
    check(isPng(texture.png), `${label}: ${texture.role} png is not a PNG file`);
    return { role: texture.role, png: true };
  }
  checkArray(`${label}: ${texture.role}`, texture.array, ["<f2", "<f4"], [null, null, null]);
  const summary = { role: texture.role, png: false, dtype: texture.array.dtype, shape: texture.array.shape };
  return texture.role === "normal" ? { ...summary, ...normalMapFigures(texture.array) } : summary;
}

/** A normal map holds unit vectors in tangent space (z out of the surface, so most texels lean along +z;
 * in object space they would average near 0 over a closed object): the largest |1 - |n||, the mean z. */
function normalMapFigures({ shape, values }) {
  const channels = shape[2];
  let worstLength = 0;
  let sumZ = 0;
  for (let i = 0; i < values.length; i += channels) {
    const [x, y, z] = values.slice(i, i + 3);
    worstLength = Math.max(worstLength, Math.abs(1 - Math.hypot(x, y, z)));
    sumZ += z;
  }
  return { unit_length_error: worstLength, mean_z: sumZ / (values.length / channels) };
}

function checkProgress(body) {
  check(typeof body.stage === "string", "progress without a stage");
  check(Number.isInteger(body.step) && body.step >= 1 && body.step <= body.total, `progress step ${body.step} of ${body.total}`);
  check(Object.values(body.losses ?? {}).every((x) => typeof x === "number"), "progress losses are not numbers");
  check(body.preview_png == null || isPng(body.preview_png), "progress preview_png is not a PNG file");
}

/** Every event of a finished job decoded and checked; a summary of it. */
function checkEvents(events) {
  const seqs = events.map((e) => e.seq);
  check(seqs.every((s, i) => s === i + 1), `seqs ${seqs} are not 1, 2, 3 ...`);
  const results = [];
  const counts = {};
  for (const event of events) {
    counts[event.type] = (counts[event.type] ?? 0) + 1;
    check(EVENT_TYPES.has(event.type), `unknown event ${event.type}`);
    if (event.type === "progress") checkProgress(event.body);
    if (event.type === "stage_result") {
      const { stage, index, mesh } = event.body;
      results.push({ stage, index, ...checkMesh(`${stage} mesh`, mesh) });
    }
  }
  const indices = results.map((r) => r.index);
  check(indices.every((x, i) => i === 0 || x > indices[i - 1]), `stage indices ${indices} do not increase`);
  return { last: events.at(-1).type, counts, seqs: seqs.length, stage_results: results };
}

/** A tiny job to its end, with a second job queued behind it and cancelled while it waits. */
async function runJobAndCancelAnother(session) {
  const accepted = await session.request({ type: "submit", body: { spec: JOB } });
  check(accepted.type === "accepted" && accepted.job !== "", `submit was answered ${JSON.stringify(accepted.body)}`);
  const queued = await session.request({ type: "submit", body: { spec: { ...JOB, seed: 4 } } });
  const cancelReply = await session.request({ type: "cancel", job: queued.job });
  const cancelEvents = await session.untilFinal(queued.job);
  const events = await session.untilFinal(accepted.job);
  return {
    job: accepted.job,
    events,
    cancel: {
      queue_position: queued.body.queue_position,
      reply: cancelReply.type,
      events: cancelEvents.map((e) => e.type),
    },
  };
}

/** Follow the finished job again from the middle of its events, on a new connection (a reconnect). */
async function attachFromMiddle(endpoint, deadline, job, events) {
  const session = new Session(endpoint, deadline);
  try {
    await session.handshake("node-client (attach)");
    const lastSeq = Math.floor(events.length / 2);
    const reply = await session.request({ type: "attach", job, body: { last_seq: lastSeq } });
    const replayed = await session.untilFinal(job);
    const original = events.slice(lastSeq).map((e) => `${e.seq} ${e.type}`);
    const again = replayed.map((e) => `${e.seq} ${e.type}`);
    check(again.join() === original.join(), `attach from ${lastSeq} replayed ${again}, not ${original}`);
    return { last_seq: lastSeq, reply: reply.type, first_seq: replayed[0]?.seq, count: replayed.length };
  } finally {
    session.close();
  }
}

/** A mesh whose vertex array declares 4 vertices over a frame that holds 3: the frame length rule. */
async function sendMalformed(session) {
  const mesh = {
    vertices: new WireArray("<f4", [4, 3], [0, 0, 0, 1, 0, 0, 0, 1, 0]),
    faces: new WireArray("<u4", [1, 3], [0, 1, 2]),
  };
  const spec = { ...JOB, mode: "texture", input_mesh: mesh };
  const reply = await session.request({ type: "submit", body: { spec } });
  return { type: reply.type, code: reply.body.code, message: reply.body.message, job: reply.job };
}

async function main(endpoint) {
  const deadline = Date.now() + 50_000;
  const session = new Session(endpoint, deadline);
  const report = {};
  try {
    const welcome = await session.handshake("node-client");
    report.welcome = { v: welcome.v, presets: welcome.body.presets, limits: Object.keys(welcome.body.limits ?? {}) };
    report.pong = (await session.request({ type: "ping" })).type;
    const { job, events, cancel } = await runJobAndCancelAnother(session);
    report.job = { id: job, ...checkEvents(events) };
    report.cancel = cancel;
    report.attach = await attachFromMiddle(endpoint, deadline, job, events);
    report.malformed = await sendMalformed(session);
  } catch (error) {
    problems.push(`stopped: ${error.stack ?? error}`);
  } finally {
    session.close();
  }
  report.problems = problems;
  console.log(JSON.stringify(report));
  process.exit(problems.length ? 1 : 0);
}

await main(process.argv[2]);
