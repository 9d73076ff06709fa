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
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    btn.textContent = "Copied";
    setTimeout(function () { btn.textContent = "Copy"; }, 2000);
  });
});
