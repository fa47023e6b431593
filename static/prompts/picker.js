/* The prompt library's "/" menu for any <textarea data-prompt-picker>.
 *
 * Typing "/" at the start of an empty box opens a list of prompts (GET /prompts/picker/?q=, an HTML
 * fragment), filtered as you type; arrows move, Enter or a click chooses, Escape closes. The chosen
 * prompt's variables form (GET …/use/) opens under the box; on submit its values are POSTed to
 * …/render/ and the filled-in user text replaces the box's content, while the system text goes to
 * the element named by data-system-target (an id or a CSS selector), if any.
 *
 * No inline script, no eval: the portal's CSP is script-src 'self'. POSTs carry the CSRF token from
 * <body hx-headers> (or the csrftoken cookie).
 */
(function () {
  "use strict";

  var DEFAULT_URL = "/prompts/picker/";
  var state = null; // {box, panel, mode: "menu"|"form", timer, seq}

  function csrfToken() {
    var raw = document.body && document.body.getAttribute("hx-headers");
    if (raw) {
      try {
        var headers = JSON.parse(raw);
        if (headers["X-CSRFToken"]) return headers["X-CSRFToken"];
      } catch (e) { /* fall back to the cookie */ }
    }
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function isPickerBox(el) {
    return el && el.tagName === "TEXTAREA" && el.hasAttribute("data-prompt-picker");
  }

  function query(box) {
    // The menu is open while the box holds only "/" and what follows it on the first line.
    var value = box.value;
    if (value.charAt(0) !== "/" || value.indexOf("\n") !== -1) return null;
    return value.slice(1);
  }

  function panelFor(box) {
    var panel = document.createElement("div");
    panel.className = "pl-popup";
    panel.setAttribute("data-prompt-picker-panel", "");
    // Outside the box's own form, if any: the variables form must not be nested in another form
    // (the parser would drop it, and its button would submit the page's form).
    (box.form || box).insertAdjacentElement("afterend", panel);
    box.setAttribute("aria-expanded", "true");
    return panel;
  }

  function close() {
    if (!state) return;
    if (state.timer) clearTimeout(state.timer);
    state.panel.remove();
    state.box.setAttribute("aria-expanded", "false");
    state.box.removeAttribute("aria-activedescendant");
    state = null;
  }

  function open(box) {
    if (state && state.box === box) return state;
    close();
    state = { box: box, panel: panelFor(box), mode: "menu", timer: null, seq: 0 };
    return state;
  }

  function options() {
    return state ? Array.prototype.slice.call(state.panel.querySelectorAll("[role=option]")) : [];
  }

  function select(index) {
    var opts = options();
    if (!opts.length) return;
    index = (index + opts.length) % opts.length;
    opts.forEach(function (opt, i) { opt.setAttribute("aria-selected", i === index ? "true" : "false"); });
    state.box.setAttribute("aria-activedescendant", opts[index].id);
    opts[index].scrollIntoView({ block: "nearest" });
  }

  function selectedIndex() {
    var opts = options();
    for (var i = 0; i < opts.length; i++) if (opts[i].getAttribute("aria-selected") === "true") return i;
    return 0;
  }

  function fetchText(url, init) {
    init = init || {};
    init.credentials = "same-origin";
    init.headers = Object.assign({ "X-Requested-With": "fetch" }, init.headers || {});
    return fetch(url, init);
  }

  function refresh(box) {
    var q = query(box);
    if (q === null) { if (state && state.mode === "menu") close(); return; }
    var current = open(box);
    if (current.mode !== "menu") return;
    if (current.timer) clearTimeout(current.timer);
    current.timer = setTimeout(function () {
      var seq = ++current.seq;
      var base = box.getAttribute("data-prompt-picker") || DEFAULT_URL;
      fetchText(base + "?q=" + encodeURIComponent(q)).then(function (response) {
        return response.ok ? response.text() : Promise.reject(response.status);
      }).then(function (html) {
        if (state !== current || seq !== current.seq || current.mode !== "menu") return; // a newer answer won
        current.panel.innerHTML = html; // our own server-rendered, escaped fragment
        select(0);
      }).catch(function () {
        if (state === current) current.panel.textContent = "The prompt library is not available.";
      });
    }, 120);
  }

  function choose(option) {
    if (!state || !option || !option.getAttribute("data-use-url")) return;
    var current = state;
    current.mode = "form";
    fetchText(option.getAttribute("data-use-url")).then(function (response) {
      return response.ok ? response.text() : Promise.reject(response.status);
    }).then(function (html) {
      if (state !== current) return;
      current.panel.innerHTML = html;
      var form = current.panel.querySelector("form.pl-use");
      if (!form) return;
      var first = form.querySelector("input:not([type=hidden]), select, textarea");
      if (first) first.focus(); else submit(form); // nothing to fill in: insert right away
    }).catch(function () {
      if (state === current) current.panel.textContent = "This prompt cannot be used.";
    });
  }

  function target(box) {
    var name = box.getAttribute("data-system-target");
    if (!name) return null;
    var el = document.getElementById(name);
    if (el) return el;
    try { return document.querySelector(name); } catch (e) { return null; }
  }

  function setValue(el, text) {
    if ("value" in el) el.value = text; else el.textContent = text;
    el.dispatchEvent(new Event("input", { bubbles: true }));
    el.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function submit(form) {
    var current = state;
    if (!current) return;
    var error = form.querySelector(".pl-use-error");
    fetchText(form.getAttribute("data-render-url"), {
      method: "POST", body: new FormData(form), headers: { "X-CSRFToken": csrfToken() }
    }).then(function (response) {
      return response.json().then(function (data) { return { ok: response.ok, data: data }; });
    }).then(function (result) {
      if (!result.ok) {
        if (error) { error.textContent = (result.data.error && result.data.error.message) || "Check the values."; error.hidden = false; }
        return;
      }
      var box = current.box;
      close();
      var system = target(box);
      if (system) {
        setValue(system, result.data.system || "");
        var fold = system.closest && system.closest("details");
        if (fold && result.data.system) fold.open = true; // show the system prompt it set
      }
      setValue(box, result.data.user || "");
      box.setAttribute("data-prompt-id", result.data.prompt.id);
      box.focus();
      box.setSelectionRange(box.value.length, box.value.length);
    }).catch(function () {
      if (error) { error.textContent = "The prompt could not be filled in."; error.hidden = false; }
    });
  }

  document.addEventListener("input", function (event) {
    if (isPickerBox(event.target)) refresh(event.target);
  });

  // Capture phase: while the menu is open, Enter and the arrows belong to it, not to the page's
  // own handlers (a chat composer that sends on Enter).
  document.addEventListener("keydown", function (event) {
    if (!state || event.target !== state.box || state.mode !== "menu") {
      if (state && event.key === "Escape") close();
      return;
    }
    var handled = true;
    if (event.key === "ArrowDown") select(selectedIndex() + 1);
    else if (event.key === "ArrowUp") select(selectedIndex() - 1);
    else if (event.key === "Enter" || event.key === "Tab") choose(options()[selectedIndex()]);
    else if (event.key === "Escape") close();
    else handled = false;
    if (handled) { event.preventDefault(); event.stopImmediatePropagation(); }
  }, true);

  document.addEventListener("click", function (event) {
    if (!state) return;
    var option = event.target.closest && event.target.closest("[data-prompt-picker-panel] [role=option]");
    if (option) { event.preventDefault(); choose(option); return; }
    if (event.target.closest && event.target.closest("[data-prompt-picker-panel] [data-action=cancel]")) { close(); return; }
    if (!event.target.closest || (!event.target.closest("[data-prompt-picker-panel]") && event.target !== state.box)) close();
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.matches && form.matches("[data-prompt-picker-panel] form.pl-use")) {
      event.preventDefault();
      event.stopPropagation();
      submit(form);
    }
  }, true);
})();
