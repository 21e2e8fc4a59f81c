// The chat page: keeps the conversation here, sends it whole to /v1/chat/completions with stream: true,
// and shows the reply as its server-sent events arrive. No library: fetch, a stream reader and the DOM.
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), form = $("form"), message = $("message");
let history = [];      // the conversation so far: {role, content}, as the API takes it
let controller = null; // aborts the reply being streamed (Stop): the server then stops generating

function keyHeader() {
  const key = $("key").value || sessionStorage.getItem("api-key") || "";
  return key ? { Authorization: "Bearer " + key } : {};
}

function add(role, text, cls = "") {
  $("empty")?.remove();
  const el = document.createElement(role === "note" ? "p" : "div");
  el.className = role === "note" ? "note " + cls : "msg " + role + " " + cls;
  el.textContent = text;
  log.appendChild(el);
  log.scrollTop = log.scrollHeight;
  return el;
}

async function errorText(response) {
  if (response.status === 401) { $("key-row").hidden = false; $("settings").open = true; }
  try { return (await response.json()).error.message; } catch { return response.status + " " + response.statusText; }
}

// Yield the JSON of each `data:` event of a server-sent event stream, until `[DONE]`.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function busy(on) {
  $("send").disabled = on; $("stop").hidden = !on; message.disabled = on;
}

async function send(text) {
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...history, { role: "user", content: text }];
  add("user", text);
  const bubble = add("assistant", "", "pending");
  let reply = "", finish = null;
  controller = new AbortController();
  busy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      headers: { "Content-Type": "application/json", ...keyHeader() },
      body: JSON.stringify({ messages, stream: true, temperature: Number($("temperature").value) }),
    });
    if (!response.ok) { bubble.remove(); add("note", await errorText(response), "error"); return; }
    if ($("key").value) sessionStorage.setItem("api-key", $("key").value);
    if (!$("model").dataset.ok) loadModels();  // the key works: now the model's name can be shown
    const dropped = Number(response.headers.get("x-dropped-messages") || 0);
    if (dropped) log.insertBefore(add("note", `${dropped} older message${dropped > 1 ? "s" : ""} left out to fit the model's context`), bubble);
    for await (const chunk of events(response)) {
      if (chunk.error) { add("note", chunk.error.message, "error"); break; }
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta.content) { reply += choice.delta.content; bubble.textContent = reply; log.scrollTop = log.scrollHeight; }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  } catch (e) {
    if (e.name !== "AbortError") add("note", "the server did not answer: " + e.message, "error");
  } finally {
    bubble.classList.remove("pending");
    busy(false); controller = null; message.focus();
  }
  if (finish === "content_filter") add("note", "the rest of this reply was withheld by the content filter");
  if (finish === "length") add("note", "the reply stopped at its token limit");
  history.push({ role: "user", content: text }, { role: "assistant", content: reply });
  bubble.dataset.done = "true";
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = message.value.trim();
  if (!text || controller) return;
  message.value = "";
  send(text);
});
message.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
});
$("stop").addEventListener("click", () => controller?.abort());
$("reset").addEventListener("click", () => {
  controller?.abort(); history = []; log.replaceChildren(); add("note", "started over"); message.focus();
});
$("temperature").addEventListener("input", (e) => { $("temperature-value").textContent = e.target.value; });

// The served model's name in the header (or why it cannot be had: no server, or no key yet).
function loadModels() {
  return fetch("/v1/models", { headers: keyHeader() }).then(async (r) => {
    if (!r.ok) { $("model").textContent = await errorText(r); return; }
    $("model").textContent = (await r.json()).data.map((m) => m.id).join(", ");
    $("model").dataset.ok = "true";
  }).catch(() => { $("model").textContent = "the server is not answering"; });
}
loadModels();
