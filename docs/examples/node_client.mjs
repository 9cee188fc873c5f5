// Node.js against a Nexus-rs node with two published npm JSON-RPC 2.0 clients (no Nexus
// client is published on npm): rpc-websockets over WebSocket and jayson over raw TCP.
// Usage: node node_client.mjs ws://127.0.0.1:8080/ 127.0.0.1 1717 root root
import { Client as WebSocketClient } from "rpc-websockets";
import jayson from "jayson";

const [wsUrl, host, port, user, pass] = process.argv.slice(2);

async function open() {
  const c = new WebSocketClient(wsUrl, { autoconnect: true, reconnect: false });
  await new Promise((resolve, reject) => { c.once("open", resolve); c.once("error", reject); });
  await c.call("sys.login", { user, pass });
  return c;
}

// A pusher and a worker, each on a WebSocket of its own: the pusher's call is answered
// with what the worker returns.
const pusher = await open();
const worker = await open();
const answer = pusher.call("task.push",
  { method: "node.demo.add", params: { a: 2, b: 3 }, timeout: 20 }, 25000);
const task = await worker.call("task.pull", { prefix: "node.demo", timeout: 10 }, 15000);
await worker.call("task.result", { taskid: task.taskid, result: { sum: task.params.a + task.params.b } });
console.log("rpc-websockets: task.push answered", JSON.stringify(await answer));

// jayson over TCP: a batch on one connection. The requests of one connection run
// concurrently (docs/api.md), so a login in a batch does not cover the others: this one
// asks what needs none, and a wrong password comes back as an error entry.
const tcp = jayson.client.tcp({ host, port: Number(port) });
const batch = [
  tcp.request("sys.ping", {}, 1, false),
  tcp.request("sys.version", {}, 2, false),
  tcp.request("sys.login", { user, pass: pass + "-wrong" }, 3, false),
];
const answers = await new Promise((resolve, reject) =>
  tcp.request(batch, (err, out) => (err ? reject(err) : resolve(out))));
const byId = Object.fromEntries(answers.map((a) => [a.id, a]));
if (!byId[1].result.ok || byId[2].result.version !== "1.9.0" || byId[3].error.code !== -32010) {
  throw new Error("unexpected batch answers: " + JSON.stringify(answers));
}
console.log("jayson tcp batch:", JSON.stringify(answers.map((a) => a.result || a.error)));
pusher.close();
worker.close();
