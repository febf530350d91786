// The Copy button of a key shown once. The page works without this script:
// the button stays hidden and the key can be selected and copied by hand.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var field = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById(button.getAttribute("data-status"));
    if (!field) {
      return;
    }
    function say(text) {
      if (status) {
        status.textContent = text;
      }
    }
    function copied() {
      button.textContent = "Copied";
      say("Copied to the clipboard.");
    }
    function byHand() {
      field.focus();
      field.select();
      say("Press Ctrl+C (or \u2318C) to copy the selected key.");
    }
    field.addEventListener("focus", function () {
      field.select();
    });
    button.hidden = false;
    button.addEventListener("click", function () {
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(copied, byHand);
      } else {
        byHand();
      }
    });
  });
});
