// The device page: a countdown, a copy button, and a poll that leaves once the sign-in has ended.
// Without JavaScript the page refreshes itself instead (<noscript> meta refresh).
(function () {
  "use strict";
  var countdown = document.getElementById("countdown");
  var left = parseInt(countdown.getAttribute("data-seconds"), 10) || 0;
  function show(seconds) {
    var s = seconds % 60;
    countdown.textContent = Math.floor(seconds / 60) + ":" + (s < 10 ? "0" : "") + s;
  }
  setInterval(function () { left = Math.max(0, left - 1); show(left); }, 1000);

  var copy = document.getElementById("copy-code");
  var status = document.getElementById("copy-status");
  if (navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", function () {
      var code = document.getElementById("user-code").textContent.trim();
      navigator.clipboard.writeText(code).then(
        function () { status.textContent = "Copied."; },
        function () { status.textContent = "Select the code and copy it."; }
      );
    });
  }

  function poll() {
    fetch("/api/device", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (state) {
        if (state.state === "pending") { setTimeout(poll, 2000); } else { window.location.replace("/device"); }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
