// The portal's only script of its own: tell the person when an htmx request
// fails, instead of doing nothing (htmx ignores error responses by default).
document.addEventListener("htmx:responseError", function (evt) {
  var status = evt.detail.xhr ? evt.detail.xhr.status : 0;
  var text = status === 400 ? "This form has expired. Reload the page and try again."
           : status === 429 ? "Too many requests. Wait a minute, then try again."
           : "That did not work (error " + status + "). Reload the page and try again.";
  showFlash(text);
});
document.addEventListener("htmx:sendError", function () {
  showFlash("Could not reach the server. Check your connection and try again.");
});
function showFlash(text) {
  var main = document.getElementById("main");
  if (!main) return;
  var box = document.getElementById("client-flash");
  if (!box) {
    box = document.createElement("p");
    box.id = "client-flash";
    box.className = "flash flash-error";
    box.setAttribute("role", "alert");
    box.setAttribute("data-client", "");
    main.insertBefore(box, main.firstChild);
  }
  box.textContent = text;
}

// "Copy" buttons next to one-time secrets: offered only where the clipboard
// API exists; otherwise the text stays selectable by hand.
function enableCopyButtons(root) {
  if (!navigator.clipboard) return;
  root.querySelectorAll("button[data-copy]").forEach(function (btn) { btn.hidden = false; });
}
document.addEventListener("DOMContentLoaded", function () { enableCopyButtons(document); });
document.addEventListener("htmx:afterSettle", function () { enableCopyButtons(document); });
document.addEventListener("click", function (evt) {
  var btn = evt.target.closest && evt.target.closest("button[data-copy]");
  if (!btn) return;
  var source = document.querySelector(btn.getAttribute("data-copy"));
  if (!source) return;
  var label = btn.getAttribute("data-label") || btn.textContent;
  btn.setAttribute("data-label", label);
  // One line per item for a list (recovery codes), the text itself otherwise.
  var items = source.querySelectorAll("li");
  var text = items.length ? Array.prototype.map.call(items, function (li) { return li.textContent.trim(); }).join("\n")
                          : source.textContent.trim();
  navigator.clipboard.writeText(text).then(function () {
    btn.textContent = "Copied";
    setTimeout(function () { btn.textContent = label; }, 2000);
  });
});

// "Download as text file" next to a list of one-time secrets (recovery codes):
// the file is made here from the page's own text, so the server keeps no copy.
document.addEventListener("DOMContentLoaded", function () {
  if (!window.Blob || !window.URL || !URL.createObjectURL) return;
  document.querySelectorAll("button[data-download]").forEach(function (btn) { btn.hidden = false; });
});
document.addEventListener("click", function (evt) {
  var btn = evt.target.closest && evt.target.closest("button[data-download]");
  if (!btn) return;
  var source = document.querySelector(btn.getAttribute("data-download"));
  if (!source) return;
  var lines = Array.prototype.map.call(source.querySelectorAll("li"), function (li) { return li.textContent.trim(); });
  var heading = btn.getAttribute("data-heading");
  var text = (heading ? heading + "\n\n" : "") + lines.join("\n") + "\n";
  var url = URL.createObjectURL(new Blob([text], { type: "text/plain;charset=utf-8" }));
  var a = document.createElement("a");
  a.href = url;
  a.download = btn.getAttribute("data-filename") || "recovery-codes.txt";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
});

// The top bar's Menu button (narrow screens, see app.css): it opens and closes
// the panel that holds the context switch and the links. Without this script
// the button stays hidden and the links simply wrap.
document.addEventListener("DOMContentLoaded", function () {
  var btn = document.querySelector(".nav-toggle");
  var panel = btn && document.getElementById(btn.getAttribute("aria-controls"));
  if (!panel) return;
  document.documentElement.classList.add("js-nav");
  btn.hidden = false;
  function setOpen(open) {
    btn.setAttribute("aria-expanded", open ? "true" : "false");
    panel.classList.toggle("open", open);
  }
  btn.addEventListener("click", function () {
    // A disclosure: focus stays on the button; the links follow it in tab order.
    setOpen(btn.getAttribute("aria-expanded") !== "true");
  });
  document.addEventListener("keydown", function (evt) {
    if (evt.key === "Escape" && btn.getAttribute("aria-expanded") === "true") {
      setOpen(false);
      btn.focus();
    }
  });
});
