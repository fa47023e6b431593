// Playground: the messages editor, up to three panels, and parallel streaming runs (one fetch per
// panel, each read as server-sent events). Output is raw model text, shown as text nodes only.
(() => {
  "use strict";

  const controllers = new Set();

  const { postStream } = window.portalSSE;

  function describe(m) {
    if (m.status === "error") return m.error;
    const parts = [
      `${m.model}`,
      `latency ${m.latency_ms} ms`,
      m.ttft_ms != null ? `first token ${m.ttft_ms} ms` : null,
      `${m.prompt_tokens} in / ${m.completion_tokens} out tokens`,
      `$${m.cost_usd}`,
      m.status === "stopped" ? "stopped" : m.finish_reason ? `finish: ${m.finish_reason}` : null,
    ];
    return parts.filter(Boolean).join(" · ");
  }

  async function runPanel(form, panel) {
    const index = panel.dataset.panel;
    const out = document.getElementById(`out-${index}`);
    const metrics = document.getElementById(`metrics-${index}`);
    out.textContent = "";
    metrics.textContent = "Running…";
    metrics.classList.remove("error");
    const body = new FormData(form);
    body.set("panel", index);
    const controller = new AbortController();
    controllers.add(controller);
    out.setAttribute("aria-busy", "true");
    try {
      await postStream(form.dataset.runUrl, { body, signal: controller.signal }, (event, data) => {
        if (event === "delta") out.append(data.t);
        else if (event === "done") {
          metrics.textContent = describe(data);
          metrics.classList.toggle("error", data.status === "error");
        }
      });
    } catch (err) {
      metrics.textContent = controller.signal.aborted ? "Stopped." : "The connection broke off.";
    } finally {
      out.removeAttribute("aria-busy");
      controllers.delete(controller);
      if (!controllers.size) document.getElementById("pg-stop").hidden = true;
    }
  }

  function renumber() {
    document.querySelectorAll("#msg-list .msg-row").forEach((row, i) => {
      const [roleLabel, contentLabel] = row.querySelectorAll("label");
      const role = row.querySelector("select");
      const content = row.querySelector("textarea");
      role.id = `msg-role-${i}`;
      content.id = `msg-content-${i}`;
      roleLabel.htmlFor = role.id;
      roleLabel.textContent = `Role of message ${i + 1}`;
      contentLabel.htmlFor = content.id;
      contentLabel.textContent = `Content of message ${i + 1}`;
      row.querySelector(".remove-message").setAttribute("aria-label", `Remove message ${i + 1}`);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("pg");
    if (!form) return;

    form.addEventListener("submit", (event) => {
      if (event.submitter && event.submitter.hasAttribute("data-save-prompt")) return; // a real POST
      event.preventDefault();
      document.getElementById("pg-stop").hidden = false;
      for (const panel of form.querySelectorAll(".pg-panel:not([hidden])")) runPanel(form, panel);
    });

    document.getElementById("pg-stop").addEventListener("click", () => {
      for (const controller of controllers) controller.abort();
    });

    document.getElementById("add-message").addEventListener("click", () => {
      const row = document.getElementById("msg-row-template").content.firstElementChild.cloneNode(true);
      const rows = document.querySelectorAll("#msg-list .msg-row");
      // Alternate roles, as a conversation does.
      const last = rows.length ? rows[rows.length - 1].querySelector("select").value : "assistant";
      row.querySelector("select").value = last === "user" ? "assistant" : "user";
      document.getElementById("msg-list").append(row);
      renumber();
      row.querySelector("textarea").focus();
    });

    document.getElementById("add-panel").addEventListener("click", () => {
      const next = form.querySelector(".pg-panel[hidden]");
      if (!next) return;
      next.hidden = false;
      next.disabled = false;
      document.getElementById("add-panel").disabled = !form.querySelector(".pg-panel[hidden]");
    });

    form.addEventListener("click", (event) => {
      const target = event.target;
      if (!(target instanceof Element)) return;
      if (target.classList.contains("remove-message")) {
        if (document.querySelectorAll("#msg-list .msg-row").length > 1) target.closest(".msg-row").remove();
        renumber();
      } else if (target.classList.contains("remove-panel")) {
        const panel = target.closest(".pg-panel");
        panel.hidden = true;
        panel.disabled = true;
        document.getElementById("add-panel").disabled = false;
      }
    });

    // Enter in a message runs, Shift+Enter adds a new line (as in the chat).
    form.addEventListener("keydown", (event) => {
      const field = event.target;
      if (!(field instanceof HTMLTextAreaElement) || field.name !== "msg-content") return;
      if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
      event.preventDefault();
      form.requestSubmit(document.getElementById("pg-run"));
    });
  });

  document.addEventListener("click", async (event) => {
    const target = event.target;
    if (!(target instanceof Element) || !target.classList.contains("copy-code")) return;
    const pre = target.closest(".codeblock").querySelector("pre");
    try {
      await navigator.clipboard.writeText(pre.textContent);
      target.textContent = "Copied";
    } catch (_) {
      window.getSelection().selectAllChildren(pre);
      target.textContent = "Press Ctrl+C";
    }
    setTimeout(() => (target.textContent = "Copy"), 2000);
  });
})();
