/* Portico dashboard: pause live polling while the tab is hidden, refresh at once when it shows.
 *
 * htmx's own filter (hx-trigger="every 2s [document.visibilityState === 'visible']") is
 * compiled with Function(), which the Content-Security-Policy forbids (no 'unsafe-eval');
 * this file does the same job from a static script. Elements marked data-poll poll with
 * hx-trigger="every Ns, portico:visible from:body".
 */
(function () {
  "use strict";

  document.addEventListener("htmx:beforeRequest", function (event) {
    var source = event.detail && event.detail.elt;
    if (document.visibilityState !== "visible" && source && source.hasAttribute("data-poll")) {
      event.preventDefault();
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") {
      document.body.dispatchEvent(new CustomEvent("portico:visible"));
    }
  });

  // A typed confirmation: the button stays disabled until the word is typed (the server
  // checks the word again; without this script the button is simply always enabled).
  function syncConfirm(input) {
    var button = input.form && input.form.querySelector("button[data-needs-confirm]");
    if (button) {
      button.disabled = input.value.trim() !== input.getAttribute("data-confirm-word");
    }
  }

  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches("input[data-confirm-word]")) {
      syncConfirm(event.target);
    }
  });

  document.addEventListener("htmx:load", function (event) {
    event.detail.elt.querySelectorAll("input[data-confirm-word]").forEach(syncConfirm);
  });
})();
