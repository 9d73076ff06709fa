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
