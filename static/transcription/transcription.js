// Transcription page: drag and drop, XHR upload with a progress bar, copy to clipboard.
// No inline script anywhere (the Content-Security-Policy forbids it); htmx refreshes the job list.
(function () {
  "use strict";

  function setupUpload(form) {
    var input = form.querySelector("#file-input");
    var drop = form.querySelector("#dropzone");
    var bar = form.querySelector("#upload-progress");
    var status = form.querySelector("#upload-status");
    var button = form.querySelector("#upload-button");

    function send(files) {
      if (!files || !files.length) { status.textContent = "Choose at least one file."; return; }
      var data = new FormData(form);
      data.delete("file");
      for (var i = 0; i < files.length; i++) data.append("file", files[i], files[i].name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-CSRFToken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round((e.loaded / e.total) * 100);
          status.textContent = "Uploading… " + bar.value + "%";
        }
      });
      xhr.addEventListener("load", function () {
        var body = {};
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = {}; }
        var messages = [];
        (body.jobs || []).forEach(function (job) { messages.push(job.file + ": queued"); });
        (body.errors || []).forEach(function (e) { messages.push((e.file ? e.file + ": " : "") + e.message); });
        if (body.error) messages.push(body.error.message);
        status.textContent = messages.join(" · ") || ("Upload failed (" + xhr.status + ").");
        bar.hidden = true;
        button.disabled = false;
        input.value = "";
        document.body.dispatchEvent(new CustomEvent("jobs-changed", { bubbles: true }));
      });
      xhr.addEventListener("error", function () {
        status.textContent = "The upload failed: the connection was lost.";
        bar.hidden = true;
        button.disabled = false;
      });
      bar.value = 0;
      bar.hidden = false;
      button.disabled = true;
      status.textContent = "Uploading…";
      xhr.send(data);
    }

    form.addEventListener("submit", function (e) { e.preventDefault(); send(input.files); });
    input.addEventListener("change", function () { if (input.files.length) send(input.files); });
    ["dragenter", "dragover"].forEach(function (name) {
      drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.add("dragover"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.remove("dragover"); });
    });
    drop.addEventListener("drop", function (e) { send(e.dataTransfer.files); });
  }

  function setupCopy() {
    document.querySelectorAll("[data-copy-target]").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = document.getElementById(button.dataset.copyTarget).textContent;
        var done = function () { button.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done);
        } else {
          var area = document.createElement("textarea");
          area.value = text;
          document.body.appendChild(area);
          area.select();
          document.execCommand("copy");
          area.remove();
          done();
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (form) setupUpload(form);
    setupCopy();
  });
})();
