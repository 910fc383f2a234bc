// The PandaServe chat page: plain JavaScript, no framework, nothing loaded from elsewhere. It talks
// to the API of the server that served it: POST /chat (multipart, stream=true) and GET /v1/models.
"use strict";

const KINDS = ["image", "video", "audio", "depth", "thermal", "imu"];
const KEY = "pandaserve.apiKey"; // sessionStorage: this tab only, gone when it closes
// What each refusal means, in words; the server's own message follows.
const PLAIN = {
  400: "The server refused the request",
  401: "An API key is needed",
  404: "Not found",
  409: "This session is still answering the previous message",
  413: "Too large",
  415: "Not a supported file type",
  422: "The server could not use this input",
  429: "Too many requests",
  503: "The service is busy or unavailable",
};

const $ = (id) => document.getElementById(id);
const state = { session: null, attachments: [], xhr: null };

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

// A new element: properties set as given, names with a dash ("aria-label") as attributes.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name.includes("-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---- errors, as the server words them -------------------------------------------------------

function showError(status, body, retryAfter) {
  const error = (body && body.error) || {};
  let text = (PLAIN[status] || "Error") + (status ? ` (${status})` : "");
  if (error.message) text += ": " + error.message;
  if (error.param) text += ` [field: ${error.param}]`;
  if (retryAfter) text += `${/[.!?]$/.test(text) ? "" : "."} Try again in ${retryAfter} s.`;
  $("error").textContent = text;
  $("error").hidden = false;
  if (status === 401) askForKey(error.message);
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null; // not our envelope (a proxy's page, say): the status alone is shown
  }
}

// ---- the API key ----------------------------------------------------------------------------

function askForKey(why) {
  $("key-why").textContent = why ? `This server needs an API key (${why}).` : "This server needs an API key.";
  $("key-form").hidden = false;
  $("api-key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  $("api-key").value = "";
  $("key-form").hidden = true;
  clearError();
  loadModels();
  $("message").focus();
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  $("api-key").value = "";
});

// ---- models ---------------------------------------------------------------------------------

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch {
    showError(0, { error: { message: "the server could not be reached" } });
    return;
  }
  const body = parseJson(await response.text());
  if (!response.ok) {
    showError(response.status, body, response.headers.get("Retry-After"));
    return;
  }
  const select = $("model");
  select.replaceChildren(...body.data.map((m) => el("option", { value: m.id, textContent: m.id })));
  select.disabled = body.data.length < 2; // a choice only when there is one to make
}

// ---- attachments ----------------------------------------------------------------------------

// A first guess from the browser's type and the name; the person can change it (thermal and depth
// pictures are images to a browser).
function guessKind(file) {
  const name = file.name.toLowerCase();
  if (file.type.startsWith("video/")) return "video";
  if (file.type.startsWith("audio/")) return "audio";
  if (name.endsWith(".npy") || name.endsWith(".csv")) return "imu";
  if (name.includes("depth")) return "depth";
  if (name.includes("thermal")) return "thermal";
  return "image";
}

function preview(file, url) {
  if (file.type.startsWith("image/")) return el("img", { src: url, alt: "Preview of " + file.name });
  if (file.type.startsWith("video/")) return el("video", { src: url, controls: true, muted: true, "aria-label": "Preview of " + file.name });
  if (file.type.startsWith("audio/")) return el("audio", { src: url, controls: true, "aria-label": "Player for " + file.name });
  return el("span", { className: "no-preview", textContent: "no preview" });
}

function addFiles(files) {
  for (const file of files) {
    const item = { file, kind: guessKind(file), url: URL.createObjectURL(file) };
    state.attachments.push(item);
  }
  renderAttachments();
}

function removeAttachment(item) {
  URL.revokeObjectURL(item.url);
  state.attachments = state.attachments.filter((a) => a !== item);
  renderAttachments();
}

function renderAttachments() {
  const list = $("attachments");
  list.replaceChildren();
  state.attachments.forEach((item, i) => {
    const id = "kind-" + i;
    const kind = el("select", { id }, ...KINDS.map((k) => el("option", { value: k, textContent: k, selected: k === item.kind })));
    kind.addEventListener("change", () => (item.kind = kind.value));
    const remove = el("button", { type: "button", textContent: "Remove", "aria-label": "Remove " + item.file.name });
    remove.addEventListener("click", () => {
      removeAttachment(item);
      $("files").focus(); // the button is gone: keep the keyboard somewhere sensible
    });
    const size = `${(item.file.size / 1024).toFixed(1)} KB`;
    list.append(
      el(
        "li",
        {},
        preview(item.file, item.url),
        el("span", { className: "name", textContent: `${item.file.name} (${size})` }),
        el("label", { htmlFor: id, textContent: "Kind of " + item.file.name }),
        kind,
        remove,
      ),
    );
  });
}

$("files").addEventListener("change", () => {
  addFiles($("files").files);
  $("files").value = ""; // the same file may be picked again
});

// Files dropped anywhere on the page are attached: a drop that missed the zone would otherwise make
// the browser open the file in place of the page, and the conversation would be lost.
const drop = $("drop");
document.addEventListener("dragover", (event) => {
  event.preventDefault(); // allows the drop
  drop.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) drop.classList.remove("dragging"); // left the window, not one element
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
});

// ---- the conversation -----------------------------------------------------------------------

function addTurn(message, files) {
  const reply = el("span", { className: "text" });
  const turn = el(
    "article",
    { className: "turn" },
    el("p", { className: "you" }, el("strong", { textContent: "You: " }), message),
    el("p", { className: "reply" }, el("strong", { textContent: "PandaServe: " }), reply),
  );
  if (files.length) turn.children[0].append(el("span", { className: "files", textContent: " [" + files.join(", ") + "]" }));
  turn.dataset.state = "sending";
  $("log").append(turn);
  turn.scrollIntoView({ block: "end" });
  return { turn, reply };
}

function setSession(id) {
  state.session = id;
  $("session").textContent = id ? "Session " + id : "New session";
}

$("new-session").addEventListener("click", () => {
  if (state.xhr) state.xhr.abort();
  setSession(null);
  $("log").replaceChildren();
  clearError();
  setStatus("");
  $("message").focus();
});

// Server-sent events: blocks split by a blank line, `event:` and `data:` lines (service/api/sse.py).
function sseParser(onEvent) {
  let buffer = "";
  return (chunk) => {
    buffer += chunk.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, parseJson(data.join("\n")));
    }
  };
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("upload").hidden = $("upload-label").hidden = !busy;
}

function send() {
  const message = $("message").value;
  const form = new FormData();
  form.append("message", message);
  if (state.session) form.append("session_id", state.session);
  if ($("model").value) form.append("model", $("model").value);
  form.append("temperature", $("temperature").value || "0");
  if ($("max-tokens").value) form.append("max_tokens", $("max-tokens").value);
  form.append("stream", "true");
  for (const item of state.attachments) form.append(item.kind, item.file, item.file.name);

  clearError();
  const { turn, reply } = addTurn(message, state.attachments.map((a) => `${a.kind}: ${a.file.name}`));
  const xhr = new XMLHttpRequest();
  state.xhr = xhr;
  xhr.open("POST", "/chat");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);

  // XMLHttpRequest, not fetch: it reports upload progress everywhere, and its partial responseText
  // is enough to read the event stream as it arrives.
  $("upload").value = 0;
  setStatus("Uploading…");
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) $("upload").value = Math.round((100 * e.loaded) / e.total);
  });
  xhr.upload.addEventListener("load", () => {
    $("upload").value = 100;
    setStatus("Waiting for the first words…");
  });

  let read = 0;
  let finished = false;
  const feed = sseParser((event, body) => {
    if (event === "delta") {
      reply.append(body.text);
      turn.dataset.state = "streaming";
      setStatus("Replying…");
    } else if (event === "done") {
      finished = true;
      turn.dataset.state = "done";
      setSession(body.session_id);
      setStatus(`Done (${body.finish_reason}, ${body.usage.completion_tokens} tokens).`);
      // The files and the message are in the session now.
      state.attachments.forEach((a) => URL.revokeObjectURL(a.url));
      state.attachments = [];
      renderAttachments();
      $("message").value = "";
    } else if (event === "error") {
      finished = true;
      turn.dataset.state = "failed";
      showError(0, body);
      setStatus("The reply failed.");
    }
  });
  const readMore = () => {
    if (xhr.status !== 200) return; // an error body is read whole, at the end
    feed(xhr.responseText.slice(read));
    read = xhr.responseText.length;
  };
  xhr.addEventListener("progress", readMore);
  xhr.addEventListener("load", () => {
    state.xhr = null;
    setBusy(false);
    if (xhr.status === 200) {
      readMore();
      if (!finished) {
        turn.dataset.state = "failed";
        showError(0, { error: { message: "the reply ended early" } });
      }
      return;
    }
    turn.dataset.state = "failed";
    setStatus("");
    showError(xhr.status, parseJson(xhr.responseText), xhr.getResponseHeader("Retry-After"));
  });
  xhr.addEventListener("error", () => {
    state.xhr = null;
    setBusy(false);
    turn.dataset.state = "failed";
    setStatus("");
    showError(0, { error: { message: "the server could not be reached" } });
  });
  xhr.addEventListener("abort", () => {
    state.xhr = null;
    setBusy(false);
    turn.dataset.state = "stopped";
    setStatus("Stopped: the turn was not kept.");
  });
  setBusy(true);
  xhr.send(form);
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!state.xhr) send();
});

$("stop").addEventListener("click", () => state.xhr && state.xhr.abort());

// Enter sends, Shift+Enter starts a new line (as in most chat boxes).
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("ask").requestSubmit();
  }
});

loadModels();
