// The portal's one reader of its own server-sent events, for the chat and the playground: a POST
// (EventSource cannot POST) with the CSRF token from <body hx-headers>, read as a stream, each
// `event:` / `data:` block handed over parsed. Loaded before the page scripts that use it.
(() => {
  "use strict";

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (_) {
      return "";
    }
  }

  function parseEvent(raw) {
    let event = "message";
    let data = "";
    for (const line of raw.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    return { event, data: data ? JSON.parse(data) : null };
  }

  // POST to `url` and call onEvent(event, data) per event until the stream ends; throws on a
  // non-2xx answer, a broken connection or an abort through `signal`.
  async function postStream(url, { body, signal }, onEvent) {
    const response = await fetch(url, {
      method: "POST",
      body,
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
      signal,
    });
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const { event, data } = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        onEvent(event, data);
      }
    }
  }

  window.portalSSE = { csrfToken, postStream };
})();
