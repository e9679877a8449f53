// Runs fal's official JS client against a fastsvd server and prints what it saw as JSON.
// Usage: FASTSVD_URL=http://127.0.0.1:PORT FASTSVD_KEY=id:secret node client.mjs <scenario>
// With FASTSVD_MODE=proxy the client is configured with proxyUrl alone (fal's server-proxy mode);
// otherwise a request middleware rewrites fal's hosts.
import { createFalClient } from "@fal-ai/client";

const base = process.env.FASTSVD_URL;
const credentials = process.env.FASTSVD_KEY;
const fal =
  process.env.FASTSVD_MODE === "proxy"
    ? // a string proxyUrl applies in browsers only; "always" makes Node.js use it too
      createFalClient({ credentials, proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } })
    : createFalClient({
        credentials,
        requestMiddleware: async (req) => {
          const url = new URL(req.url);
          // fal.run (synchronous runs) -> /run; queue.fal.run and rest.fal.ai -> the server root
          const prefix = url.hostname === "fal.run" ? "/run" : "";
          return { ...req, url: base + prefix + url.pathname + url.search };
        },
      });
// the family under test (FASTSVD_T2V, FASTSVD_I2V, FASTSVD_*STEPS*): 20-step by default
const T2V = process.env.FASTSVD_T2V || "fal-ai/fast-svd/text-to-video";
const I2V = process.env.FASTSVD_I2V || "fal-ai/fast-svd";
const MOST_STEPS = Number(process.env.FASTSVD_MOST_STEPS || 30); // a slow request's steps
const STEPS_MAX = Number(process.env.FASTSVD_STEPS_MAX || 50); // the endpoint's bound
const SMALL = { video_size: { width: 64, height: 64 }, steps: 3 };

const scenarios = {
  async subscribe() {
    const updates = [];
    const result = await fal.subscribe(T2V, {
      input: { prompt: "a rocket", seed: 4, ...SMALL },
      logs: true,
      pollInterval: 50,
      onQueueUpdate: (u) => updates.push(u),
    });
    return { result, statuses: updates.map((u) => u.status), last: updates.at(-1) };
  },
  async stream() {
    const updates = [];
    const result = await fal.subscribe(T2V, {
      input: { prompt: "a rocket", ...SMALL },
      logs: true,
      mode: "streaming",
      onQueueUpdate: (u) => updates.push(u),
    });
    return { result, statuses: updates.map((u) => u.status) };
  },
  async queue() {
    const { request_id } = await fal.queue.submit(T2V, { input: { prompt: "a rocket", ...SMALL } });
    let status;
    do {
      status = await fal.queue.status(T2V, { requestId: request_id, logs: true });
      await new Promise((r) => setTimeout(r, 50));
    } while (status.status !== "COMPLETED");
    const result = await fal.queue.result(T2V, { requestId: request_id });
    return { request_id, status, result };
  },
  async cancel() {
    const { request_id } = await fal.queue.submit(T2V, {
      input: { prompt: "slow", ...SMALL, steps: MOST_STEPS },
    });
    let status;
    do {
      status = await fal.queue.status(T2V, { requestId: request_id });
      await new Promise((r) => setTimeout(r, 50));
    } while (status.status !== "IN_PROGRESS");
    await fal.queue.cancel(T2V, { requestId: request_id });
    do {
      status = await fal.queue.status(T2V, { requestId: request_id });
      await new Promise((r) => setTimeout(r, 50));
    } while (status.status !== "COMPLETED");
    let error = null;
    try {
      await fal.queue.result(T2V, { requestId: request_id });
    } catch (e) {
      error = { status: e.status, body: e.body };
    }
    return { status, error };
  },
  async cancelQueued() {
    // the one worker runs a slow request; the next waits in the queue and is cancelled there
    const slow = await fal.queue.submit(T2V, { input: { prompt: "slow", ...SMALL, steps: MOST_STEPS } });
    let status;
    do {
      status = await fal.queue.status(T2V, { requestId: slow.request_id });
      await new Promise((r) => setTimeout(r, 50));
    } while (status.status !== "IN_PROGRESS");
    const { request_id } = await fal.queue.submit(T2V, { input: { prompt: "a rocket", ...SMALL } });
    const queued = await fal.queue.status(T2V, { requestId: request_id });
    await fal.queue.cancel(T2V, { requestId: request_id });
    const final = await fal.queue.status(T2V, { requestId: request_id });
    await fal.queue.cancel(T2V, { requestId: slow.request_id });
    return { queued, final };
  },
  async upload() {
    // a 2x2 PNG, solid (200, 40, 40)
    const png = Buffer.from(
      "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8oaHBwMDAxMDAwMDAAAAN6gEcJJUQNAAAAABJRU5ErkJggg==",
      "base64",
    );
    const url = await fal.storage.upload(new Blob([png], { type: "image/png" }));
    const result = await fal.subscribe(I2V, { input: { image_url: url, ...SMALL }, pollInterval: 50 });
    return { url, result };
  },
  async run() {
    return await fal.run(T2V, { input: { prompt: "a rocket", seed: 8, ...SMALL } });
  },
  async invalid() {
    try {
      await fal.queue.submit(T2V, { input: { prompt: "x", fps: 0, steps: STEPS_MAX + 1 } });
      return { thrown: false };
    } catch (e) {
      return { thrown: true, status: e.status, name: e.constructor.name, fieldErrors: e.fieldErrors };
    }
  },
};

const name = process.argv[2];
scenarios[name]()
  .then((out) => console.log(JSON.stringify(out)))
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });
