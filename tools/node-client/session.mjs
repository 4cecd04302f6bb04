// One DEALER connection to a backend (protocol/README.md, "Transport"): send requests, match replies by
// `re`, and keep each job's events, by `job` and `seq`, as they arrive.
import { Dealer } from "zeromq";

import { decodeMessage, encodeMessage, PROTOCOL_VERSION } from "./wire.mjs";

const FINAL_EVENTS = new Set(["done", "failed", "cancelled"]);
const REPLY_TYPES = new Set(["welcome", "accepted", "job_list", "result", "error", "pong"]);

export class Session {
  constructor(endpoint, deadline) {
    this.deadline = deadline;
    this.socket = new Dealer({ linger: 0, receiveTimeout: 250 });
    this.socket.connect(endpoint);
    this.replies = new Map(); // re -> reply header
    this.events = new Map(); // job -> event headers in arrival order
    this.unmatched = []; // messages that are neither a reply we asked for nor a job event
  }

  async send(message) {
    const { id, frames } = encodeMessage(message);
    await this.socket.send(frames);
    return id;
  }

  /** Raw frames, for a message the spec says is wrong. */
  async sendFrames(frames) {
    await this.socket.send(frames);
  }

  /** Read one message if one comes within 250 ms; false when none did. */
  async pump() {
    if (Date.now() > this.deadline) throw new Error("the backend took too long");
    let frames;
    try {
      frames = await this.socket.receive();
    } catch (error) {
      if (error.code === "EAGAIN") return false;
      throw error;
    }
    const header = decodeMessage(frames);
    if (typeof header.v !== "string" || header.v.split(".")[0] !== PROTOCOL_VERSION.split(".")[0]) {
      throw new Error(`the backend speaks protocol ${header.v}`);
    }
    if (header.seq > 0) {
      if (!this.events.has(header.job)) this.events.set(header.job, []);
      this.events.get(header.job).push(header);
    } else if (REPLY_TYPES.has(header.type) && header.re !== "") {
      this.replies.set(header.re, header);
    } else {
      this.unmatched.push(header);
    }
    return true;
  }

  async reply(id) {
    while (!this.replies.has(id)) await this.pump();
    return this.replies.get(id);
  }

  /** Send a request and wait for its reply (or its `error`). */
  async request(message) {
    return this.reply(await this.send(message));
  }

  /** The job's events once its final event (done, failed, cancelled) has come. */
  async untilFinal(job) {
    const finished = () => (this.events.get(job) ?? []).some((e) => FINAL_EVENTS.has(e.type));
    while (!finished()) await this.pump();
    return this.events.get(job);
  }

  /** A reply or event that arrived with no `re` to match: an error whose request header was unreadable. */
  async unmatchedError() {
    while (!this.unmatched.some((m) => m.type === "error")) await this.pump();
    return this.unmatched.find((m) => m.type === "error");
  }

  async handshake(client) {
    const welcome = await this.request({ type: "hello", body: { client } });
    if (welcome.type !== "welcome") throw new Error(`hello was answered ${JSON.stringify(welcome.body)}`);
    return welcome;
  }

  close() {
    this.socket.close();
  }
}
