// Chat: streams answers (fetch + ReadableStream on a POST; EventSource cannot POST), Stop, Enter to
// send, copy buttons on code blocks. Text deltas are appended as text nodes to the one element of
// the growing answer; the sanitised HTML of the finished answer comes from the server in one piece.
(() => {
  "use strict";

  let active = null; // {controller, article} of the answer being streamed

  const { postStream } = window.portalSSE;

  function fromHTML(html) {
    const template = document.createElement("template");
    template.innerHTML = html; // server-rendered, model output already sanitised (portal/markdown.py)
    return template.content.firstElementChild;
  }

  function replaceById(html) {
    if (!html) return;
    const fresh = fromHTML(html);
    const current = fresh && document.getElementById(fresh.id);
    if (current) current.replaceWith(fresh);
  }

  function setStreaming(on) {
    const stop = document.getElementById("stop-button");
    const send = document.getElementById("send-button");
    if (stop) stop.hidden = !on;
    if (send) send.disabled = on;
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
  }

  function finish(article, payload) {
    const fresh = fromHTML(payload.html);
    if (fresh) {
      article.replaceWith(fresh);
      if (window.htmx) window.htmx.process(fresh);
      enhance(fresh);
    }
    replaceById(payload.totals);
    replaceById(payload.quota);
  }

  function showError(article, message) {
    const p = document.createElement("p");
    p.className = "banner error";
    p.setAttribute("role", "alert");
    p.textContent = message;
    article.append(p);
  }

  async function refreshAfterStop(article) {
    // The server saves the partial answer once the gateway has settled the call: wait for it.
    for (let i = 0; i < 50; i++) {
      await new Promise((resolve) => setTimeout(resolve, 150));
      const response = await fetch(article.dataset.url, { credentials: "same-origin" });
      if (!response.ok) return;
      const fresh = fromHTML(await response.text());
      if (fresh && !["pending", "streaming"].includes(fresh.dataset.status)) {
        finish(article, { html: fresh.outerHTML });
        return;
      }
    }
  }

  async function stream(article) {
    const url = article.dataset.streamUrl;
    delete article.dataset.streamUrl;
    const live = article.querySelector("[data-live]");
    const controller = new AbortController();
    active = { controller, article };
    setStreaming(true);
    article.setAttribute("aria-busy", "true");
    article.dataset.status = "streaming";
    try {
      await postStream(url, { signal: controller.signal }, (event, data) => {
        if (event === "delta" && live) {
          const follow = nearBottom();
          live.append(data.t); // a text node: never parsed as HTML
          if (follow) window.scrollTo(0, document.body.scrollHeight);
        } else if (event === "done") {
          finish(article, data);
        }
      });
    } catch (err) {
      if (controller.signal.aborted) await refreshAfterStop(article);
      else showError(article, "The connection broke off. Reload the page to see what was saved.");
    } finally {
      active = null;
      setStreaming(false);
      startPending();
    }
  }

  function startPending() {
    if (active) return;
    const article = document.querySelector("article[data-stream-url]");
    if (article) stream(article);
  }

  function enhance(root) {
    for (const block of root.querySelectorAll(".md .codeblock")) {
      if (block.querySelector(".copy-code")) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      block.prepend(button);
    }
  }

  document.addEventListener("click", async (event) => {
    const target = event.target;
    if (!(target instanceof Element)) return;
    if (target.id === "stop-button" && active) {
      active.controller.abort();
      return;
    }
    if (target.classList.contains("copy-code")) {
      const pre = target.closest(".codeblock").querySelector("pre");
      try {
        await navigator.clipboard.writeText(pre.textContent);
        target.textContent = "Copied";
      } catch (_) {
        window.getSelection().selectAllChildren(pre);
        target.textContent = "Press Ctrl+C";
      }
      setTimeout(() => (target.textContent = "Copy"), 2000);
    }
  });

  // Enter sends, Shift+Enter (or an IME composition) adds a new line.
  document.addEventListener("keydown", (event) => {
    const field = event.target;
    if (!(field instanceof HTMLTextAreaElement) || !field.hasAttribute("data-enter-sends")) return;
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    if (field.value.trim() && !active) field.form.requestSubmit();
  });

  document.addEventListener("htmx:afterRequest", (event) => {
    const form = event.detail.elt;
    if (form && form.id === "composer" && event.detail.successful) form.reset();
  });

  document.addEventListener("htmx:afterSettle", (event) => {
    enhance(event.detail.elt || document);
    startPending();
  });

  document.addEventListener("DOMContentLoaded", () => {
    enhance(document);
    startPending();
    const composer = document.getElementById("composer-input");
    if (composer && document.querySelector("#conv-head")) composer.focus();
  });
})();
